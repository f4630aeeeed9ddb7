"""The README's Python examples run as written (the search one with a tiny budget on a tiny model)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_core_example_runs(capsys):
    block = next(b for b in BLOCKS if "rs.FactorCache()" in b)
    exec(compile(block, str(README), "exec"), {})
    assert "CacheStats(hits=2, misses=1" in capsys.readouterr().out


def test_the_search_example_runs_on_your_model_and_loaders(tiny_task, tmp_path):
    block = next(b for b in BLOCKS if "rs.RankSearch(" in b and "n_trials=100" in b)
    shrunk = (
        block.replace("n_trials=100", "n_trials=3")
        .replace("finetune_steps=50", "finetune_steps=2")
        .replace("eval_batches=10", "eval_batches=1")
        .replace("sqlite:///runs/mine.db", f"sqlite:///{tmp_path}/mine.db")
        .replace('"runs/mine', f'"{tmp_path}/mine')
    )
    assert shrunk.count("\n") == block.count("\n") and shrunk != block
    model, train_loader, val_loader = tiny_task
    namespace = {"model": model, "train_loader": train_loader, "val_loader": val_loader}
    exec(compile(shrunk, str(README), "exec"), namespace)
    assert len(namespace["front"]) >= 1
    assert namespace["small"] is not model
    assert (tmp_path / "mine" / "report.html").is_file() and set(namespace["figs"]) >= {"pareto_macs", "layers"}
    exported = namespace["exported"]
    assert exported.model_path == tmp_path / "mine" / "knee" / "model.pt" and exported.model_path.is_file()
    assert exported.metadata["finetune_epochs"] == 3 and "knee" in exported.metadata["rule"]
    x = val_loader.dataset[0][0][None] if hasattr(val_loader, "dataset") else next(iter(val_loader))[0][:1]
    with torch.no_grad():
        assert torch.equal(namespace["same"].eval()(x), namespace["small"].eval()(x))


def test_the_heuristics_example_runs(capsys):
    block = next(b for b in BLOCKS if "ranksearch.heuristics import" in b)
    exec(compile(block, str(README), "exec"), {})
    assert 0.45 < float(capsys.readouterr().out.strip()) <= 0.5


def test_the_data_aware_example_runs(tiny_task, tmp_path):
    block = next(b for b in BLOCKS if "rs.calibrate(" in b)
    model, train_loader, val_loader = tiny_task
    conv = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    shrunk = (
        block.replace("layers.2.1.conv1", conv)
        .replace("(32, 16)", "(2, 2)")
        .replace("sqlite:///runs/aware.db", f"sqlite:///{tmp_path}/aware.db")
        .replace("batches=8", "batches=1")
    )
    assert shrunk.count("\n") == block.count("\n") and shrunk != block
    namespace = {"model": model, "train_loader": train_loader, "val_loader": val_loader, "rs": None}
    exec(compile("import ranksearch as rs\n" + shrunk, str(README), "exec"), namespace)
    assert namespace["small"].get_submodule(conv).method == "tucker2_whiten"
    assert namespace["search"].evaluator.calibration.batches == 1
