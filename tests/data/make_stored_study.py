"""Made ``stored_study/`` once, with ranksearch 0.1.0 as of commit 67457b4 (before the study package split).

Do not rerun it to "refresh" the fixture: the fixture is the previous version's output, and
``tests/test_stored_study.py`` checks that today's code reads it, resumes it and reproduces it.

    python tests/data/make_stored_study.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ranksearch.cli import main
from ranksearch.models import small_cnn

HERE = Path(__file__).parent / "stored_study"
STUDY = """
[study]
name = "stored"
storage = "sqlite:///{folder}/stored.db"
objectives = ["accuracy", "macs", "params"]
n_trials = 10
seed = 3
[model]
path = "{folder}/model.pt"
[data]
name = "digits"
options = {{ image_size = 8 }}
batch_size = 32
eval_batch_size = 120
[space]
rank_fractions = [0.25, 0.5, 0.75]
[evaluator]
finetune_steps = 3
bn_batches = 1
eval_batches = 1
"""


def stable(attrs: dict) -> dict:
    """The trial attributes that do not depend on the machine's speed."""
    return {k: v for k, v in attrs.items() if k not in ("seconds",)}


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(small_cnn(in_channels=1, num_classes=10, width=4), folder / "model.pt")  # the test makes it again
    (folder / "study.toml").write_text(STUDY.format(folder="{folder}"))
    path = folder / "run.toml"
    path.write_text(STUDY.format(folder=folder))
    assert main(["run", str(path), "--no-report"]) == 0
    import optuna

    study = optuna.load_study(study_name="stored", storage=f"sqlite:///{folder}/stored.db")
    records = [
        {
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "attrs": stable(t.user_attrs),
        }
        for t in study.trials
    ]
    (folder / "records.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    path.unlink()


if __name__ == "__main__":
    write(HERE)
    (HERE / "model.pt").unlink()  # the test rebuilds the same weights (seed 0) instead of shipping a pickle
