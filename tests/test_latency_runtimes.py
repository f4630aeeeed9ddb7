"""Latency in the runtime the model is deployed in: eager torch, torch.compile, onnxruntime."""

from __future__ import annotations

import math
import shutil
import sys

import pytest
import torch
from torch import nn

import ranksearch as rs
from ranksearch.latency import LatencyEstimator, LatencySettings, LatencyTable, measure_seconds
from ranksearch.latency._measure import prepared
from ranksearch.record import IDENTITY_ATTR

FAST = {"threads": 1, "warmup": 2, "repeats": 3, "min_sample_seconds": 0.0}


def conv_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()


def test_an_unknown_runtime_names_the_valid_ones():
    with pytest.raises(
        rs.RanksearchError, match=r"latency runtime must be one of torch, torch.compile, onnxruntime, got 'tvm'"
    ):
        LatencySettings(runtime="tvm")


def test_onnxruntime_without_the_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(rs.RanksearchError, match=r"needs the onnx extra: pip install 'ranksearch\[onnx\]'"):
        LatencySettings(runtime="onnxruntime")


def test_onnxruntime_times_the_exported_graph_in_its_own_table_context():
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'ranksearch[onnx]'")
    model = conv_model()
    small = rs.apply(model, rs.CompressionConfig({"2": ("tucker2", (2, 2))}))
    settings = LatencySettings(runtime="onnxruntime", **FAST)
    seconds = [measure_seconds(m, (1, 4, 8, 8), settings) for m in (model, small)]
    assert all(math.isfinite(s) and s > 0 for s in seconds)
    estimator = LatencyEstimator(model, (4, 8, 8), settings, LatencyTable())
    eager = LatencyEstimator(model, (4, 8, 8), LatencySettings(**FAST), estimator.table)
    assert "onnxruntime" in estimator.context and "onnxruntime" not in eager.context
    assert len(estimator.table) == 2  # one dense entry per context: the timings never mix


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C compiler"
)
def test_torch_compile_times_the_compiled_module():
    settings = LatencySettings(runtime="torch.compile", **FAST)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    seconds = measure_seconds(model, (2, 8), settings)
    assert math.isfinite(seconds) and seconds > 0
    assert not isinstance(model, torch._dynamo.eval_frame.OptimizedModule)  # the user's module is untouched


def test_the_runtime_is_in_a_study_identity_only_when_it_is_not_eager_torch(tiny_task, make_search):
    """Studies stored before the setting existed (eager torch) resume: their identity has no runtime key."""
    eager = make_search(tiny_task, objectives=["accuracy", "latency"], latency=LatencySettings(**FAST))
    assert "runtime" not in eager.study.user_attrs[IDENTITY_ATTR]["latency"]
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'ranksearch[onnx]'")
    onnx = LatencySettings(runtime="onnxruntime", **FAST)
    other = make_search(tiny_task, objectives=["accuracy", "latency"], latency=onnx, study_name="onnx")
    assert other.study.user_attrs[IDENTITY_ATTR]["latency"]["runtime"] == "onnxruntime"


def test_channels_last_times_4d_tensors_in_that_format_and_keeps_its_own_context():
    model = conv_model()
    settings = LatencySettings(channels_last=True, **FAST)
    assert math.isfinite(measure_seconds(model, (1, 4, 8, 8), settings))
    estimator = LatencyEstimator(model, (4, 8, 8), settings, LatencyTable())
    assert estimator.context.endswith("| channels-last")
    prepared_model = prepared(model, settings)
    assert prepared_model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous()  # the user's model is untouched


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels_last": 1}, "latency setting channels_last must be true or false, got 1"),
        ({"channels_last": True, "runtime": "onnxruntime"}, "channels_last is for the torch runtimes"),
    ],
)
def test_bad_channels_last_settings_are_named(kwargs, message):
    if kwargs.get("runtime") == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'ranksearch[onnx]'")
    with pytest.raises(rs.RanksearchError, match=message):
        LatencySettings(**kwargs)


@pytest.mark.parametrize(("threads", "expected"), [(3, 3), (None, "torch")])
def test_onnxruntime_sessions_use_the_timing_threads_and_do_not_spin(threads, expected):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'ranksearch[onnx]'")
    from ranksearch.latency._runtimes import session_options

    options = session_options(ort, threads)
    assert options.intra_op_num_threads == (torch.get_num_threads() if expected == "torch" else expected)
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
