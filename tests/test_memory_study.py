"""Memory as an objective and a target: the evaluator's measurement against memory_use, a tiny study end to end,
its report, dashboard and export, resume identity, and the defaults taken from the latency settings."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)

import ranksearch as rs
from ranksearch.cli import main
from ranksearch.compress import apply
from ranksearch.config import CompressionConfig
from ranksearch.evaluator import Evaluator, EvaluatorSettings
from ranksearch.export import export_config
from ranksearch.latency import LatencySettings
from ranksearch.memory import MemorySettings, memory_use, weight_bytes
from ranksearch.record import Measurements
from ranksearch.space import SearchSpace
from ranksearch.study import RankSearch
from ranksearch.study._settings import deployment_settings

FAST = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1)
SPACE = SearchSpace(methods=("dense", "svd", "tucker2"), rank_fractions=(0.25, 0.5))


def search(task, tmp_path, name="mem", **options) -> RankSearch:
    model, train_loader, val_loader = task
    options = {"objectives": ("accuracy", "memory"), "strategy": "per-layer", **options}
    return RankSearch(
        model, train_loader, val_loader, storage=f"sqlite:///{tmp_path}/{name}.db", study_name=name, space=SPACE,
        evaluator=FAST, **options,
    )  # fmt: skip


def test_the_evaluator_counts_weights_and_peak_activations_at_the_deployment_batch(tiny_task):
    model, train_loader, val_loader = tiny_task
    evaluator = Evaluator(model, train_loader, val_loader, FAST, memory=MemorySettings(batch_size=4))
    dense = memory_use(evaluator.model, torch.zeros(4, 1, 8, 8))
    assert evaluator.dense.memory_bytes == dense.total_bytes
    assert dense.weights_bytes == weight_bytes(evaluator.model) and dense.activations_bytes > 0
    config = CompressionConfig({"3.0": ("svd", 2)})
    result = evaluator.evaluate(config)
    compressed = memory_use(apply(evaluator.model, config), torch.zeros(4, 1, 8, 8))
    assert result.memory_bytes == compressed.total_bytes and result.memory_activations_bytes > 0
    assert result.memory_ratio == pytest.approx(compressed.total_bytes / dense.total_bytes, rel=1e-12)
    assert result.memory_ratio < 1  # a rank-2 SVD of the second conv holds fewer weights


def test_a_memory_study_stores_the_objective_and_reports_it(tiny_task, tmp_path):
    s = search(tiny_task, tmp_path, targets={"memory": [0.9]})
    s.optimize(4, show_progress=False)
    for t in s.completed_trials():
        assert t.values[1] == t.user_attrs["memory_ratio"] > 0
    assert s.completed_trials()[0].values[1] == 1.0  # the dense warm start
    results = s.results()
    assert results.dense["memory_bytes"] == s.evaluator.dense.memory_bytes
    assert results.settings["memory"] == {"device": "cpu", "dtype": "float32", "batch_size": 1, "cpu_method": "traced"}
    frame = results.completed()
    assert (frame["memory_mb"] * 2**20 == [t.user_attrs["memory_bytes"] for t in s.completed_trials()]).all()
    best = results.best_per_target()
    assert best["cost"].tolist() == ["memory"] and "memory" in best.columns
    assert pytest.approx(best["value"].iloc[0]) == best["memory"].iloc[0] <= 0.9
    assert "memory" in rs.report.figures(results)["pareto_memory"].layout.xaxis.title.text


def test_resuming_with_other_memory_settings_is_refused(tiny_task, tmp_path):
    search(tiny_task, tmp_path).optimize(1, show_progress=False)
    with pytest.raises(rs.RanksearchError, match="exists with different"):
        search(tiny_task, tmp_path, memory=MemorySettings(batch_size=8))


def test_studies_without_memory_store_none_of_it(tiny_task, tmp_path):
    s = search(tiny_task, tmp_path, objectives=("accuracy", "macs"))
    s.optimize(1, show_progress=False)
    assert s.evaluator.memory is None and "memory" not in s.study.user_attrs["ranksearch"]
    assert not any(k.startswith("memory") for k in s.completed_trials()[0].user_attrs)
    assert s.results().completed()["memory_ratio"].isna().all()


def test_memory_follows_the_latency_settings_unless_given():
    latency = LatencySettings(batch_size=16)
    _, memory = deployment_settings(("accuracy", "memory"), {}, latency, None, None)
    assert memory == MemorySettings(batch_size=16)
    _, memory = deployment_settings(("accuracy", "macs"), {"memory": (0.5,)}, None, None, None)
    assert memory == MemorySettings()
    given = MemorySettings(batch_size=2)
    assert deployment_settings(("accuracy", "memory"), {}, latency, given, None)[1] is given
    assert deployment_settings(("accuracy", "macs"), {}, latency, None, None)[1] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int8"}, "memory dtype 'int8' is not one of"),
        ({"batch_size": 0}, "memory batch_size must be an int >= 1"),
        ({"device": "tpu"}, "not a torch device|only cpu and cuda"),
        ({"cpu_method": "rss"}, "memory cpu_method must be one of traced, profiler"),
    ],
)
def test_bad_memory_settings_are_refused(kwargs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        MemorySettings(**kwargs)


def test_the_memory_objective_without_a_measurement_is_a_clear_error():
    with pytest.raises(rs.RanksearchError, match="objective 'memory' was not measured"):
        Measurements(accuracy=0.5).objective("memory")


def test_a_study_file_with_a_memory_objective_runs_reports_and_exports(tmp_path, capsys):
    path = write_study(tmp_path)
    header = 'n_trials = 4\nobjectives = ["accuracy", "memory"]\ntargets = { memory = [0.9] }\nstrategy = "per-layer"'
    path.write_text(path.read_text().replace("n_trials = 4", header))
    assert main(["run", str(path)]) == 0
    assert "memory_mb" in capsys.readouterr().out
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["objectives"] == ["accuracy", "memory"] and summary["dense"]["memory_bytes"] > 0
    assert "dense memory" in (tmp_path / "tiny" / "report.html").read_text()
    capsys.readouterr()
    assert main(["export", str(path), "--max-memory", "1.0", "--out", str(tmp_path / "x")]) == 0
    assert "memory: " in capsys.readouterr().out


def test_export_records_the_measured_latency_and_memory(tiny_task, tmp_path):
    model, train_loader, val_loader = tiny_task
    latency = LatencySettings(warmup=0, repeats=1, min_sample_seconds=0.0, batch_size=2)
    evaluator = Evaluator(model, train_loader, val_loader, FAST, latency=latency, memory=MemorySettings.like(latency))
    lines: list[str] = []
    exported = export_config(evaluator, CompressionConfig({"3.0": ("svd", 2)}), tmp_path / "out", log=lines.append)
    timed, memory = exported.metadata["latency"], exported.metadata["memory"]
    assert timed["measured_ms"] > 0 and timed["dense_ms"] > 0 and timed["runtime"] == "torch"
    assert timed["measured_ratio"] == pytest.approx(timed["measured_ms"] / timed["dense_ms"], rel=1e-12)
    assert timed["batch_size"] == 2 and timed["predicted_ratio"] > 0
    assert memory["batch_size"] == 2 and memory["bytes"] > memory["activations_bytes"] > 0 and memory["ratio"] < 1
    assert any(line.startswith("latency: ") for line in lines) and any(line.startswith("memory: ") for line in lines)


def test_the_profiler_method_measures_at_least_the_trace(tiny_task):
    model, train_loader, val_loader = tiny_task
    traced = Evaluator(model, train_loader, val_loader, FAST, memory=MemorySettings(batch_size=8))
    measured = Evaluator(
        model, train_loader, val_loader, FAST, memory=MemorySettings(batch_size=8, cpu_method="profiler")
    )
    assert measured.memory.dense.method == "profiler" and traced.memory.dense.method == "traced"
    assert measured.memory.dense.weights_bytes == traced.memory.dense.weights_bytes
    assert measured.memory.dense.activations_bytes >= traced.memory.dense.activations_bytes > 0


def test_a_memory_section_sets_the_batch_and_method(tmp_path, capsys):
    path = write_study(tmp_path)
    header = 'n_trials = 2\nobjectives = ["accuracy", "memory"]\nstrategy = "per-layer"'
    section = "\n[memory]\nbatch_size = 4\ncpu_method = 'profiler'\n"
    path.write_text(path.read_text().replace("n_trials = 4", header) + section)
    assert main(["run", str(path)]) == 0
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["dense"]["memory_bytes"] > 0


@pytest.mark.parametrize(
    ("section", "message"),
    [("[memory]\nbatch = 4\n", r"\[memory\].*batch"), ("[memory]\ncpu_method = 'rss'\n", r"\[memory\].*cpu_method")],
)
def test_bad_memory_sections(tmp_path, capsys, section, message):
    path = write_study(tmp_path)
    path.write_text(path.read_text() + section)
    assert main(["run", str(path)]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
