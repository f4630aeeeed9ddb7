"""A user's own model, data and metric, named by a study file beside them, end to end through the command line:
`ranksearch run` with two worker processes on one SQLite study, then `ranksearch report` and `ranksearch export`.

The user code is the ready example, studies/examples/own_model/own_model.py, copied beside a shrunk copy of its
study file (a tiny budget, a checkpoint in the test's folder).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import ranksearch as rs
from ranksearch.cli import main
from ranksearch.study import load_results
from ranksearch.usercode import load_callable

pytestmark = pytest.mark.slow  # worker processes and a whole study: about half a minute

EXAMPLE = Path(__file__).resolve().parents[1] / "studies" / "examples" / "own_model"
SCORING = '''
from own_model import balanced_accuracy


def half_balanced_accuracy(logits, targets):
    """Half the example's metric: trials measured with it cannot be mistaken for top-1 accuracy."""
    return 0.5 * balanced_accuracy(logits, targets)
'''


def shrunk_study(folder: Path, metric: bool) -> Path:
    """The example study file with a tiny budget, stored in ``folder``, beside a copy of its user code."""
    shutil.copy(EXAMPLE / "own_model.py", folder / "own_model.py")
    (folder / "scoring.py").write_text(SCORING)
    text = (EXAMPLE / "own_model.toml").read_text()
    replacements = {
        'name = "own_model"': f'name = "own_model"\nstorage = "sqlite:///{folder}/own_model.db"',
        "n_trials = 20": "n_trials = 4",
        "width = 16": "width = 8, epochs = 2",
        "runs/own_model-dense.pt": f"{folder}/dense.pt",
        "finetune_steps = 20": "finetune_steps = 2\nbn_batches = 1",
        "\n[evaluator]\n": '\n[space]\nmethods = ["dense", "svd", "tucker2"]  # the quick ones\n[evaluator]\n',
        'metric = "own_model:balanced_accuracy"': 'metric = "scoring:half_balanced_accuracy"' if metric else "",
    }
    for old, new in replacements.items():
        assert old in text, f"the example study file no longer has {old!r}"
        text = text.replace(old, new)
    path = folder / "own_model.toml"
    path.write_text(text)
    return path


@pytest.fixture
def forget_user_modules():
    """The user modules imported in this process (by the command's main process) are forgotten afterwards."""
    yield
    for name in ("own_model", "scoring"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("metric", [False, True], ids=["top1", "own-metric"])
def test_own_model_data_and_metric_run_on_two_workers_then_report_and_export(
    tmp_path, capfd, forget_user_modules, metric
):
    path = shrunk_study(tmp_path, metric)
    assert main(["run", str(path), "--workers", "2"]) == 0
    out = capfd.readouterr().out
    assert "dense model from [model] factory = 'own_model:tiny_cnn': used as it is" in out
    assert "running 4 on 2 workers" in out and "worker 1 [" in out and "worker 2 [" in out, out
    assert (tmp_path / "dense.pt").is_file()  # trained once by the main process, loaded by both workers
    results = load_results(f"sqlite:///{tmp_path}/own_model.db", "own_model")
    completed = results.completed()
    assert len(completed) == 4 and completed["failure"].isna().all()
    scores = completed["accuracy"]
    assert (scores <= 0.5).all() if metric else (scores > 0.5).all()  # the study's own metric, or top-1
    assert main(["report", str(path)]) == 0
    assert (tmp_path / "own_model" / "report.html").is_file()
    assert main(["export", str(path), "--knee"]) == 0
    exported = next((tmp_path / "own_model").glob("trial-*/model.pt"))
    build = load_callable("own_model:tiny_cnn", "test", tmp_path)
    model = rs.load(exported, base_model=build(width=8, checkpoint=str(tmp_path / "dense.pt")))
    assert model.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
