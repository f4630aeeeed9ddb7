"""A study stored by the previous version (``tests/data/stored_study``, made by ``make_stored_study.py``
before the study package split) still loads, reports and resumes, and the same seeds give the same
trials and metrics today."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch

from ranksearch.cli import main
from ranksearch.models import small_cnn
from ranksearch.record import SCHEMA_ATTR, SCHEMA_VERSION, TrialRecord
from ranksearch.report import write_report
from ranksearch.study import load_results, records_of

pytestmark = pytest.mark.slow  # whole studies through the CLI

STORED = Path(__file__).parent / "data" / "stored_study"
UNSTABLE = ("seconds",)  # wall times: the only attributes that depend on the machine's speed
REL = 1e-6  # floats: weight errors differ in the 9th digit with torch's thread count (the fixture used 2, tests 1)


def assert_same(got: object, expected: object, where: str = "records") -> None:
    """Equal structure, keys, strings and ints; floats within ``REL``."""
    if isinstance(expected, float) and isinstance(got, float):
        assert got == pytest.approx(expected, rel=REL), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), where
        for key in expected:
            assert_same(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same(g, e, f"{where}[{i}]")
    else:
        assert got == expected, where


def expected_records() -> list[dict]:
    return json.loads((STORED / "records.json").read_text())


def as_plain(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
    records = [
        {
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "attrs": {k: v for k, v in t.user_attrs.items() if k not in UNSTABLE},
        }
        for t in trials
    ]
    return json.loads(json.dumps(records))  # the same JSON normalisation as the stored file


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The stored study in a fresh folder, with its model rebuilt (seed 0) and its study file filled in, naming
    the strategy and fine-tune its version used (``per-layer``, the default until ``allocate``; labels only,
    the default until distillation at 0.5); ``original.toml`` as it was written then."""
    torch.manual_seed(0)
    torch.save(small_cnn(in_channels=1, num_classes=10, width=4), tmp_path / "model.pt")
    shutil.copy(STORED / "stored.db", tmp_path / "stored.db")
    text = (STORED / "study.toml").read_text().replace("{folder}", str(tmp_path))
    (tmp_path / "original.toml").write_text(text)
    as_made = text.replace("[study]\n", '[study]\nstrategy = "per-layer"\n', 1) + "distill = 0.0\n"  # [evaluator]
    (tmp_path / "study.toml").write_text(as_made)
    return tmp_path


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="stored", storage=f"sqlite:///{folder}/stored.db")


def test_the_same_seeds_give_the_same_trials_and_metrics(tmp_path: Path, folder: Path):
    (folder / "stored.db").unlink()  # run it again from scratch with today's code
    assert main(["run", str(folder / "study.toml"), "--no-report"]) == 0
    study = load(folder)
    records = as_plain(study.trials)
    assert_same(records, expected_records())
    for got, expected in zip(records, expected_records(), strict=True):  # objectives and accuracies: bit for bit
        assert got["values"] == expected["values"] and got["attrs"]["accuracy"] == expected["attrs"]["accuracy"]
    assert study.user_attrs[SCHEMA_ATTR] == SCHEMA_VERSION


def test_a_stored_study_loads_and_reports(folder: Path):
    results = load_results(f"sqlite:///{folder}/stored.db", "stored")
    expected = expected_records()
    assert SCHEMA_ATTR not in load(folder).user_attrs  # written before the schema had a version
    assert list(results.trials["trial"]) == [r["number"] for r in expected]
    assert list(results.trials["accuracy"]) == [r["values"][0] for r in expected]
    assert list(results.trials["macs_count"]) == [r["attrs"]["macs"] for r in expected]
    records = records_of(load(folder))
    assert all(isinstance(r, TrialRecord) for r in records)
    assert [r.measurements.accuracy_zero_shot for r in records] == [e["attrs"]["accuracy_zero_shot"] for e in expected]
    files = write_report(results, folder / "report")
    assert files.html.is_file() and (folder / "report" / "summary.json").is_file()


def test_a_stored_study_resumes_without_changing_its_trials(folder: Path, capsys):
    assert main(["run", str(folder / "study.toml"), "--no-report", "--n-trials", "12"]) == 0
    assert "10/12 trials done, running 2" in capsys.readouterr().out
    trials = load(folder).trials
    assert len(trials) == 12 and all(t.state.name == "COMPLETE" for t in trials)
    assert as_plain(trials[:10]) == expected_records()  # read back as stored, untouched


def test_resuming_with_the_new_default_strategy_says_how_to_continue(folder: Path, capsys):
    assert main(["run", str(folder / "original.toml"), "--n-trials", "11"]) == 2
    err = capsys.readouterr().err
    assert "different strategy: stored per-layer, asked allocate" in err and "distill = 0.0" in err
    assert '[study] strategy = "per-layer"' in err
    assert len(load(folder).trials) == 10  # untouched


def test_resuming_with_distillation_on_by_default_says_how_to_continue(folder: Path, capsys):
    text = (folder / "study.toml").read_text().replace("distill = 0.0\n", "")
    (folder / "default_fine_tune.toml").write_text(text)
    assert main(["run", str(folder / "default_fine_tune.toml"), "--n-trials", "11"]) == 2
    err = capsys.readouterr().err
    assert "exists with different evaluator" in err and "'distill': 0.0" in err and "'distill': 0.5" in err
    assert "[evaluator] distill = 0.0 (labels only, the default before distillation at 0.5)" in err
    assert len(load(folder).trials) == 10  # untouched


def test_a_study_from_a_newer_schema_is_refused_with_a_clear_message(folder: Path, capsys):
    load(folder).set_user_attr(SCHEMA_ATTR, SCHEMA_VERSION + 1)
    assert main(["report", "--storage", f"sqlite:///{folder}/stored.db", "--study", "stored"]) == 2
    assert f"written by a newer ranksearch (trial-record schema {SCHEMA_VERSION + 1}" in capsys.readouterr().err
    assert main(["run", str(folder / "study.toml"), "--n-trials", "11"]) == 2  # nor resumed
    assert "upgrade ranksearch to read it" in capsys.readouterr().err
