"""Latency as an objective: a tiny study end to end, the table reused across studies, resume identity,
the report's predicted-vs-measured view, study files, and the CUDA path (skipped without a GPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)

import ranksearch as rs
from ranksearch.cli import main
from ranksearch.evaluator import EvaluatorSettings
from ranksearch.latency import LatencySettings
from ranksearch.report import figures
from ranksearch.space import SearchSpace
from ranksearch.study import RankSearch

pytestmark = pytest.mark.slow  # whole studies that time models

FAST = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1)
SPACE = SearchSpace(methods=("dense", "svd", "tucker2"), rank_fractions=(0.25, 0.5))
QUICK = {"warmup": 0, "repeats": 1, "min_sample_seconds": 0.0}


def search(task, tmp_path, name="lat", objectives=("accuracy", "latency"), **latency) -> RankSearch:
    model, train_loader, val_loader = task
    settings = LatencySettings(**{**QUICK, "check_every": 2, **latency})
    return RankSearch(
        model, train_loader, val_loader, objectives=objectives, storage=f"sqlite:///{tmp_path}/{name}.db",
        study_name=name, space=SPACE, evaluator=FAST, latency=settings, strategy="per-layer",
    )  # fmt: skip


def test_latency_objective_is_the_predicted_fraction_of_dense(tiny_task, tmp_path):
    s = search(tiny_task, tmp_path)
    s.optimize(5, show_progress=False)
    trials = s.completed_trials()
    dense = s.evaluator.dense.latency_seconds
    assert dense == s.evaluator.latency.dense_seconds > 0
    for t in trials:
        attrs = t.user_attrs
        assert t.values[1] == attrs["latency_ratio"] == pytest.approx(attrs["latency_seconds"] / dense, rel=1e-12)
        assert (attrs["latency_measured_seconds"] is not None) == (t.number % 2 == 0)  # check_every = 2
    assert trials[0].values[1] == 1.0  # the dense warm start: nothing replaced
    assert (tmp_path / "latency-table.json").is_file()  # beside the SQLite storage
    identity = s.study.user_attrs["ranksearch"]["latency"]
    assert identity["batch_size"] == 1 and identity["context"] == s.evaluator.latency.context


def test_a_second_study_reuses_the_table_and_measures_nothing_known(tiny_task, tmp_path):
    first = search(tiny_task, tmp_path, name="one")
    first.optimize(3, show_progress=False)  # the warm starts: dense, tucker2 at 25% and 50%
    second = search(tiny_task, tmp_path, name="two", check_every=0)
    assert second.evaluator.latency.table.measured == 0  # the dense model came from the table
    second.optimize(3, show_progress=False)  # the same warm starts again
    assert second.evaluator.latency.table.measured == 0 and second.evaluator.latency.table.hits > 0
    for a, b in zip(first.completed_trials(), second.completed_trials(), strict=True):
        assert a.user_attrs["latency_seconds"] == b.user_attrs["latency_seconds"]  # the same table entries


def test_resuming_with_other_latency_settings_is_refused(tiny_task, tmp_path):
    search(tiny_task, tmp_path).optimize(1, show_progress=False)
    with pytest.raises(rs.RanksearchError, match="exists with different latency"):
        search(tiny_task, tmp_path, batch_size=4)


def test_pareto_latencies_are_timed_and_reported(tiny_task, tmp_path):
    s = search(tiny_task, tmp_path, check_every=0)
    s.optimize(5, show_progress=False)
    timed = s.measure_front_latency()
    results = s.results()
    front = results.pareto()
    assert set(timed) == set(front["trial"]) and all(v > 0 for v in timed.values())
    assert s.measure_front_latency() == {}  # already timed: nothing more
    check = results.latency_check()
    assert set(check["trial"]) == set(front["trial"]) and check["is_pareto"].all()
    assert check["reference_ms"].gt(0).all()  # the dense model was timed next to each
    measured = check["measured_ms"] / check["reference_ms"]
    assert np.allclose(check["measured_ratio"], measured, rtol=1e-12)
    assert np.allclose(check["error"], check["predicted_ratio"] / measured - 1, rtol=1e-12)
    assert np.allclose(check["predicted_ratio"], front.set_index("trial").loc[check["trial"], "latency_ratio"])
    assert "latency_check" in figures(results) and "pareto_latency" in figures(results)
    assert results.dense["latency_seconds"] > 0


def test_a_macs_study_can_still_record_latency(tiny_task, tmp_path):
    s = search(tiny_task, tmp_path, objectives=("accuracy", "macs"))
    s.optimize(2, show_progress=False)
    assert all(t.user_attrs["latency_seconds"] > 0 for t in s.completed_trials())
    assert "latency" not in s.objectives


def test_without_latency_settings_nothing_is_timed(tiny_task):
    model, train_loader, val_loader = tiny_task
    s = RankSearch(model, train_loader, val_loader, storage=None, space=SPACE, evaluator=FAST)
    assert s.evaluator.latency is None and s.evaluator.dense.latency_seconds is None
    with pytest.raises(rs.RanksearchError, match="measures no latency"):
        s.measure_front_latency()


STUDY_LATENCY = """
[latency]
batch_size = 2
warmup = 0
repeats = 1
min_sample_seconds = 0.0
check_every = 2
table = "{tmp}/table.json"
"""


def test_a_study_file_with_a_latency_objective_runs_and_reports(tmp_path, capsys):
    path = write_study(tmp_path)
    # per-layer: its dense warm start is within --max-latency 1.0 (the allocate strategy allocates by MACs)
    header = 'n_trials = 4\nobjectives = ["accuracy", "latency"]\nstrategy = "per-layer"'
    text = path.read_text().replace("n_trials = 4", header)
    path.write_text(text + STUDY_LATENCY.format(tmp=tmp_path))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "latency: timed" in out and "median |error|" in out and "latency_measured_ms" in out
    assert json.loads((tmp_path / "table.json").read_text())["format"] == "ranksearch.latency-table"
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["objectives"] == ["accuracy", "latency"] and summary["dense"]["latency_seconds"] > 0
    assert main(["export", str(path), "--max-latency", "1.0", "--out", str(tmp_path / "x")]) == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[latency]\ndtype = 'bfloat16'\n", r"\[latency\].*bfloat16 is for CUDA devices"),
        ("[latency]\nbatch = 4\n", r"\[latency\].*batch"),
        ("[latency]\nbatch_size = 0\n", r"\[latency\].*batch_size must be an int >= 1"),
        ("[latency]\ndevice = 'tpu'\n", r"\[latency\].*not a torch device|only cpu and cuda"),
    ],
)
def test_bad_latency_sections(tmp_path, capsys, section, message):
    path = write_study(tmp_path)
    path.write_text(path.read_text() + section)
    assert main(["run", str(path)]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"amp": "float8"}, "amp must be one of bfloat16, float16 or None"),
        ({"amp": "bfloat16"}, "needs a CUDA device"),
    ],
)
def test_mixed_precision_needs_cuda_and_a_known_dtype(settings, message):
    with pytest.raises(rs.RanksearchError, match=message):
        EvaluatorSettings(**settings)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [None, "bfloat16", "float16"])
def test_the_cuda_path_fine_tunes_measures_and_times_on_the_gpu(tiny_task, tmp_path, amp):
    model, train_loader, val_loader = tiny_task
    s = RankSearch(
        model, train_loader, val_loader, objectives=("accuracy", "latency"), storage=None, space=SPACE,
        evaluator=EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1, device="cuda", amp=amp),
        latency=LatencySettings(device="cuda", dtype="bfloat16" if amp else "float32", **QUICK),
    )  # fmt: skip
    s.optimize(3, show_progress=False)
    assert all(p.device.type == "cuda" for p in s.evaluator.model.parameters())
    assert len(s.completed_trials()) == 3 and all(t.values[1] > 0 for t in s.completed_trials())
    assert s.evaluator.latency.context.startswith(torch.cuda.get_device_name())  # timed on the GPU
    factors = [f for fs in s.evaluator.cache._factors.values() for f in fs]  # the factor cache lives on the GPU
    assert factors and all(f.device.type == "cuda" for f in factors)
