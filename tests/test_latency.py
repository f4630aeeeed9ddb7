"""Measured latency: settings validation, timing with an injected clock, the on-disk table, the estimator.

No assertion here reads a real clock's value (the machine is shared and noisy): timing is checked with
fake clocks (a clock that advances a known amount per reading, or per forward call of the timed module,
counted by a forward hook) and the estimator with structural checks (what is measured, what is reused)
and with a table whose "measurements" are exact binary fractions.
"""

from __future__ import annotations

import json
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import ranksearch as rs
from ranksearch.compress import apply_resolved
from ranksearch.errors import RanksearchError
from ranksearch.latency import (
    LatencyEstimator,
    LatencySettings,
    LatencyTable,
    _table,
    device_name,
    layer_inputs,
    measure_seconds,
    structure_digest,
)
from ranksearch.models import build_model

# No warmup, one sample of one loop: the estimator tests check structure, not speed.
FAST = LatencySettings(batch_size=2, repeats=1, warmup=0, min_sample_seconds=0)
SAMPLE = (1, 8, 8)  # one 8x8 grey image for small_cnn(in_channels=1)
CONFIG = rs.CompressionConfig({"3.0": ("svd", 2), "6.0": ("tucker2", (4, 4)), "10": ("svd", 8)})


def tiny_cnn() -> nn.Module:
    return build_model("small_cnn", in_channels=1, width=4)


class ForwardClock:
    """A clock that advances ``step`` seconds per forward call of ``module``, and a record of every call.

    The forward hook is a plain closure, so the copy ``measure_seconds`` makes (deepcopy keeps hooks)
    reports to the same list: each call records which module ran, its mode, inference mode, the
    thread count, the input shape and where the output lives.
    """

    def __init__(self, module: nn.Module, step: float) -> None:
        self.step = step
        self.calls: list[SimpleNamespace] = []
        calls = self.calls

        def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
            calls.append(
                SimpleNamespace(
                    module=mod,
                    training=mod.training,
                    inference=torch.is_inference_mode_enabled(),
                    threads=torch.get_num_threads(),
                    input_shape=tuple(args[0].shape),
                    device=output.device.type,
                    dtype=output.dtype,
                )
            )

        self.handle = module.register_forward_hook(hook)

    def __call__(self) -> float:
        return len(self.calls) * self.step


def scripted_clock(readings: list[float]):
    """A clock that returns ``readings`` in order and fails if read once more."""
    it = iter(readings)
    return lambda: next(it)


class RecordingTable(LatencyTable):
    """A table that records every key asked for, in order."""

    def __init__(self, path=None) -> None:
        super().__init__(path)
        self.asked: list[str] = []

    def get_or_measure(self, context, key, measure):
        self.asked.append(key)
        return super().get_or_measure(context, key, measure)


class ScriptedTable(RecordingTable):
    """A recording table whose new keys are 'measured' as k/8: sums of such values are exact in any order."""

    def get_or_measure(self, context, key, measure):
        return super().get_or_measure(context, key, lambda: (len(self) + 1) / 8)


def split_keys(estimator: LatencyEstimator, resolved, asked: list[str]) -> list[tuple[str, str]]:
    """(dense key, factorized key) of each resolved layer, from the keys the estimator asked for."""
    pairs = []
    for layer in resolved:
        base = estimator.layer_key(layer.name, layer.module)
        keys = [key for key in asked if key.startswith(f"{base} | ")]
        (dense,) = [key for key in keys if key.endswith(" | dense")]
        (factorized,) = [key for key in keys if key != dense]
        assert layer.method.name in factorized
        pairs.append((dense, factorized))
    return pairs


# --- LatencySettings ----------------------------------------------------------------------------


def test_default_settings_are_valid():
    settings = LatencySettings()
    assert (settings.device, settings.dtype, settings.torch_dtype) == ("cpu", "float32", torch.float32)
    with pytest.raises(AttributeError):
        settings.repeats = 3  # frozen: the settings are part of a study's identity


BAD_SETTINGS = [
    (dict(dtype="float64"), "latency dtype 'float64' is not one of float32, bfloat16, float16"),
    (dict(dtype="bfloat16"), "latency dtype bfloat16 is for CUDA devices; on the CPU use float32"),
    (dict(dtype="float16"), "latency dtype float16 is for CUDA devices; on the CPU use float32"),
    (dict(device="tpu"), "latency device 'tpu' is not a torch device"),
    (dict(device="nonsense"), "latency device 'nonsense' is not a torch device"),
    (dict(device=None), "latency device None is not a torch device"),
    (dict(device="meta"), "latency device 'meta': only cpu and cuda are supported"),
    (dict(batch_size=0), "latency setting batch_size must be an int >= 1, got 0"),
    (dict(batch_size=2.0), "latency setting batch_size must be an int >= 1, got 2.0"),
    (dict(batch_size=True), "latency setting batch_size must be an int >= 1, got True"),
    (dict(repeats=0), "latency setting repeats must be an int >= 1, got 0"),
    (dict(warmup=-1), "latency setting warmup must be an int >= 0, got -1"),
    (dict(check_every=-1), "latency setting check_every must be an int >= 0, got -1"),
    (dict(threads=0), "latency setting threads must be an int >= 1 or None, got 0"),
    (dict(threads=True), "latency setting threads must be an int >= 1 or None, got True"),
    (dict(threads=1.5), "latency setting threads must be an int >= 1 or None, got 1.5"),
    (dict(min_sample_seconds=-1), "latency setting min_sample_seconds must be a number >= 0, got -1"),
    (dict(min_sample_seconds=math.nan), "latency setting min_sample_seconds must be a number >= 0, got nan"),
    (dict(min_sample_seconds=math.inf), "latency setting min_sample_seconds must be a number >= 0, got inf"),
    (dict(min_sample_seconds="0.1"), "latency setting min_sample_seconds must be a number >= 0, got '0.1'"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    BAD_SETTINGS,
    ids=["-".join(f"{k}={v!r}" for k, v in kwargs.items()) for kwargs, _ in BAD_SETTINGS],
)
def test_bad_settings_are_refused_with_a_message(kwargs, message):
    with pytest.raises(RanksearchError, match=re.escape(message)):
        LatencySettings(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: the refusal cannot happen")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused(device):
    message = f"latency device {device!r} requested but CUDA is not available on this machine"
    with pytest.raises(RanksearchError, match=re.escape(message)):
        LatencySettings(device=device, dtype="bfloat16")


def test_device_name_names_the_cpu_and_its_threads():
    name = device_name("cpu")
    assert name.endswith(f" x{torch.get_num_threads()} threads") and len(name) > len(" x1 threads")


# --- measure_seconds ----------------------------------------------------------------------------


def test_median_is_what_a_per_reading_clock_implies():
    # Every reading advances 0.5 s: the probe lasts 0.5 s < 2 s, so a sample loops ceil(2 / 0.5) = 4
    # times and still reads 0.5 s in all (the clock does not care), i.e. 0.125 s per forward pass.
    readings = []

    def clock() -> float:
        readings.append(None)
        return 0.5 * len(readings)

    settings = LatencySettings(repeats=3, warmup=1, min_sample_seconds=2.0)
    assert measure_seconds(nn.Linear(3, 2), (1, 3), settings, clock=clock) == 0.125
    assert len(readings) == 2 + 2 * settings.repeats  # the probe, then a start and an end per sample


@pytest.mark.parametrize(
    ("durations", "median"),
    [([9.0, 1.0, 2.0], 2.0), ([9.0, 1.0, 2.0, 3.0], 2.5), ([4.0], 4.0)],
    ids=["odd", "even", "single"],
)
def test_the_median_of_the_samples_is_kept(durations, median):
    readings, now = [0.0, 10.0], 10.0  # the probe: 10 s >= min_sample_seconds, so one loop per sample
    for duration in durations:
        readings += [now, now + duration]
        now += duration
    settings = LatencySettings(repeats=len(durations), warmup=2, min_sample_seconds=1.0)
    assert measure_seconds(nn.Linear(3, 2), (1, 3), settings, clock=scripted_clock(readings)) == median


@pytest.mark.parametrize(
    ("min_sample_seconds", "loops"),
    [(0.0, 1), (0.25, 1), (1.0, 4), (1.1, 5)],
    ids=["no-minimum", "probe-long-enough", "exact-multiple", "rounded-up"],
)
def test_loops_grow_until_a_sample_lasts_min_sample_seconds(min_sample_seconds, loops):
    model = nn.Linear(3, 2)
    clock = ForwardClock(model, step=0.25)  # one forward pass = 0.25 s
    settings = LatencySettings(repeats=3, warmup=2, min_sample_seconds=min_sample_seconds)
    assert measure_seconds(model, (4, 3), settings, clock=clock) == 0.25  # per pass, whatever the loops
    # warmup runs, the one probe run, then `loops` runs per sample
    assert len(clock.calls) == settings.warmup + 1 + settings.repeats * loops


def test_loops_are_capped_when_the_clock_barely_moves():
    model = nn.Identity()
    clock = ForwardClock(model, step=1e-5)  # uncapped, a sample would loop 100_000 times
    settings = LatencySettings(repeats=1, warmup=0, min_sample_seconds=1.0)
    assert measure_seconds(model, (1, 2), settings, clock=clock) == pytest.approx(1e-5, rel=1e-9)
    assert len(clock.calls) == 1 + 10_000


def test_warmup_runs_are_untimed():
    # The clock only moves during warmup (10 s per pass): if warmup were inside the timed region, a
    # sample would see it. Readings happen after warmup, so every interval is 0 s.
    model = nn.Linear(3, 2)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(None))
    settings = LatencySettings(repeats=2, warmup=3, min_sample_seconds=0)
    assert measure_seconds(model, (1, 3), settings, clock=lambda: 10.0 * min(len(calls), settings.warmup)) == 0.0
    assert len(calls) == settings.warmup + 1 + settings.repeats


def test_threads_are_set_while_timing_and_restored_after():
    before = torch.get_num_threads()
    wanted = before + 1
    model = nn.Linear(3, 2)
    clock = ForwardClock(model, step=0.5)
    measure_seconds(model, (1, 3), LatencySettings(threads=wanted, repeats=2, warmup=1), clock=clock)
    assert {call.threads for call in clock.calls} == {wanted}
    assert torch.get_num_threads() == before
    clock.calls.clear()
    measure_seconds(model, (1, 3), LatencySettings(threads=None, repeats=2, warmup=1), clock=clock)
    assert {call.threads for call in clock.calls} == {before}


def test_threads_are_restored_when_the_module_fails():
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken forward")

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="broken forward"):
        measure_seconds(Broken(), (1, 3), LatencySettings(threads=before + 1), clock=lambda: 0.0)
    assert torch.get_num_threads() == before


def test_the_module_is_not_modified_and_an_eval_copy_runs_in_inference_mode():
    model = tiny_cnn().train()  # BatchNorm in training mode would update its running statistics
    before = {name: t.clone() for name, t in model.state_dict().items()}
    clock = ForwardClock(model, step=0.5)
    settings = LatencySettings(batch_size=2, repeats=2, warmup=2, min_sample_seconds=0)
    measure_seconds(model, (2, *SAMPLE), settings, clock=clock)
    assert len(clock.calls) == 2 + 1 + 2
    for call in clock.calls:
        assert call.module is not model
        assert not call.training and not any(m.training for m in call.module.modules())
        assert call.inference
        assert call.input_shape == (2, *SAMPLE)
        assert (call.device, call.dtype) == ("cpu", torch.float32)
    assert all(m.training for m in model.modules())
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_the_real_clock_gives_a_positive_time():
    seconds = measure_seconds(nn.Linear(3, 2), (1, 3), FAST)
    assert isinstance(seconds, float) and seconds > 0  # its value is not checked: the machine is noisy


# --- LatencyTable -------------------------------------------------------------------------------


def counting(value: float):
    """A measurement that returns ``value`` and counts its calls in ``.calls``."""

    def measure() -> float:
        measure.calls += 1
        return value

    measure.calls = 0
    return measure


def refuse() -> float:
    raise AssertionError("this key should have been served from the table")


def test_in_memory_table_measures_once_then_hits():
    table = LatencyTable()
    measure = counting(0.5)
    assert table.get("ctx", "k") is None
    assert table.get_or_measure("ctx", "k", measure) == 0.5
    assert table.get_or_measure("ctx", "k", measure) == 0.5
    assert (measure.calls, table.measured, table.hits, len(table)) == (1, 1, 1, 1)
    assert table.get("ctx", "k") == 0.5
    # the same key in another context is another measurement
    assert table.get_or_measure("other ctx", "k", counting(0.25)) == 0.25
    assert (table.measured, table.hits, len(table)) == (2, 1, 2)
    # a measurement is stored as a float
    value = table.get_or_measure("ctx", "int", lambda: 3)
    assert value == 3.0 and isinstance(value, float)
    table.save()  # no path: nothing to write, no error


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "latency" / "cpu.json"  # the folder is created
    values = {("ctx a", "k1"): 1.25e-5, ("ctx a", "k2"): 0.123456789012345678, ("ctx b", "k1"): 3e-7}
    table = LatencyTable(path)
    for (context, key), seconds in values.items():
        table.get_or_measure(context, key, lambda seconds=seconds: seconds)
    table.save()
    document = json.loads(path.read_text(encoding="utf-8"))
    assert set(document) == {"format", "version", "contexts"}

    again = LatencyTable(path)
    assert len(again) == len(values)
    for (context, key), seconds in values.items():
        assert again.get(context, key) == seconds  # exact: JSON keeps every float digit
        assert again.get_or_measure(context, key, refuse) == seconds
    assert (again.measured, again.hits) == (0, len(values))


def test_a_second_table_on_the_same_file_measures_nothing_for_known_keys(tmp_path):
    path = tmp_path / "cpu.json"
    first = LatencyTable(path)
    first.get_or_measure("ctx", "conv", counting(2e-4))
    first.get_or_measure("ctx", "linear", counting(1e-5))
    first.save()

    second = LatencyTable(path)  # "a second study performs no new measurements for known keys"
    assert second.get_or_measure("ctx", "conv", refuse) == 2e-4
    assert second.get_or_measure("ctx", "linear", refuse) == 1e-5
    assert (second.measured, second.hits) == (0, 2)
    # a new key still is measured
    assert second.get_or_measure("ctx", "new", counting(7e-6)) == 7e-6
    assert (second.measured, second.hits) == (1, 2)


def test_saving_without_new_entries_writes_nothing(tmp_path):
    path = tmp_path / "cpu.json"
    LatencyTable(path).save()
    assert not path.exists()
    table = LatencyTable(path)
    table.get_or_measure("ctx", "k", counting(1.0))
    table.save()
    written = path.read_bytes()
    path.write_bytes(written + b" ")  # so a rewrite would show
    table.save()  # what was saved is not saved again
    assert path.read_bytes() == written + b" "
    path.write_bytes(written)
    reader = LatencyTable(path)
    reader.get_or_measure("ctx", "k", refuse)
    path.write_bytes(written + b"\n")  # so a rewrite would show
    reader.save()
    assert path.read_bytes() == written + b"\n"


def test_save_merges_what_another_writer_saved_meanwhile(tmp_path):
    path = tmp_path / "cpu.json"
    a, b = LatencyTable(path), LatencyTable(path)  # both opened before either wrote
    a.get_or_measure("ctx", "from a", counting(1.0))
    a.save()
    b.get_or_measure("ctx", "from b", counting(2.0))
    b.get_or_measure("other ctx", "from b", counting(3.0))
    b.save()

    merged = LatencyTable(path)
    assert (merged.get("ctx", "from a"), merged.get("ctx", "from b"), merged.get("other ctx", "from b")) == (
        1.0,
        2.0,
        3.0,
    )
    assert len(merged) == 3
    assert b.get("ctx", "from a") == 1.0  # what b found on disk when saving is visible to b too
    # and a later save by a keeps b's entries
    a.get_or_measure("ctx", "again from a", counting(4.0))
    a.save()
    assert len(LatencyTable(path)) == 4


def _valid_document(tmp_path) -> dict:
    table = LatencyTable(tmp_path / "valid.json")
    table.get_or_measure("ctx", "old", counting(1.0))
    table.save()
    return json.loads((tmp_path / "valid.json").read_text(encoding="utf-8"))


CORRUPTIONS = {
    "garbage-bytes": lambda doc: b"\xff\xfe\x00\x9c garbage \x00",
    "truncated-json": lambda doc: json.dumps(doc).encode()[:-5],
    "empty-file": lambda doc: b"",
    "json-list": lambda doc: b"[1, 2, 3]",
    "json-string": lambda doc: b'"a latency table"',
    "other-format": lambda doc: json.dumps({**doc, "format": "something.else"}).encode(),
    "wrong-version": lambda doc: json.dumps({**doc, "version": doc["version"] + 1}).encode(),
    "no-contexts": lambda doc: json.dumps({k: v for k, v in doc.items() if k != "contexts"}).encode(),
    "contexts-not-an-object": lambda doc: json.dumps({**doc, "contexts": [1, 2]}).encode(),
    "entries-not-an-object": lambda doc: json.dumps({**doc, "contexts": {"ctx": 5}}).encode(),
    "seconds-not-a-number": lambda doc: json.dumps({**doc, "contexts": {"ctx": {"old": "fast"}}}).encode(),
    "seconds-null": lambda doc: json.dumps({**doc, "contexts": {"ctx": {"old": None}}}).encode(),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_file_warns_and_is_rebuilt(tmp_path, corruption):
    document = _valid_document(tmp_path)
    path = tmp_path / "cpu.json"
    path.write_bytes(CORRUPTIONS[corruption](document))
    with pytest.warns(UserWarning, match=r"latency table .*cpu\.json.* is unreadable") as record:
        table = LatencyTable(path)
    assert len(record) == 1 and "rebuilding it" in str(record[0].message)
    assert len(table) == 0 and table.get("ctx", "old") is None

    assert table.get_or_measure("ctx", "new", counting(0.75)) == 0.75
    table.save()  # no second warning (warnings are errors here), and the file is valid again
    rebuilt = json.loads(path.read_text(encoding="utf-8"))
    assert (rebuilt["format"], rebuilt["version"]) == (document["format"], document["version"])
    reopened = LatencyTable(path)
    assert reopened.get("ctx", "new") == 0.75 and len(reopened) == 1


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "cpu.json"
    for i in range(3):
        table = LatencyTable(path)
        table.get_or_measure("ctx", f"k{i}", counting(float(i)))
        table.save()
    assert os.listdir(tmp_path) == ["cpu.json"]
    assert len(LatencyTable(path)) == 3


def test_a_failed_save_keeps_the_old_file_and_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "cpu.json"
    table = LatencyTable(path)
    table.get_or_measure("ctx", "old", counting(1.0))
    table.save()
    before = path.read_bytes()

    def half_written(document, file, **kwargs) -> None:
        file.write('{"format": "ranksearch.lat')
        raise OSError("No space left on device")

    monkeypatch.setattr(_table.json, "dump", half_written)
    table.get_or_measure("ctx", "new", counting(2.0))
    with pytest.raises(OSError, match="No space left on device"):
        table.save()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["cpu.json"]

    monkeypatch.undo()
    table.save()  # the entry not written is written now
    assert LatencyTable(path).get("ctx", "new") == 2.0


# --- LatencyEstimator ---------------------------------------------------------------------------


def test_layer_inputs_are_the_shapes_each_layer_sees():
    expected = {"0.0": (2, 1, 8, 8), "3.0": (2, 4, 4, 4), "6.0": (2, 8, 2, 2), "10": (2, 256), "12": (2, 256)}
    assert layer_inputs(tiny_cnn(), (2, *SAMPLE)) == expected
    estimator = LatencyEstimator(tiny_cnn(), SAMPLE, FAST)
    assert estimator.input_shape == (2, *SAMPLE)
    assert estimator.layer_inputs == expected
    assert layer_inputs(tiny_cnn(), (5, 1, 16, 16))["6.0"] == (5, 8, 4, 4)


def test_prediction_is_dense_minus_replaced_layers_plus_factorized_from_the_table():
    model = tiny_cnn()
    resolved = CONFIG.resolve(model)
    table = ScriptedTable()
    estimator = LatencyEstimator(model, SAMPLE, FAST, table)
    assert len(table.asked) == 1 and estimator.dense_seconds == table.get(estimator.context, table.asked[0])
    table.asked.clear()

    predicted = estimator.predict(resolved, apply_resolved(model, resolved))
    assert len(table.asked) == 2 * len(resolved)  # a dense and a factorized entry per replaced layer
    pairs = split_keys(estimator, resolved, table.asked)
    dense = sum(table.get(estimator.context, key) for key, _ in pairs)
    factorized = sum(table.get(estimator.context, key) for _, key in pairs)
    assert predicted == estimator.dense_seconds - dense + factorized  # exact: every entry is a multiple of 1/8
    assert predicted != estimator.dense_seconds


def test_prediction_is_consistent_with_the_measured_table():
    model = tiny_cnn()
    resolved = CONFIG.resolve(model)
    table = RecordingTable()
    estimator = LatencyEstimator(model, SAMPLE, FAST, table)
    assert table.get(estimator.context, table.asked[0]) == estimator.dense_seconds
    predicted = estimator.predict(resolved, apply_resolved(model, resolved))
    assert (table.measured, len(table)) == (1 + 2 * len(resolved), 1 + 2 * len(resolved))
    pairs = split_keys(estimator, resolved, table.asked[1:])
    dense = sum(table.get(estimator.context, key) for key, _ in pairs)
    factorized = sum(table.get(estimator.context, key) for _, key in pairs)
    # real measurements: equal up to the order of the float additions
    assert predicted == pytest.approx(estimator.dense_seconds - dense + factorized, rel=1e-12, abs=1e-15)


def test_predicting_the_same_config_twice_measures_nothing_new():
    model = tiny_cnn()
    resolved = CONFIG.resolve(model)
    estimator = LatencyEstimator(model, SAMPLE, FAST)
    first = estimator.predict(resolved, apply_resolved(model, resolved))
    measured, hits = estimator.table.measured, estimator.table.hits
    second = estimator.predict(resolved, apply_resolved(model, resolved))
    assert second == first
    assert (estimator.table.measured, estimator.table.hits) == (measured, hits + 2 * len(resolved))


def test_an_empty_config_predicts_the_dense_latency():
    model = tiny_cnn()
    estimator = LatencyEstimator(model, SAMPLE, FAST)
    assert estimator.predict([], model) == estimator.dense_seconds
    assert estimator.predict(rs.CompressionConfig({"3.0": "dense"}).resolve(model), model) == estimator.dense_seconds
    assert (estimator.table.measured, estimator.table.hits) == (1, 0)


def twin_convs() -> nn.Sequential:
    """Layers 2 and 4: the same geometry and input; layer 7: the same geometry, a smaller input."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )


def test_layers_with_the_same_geometry_and_input_share_entries():
    model = twin_convs()
    estimator = LatencyEstimator(model, (3, 8, 8), FAST)
    assert estimator.layer_key("2", model[2]) == estimator.layer_key("4", model[4])
    assert estimator.layer_key("7", model[7]) != estimator.layer_key("2", model[2])  # another input shape

    resolved = rs.CompressionConfig({"2": ("svd", 3), "4": ("svd", 3), "7": ("svd", 3)}).resolve(model)
    estimator.predict(resolved, apply_resolved(model, resolved))
    # the dense model, layers 2 and 4 together (dense, svd:3), layer 7 (dense, svd:3); layer 4 is served
    assert (estimator.table.measured, estimator.table.hits, len(estimator.table)) == (5, 2, 5)

    other_rank = rs.CompressionConfig({"2": ("svd", 3), "4": ("svd", 2)}).resolve(model)
    estimator.predict(other_rank, apply_resolved(model, other_rank))
    assert (estimator.table.measured, estimator.table.hits) == (6, 5)  # only svd:2 is new


def test_a_second_estimator_on_the_same_table_file_measures_nothing_known(tmp_path):
    path = tmp_path / "cpu.json"
    model = tiny_cnn()
    resolved = CONFIG.resolve(model)
    first = LatencyEstimator(model, SAMPLE, FAST, LatencyTable(path))
    predicted = first.predict(resolved, apply_resolved(model, resolved))
    assert first.table.measured == 1 + 2 * len(resolved)

    twin = tiny_cnn()  # the same architecture, other weights: the same entries
    torch.nn.init.normal_(twin[0][0].weight)
    twin_resolved = CONFIG.resolve(twin)
    table = LatencyTable(path)
    second = LatencyEstimator(twin, SAMPLE, FAST, table)
    assert (table.measured, table.hits) == (0, 1)
    assert second.dense_seconds == first.dense_seconds
    assert second.predict(twin_resolved, apply_resolved(twin, twin_resolved)) == predicted
    assert (table.measured, table.hits) == (0, 1 + 2 * len(resolved))

    # one more layer: only its two entries are measured
    more = rs.CompressionConfig({**CONFIG, "12": ("svd", 3)}).resolve(twin)
    second.predict(more, apply_resolved(twin, more))
    assert table.measured == 2
    # another batch size is another input: the dense model is measured again
    third = LatencyTable(path)
    LatencyEstimator(twin, SAMPLE, LatencySettings(batch_size=3, repeats=1, warmup=0, min_sample_seconds=0), third)
    assert (third.measured, third.hits) == (1, 0)


def test_the_thread_count_is_part_of_the_context_and_restored():
    before = torch.get_num_threads()
    table = LatencyTable()
    own = LatencyEstimator(tiny_cnn(), SAMPLE, FAST, table)
    threaded = LatencySettings(batch_size=2, threads=before + 1, repeats=1, warmup=0, min_sample_seconds=0)
    more = LatencyEstimator(tiny_cnn(), SAMPLE, threaded, table)
    assert torch.get_num_threads() == before
    assert own.context != more.context and f"x{before + 1} threads" in more.context
    assert (table.measured, table.hits) == (2, 0)  # the same model, timed again with other threads


def test_measure_model_times_the_whole_model_and_stores_nothing():
    model = tiny_cnn()
    resolved = CONFIG.resolve(model)
    estimator = LatencyEstimator(model, SAMPLE, FAST)
    seconds = estimator.measure_model(apply_resolved(model, resolved))
    assert isinstance(seconds, float) and seconds > 0
    assert (estimator.table.measured, estimator.table.hits, len(estimator.table)) == (1, 0, 1)


def test_structure_digest_ignores_weights_and_sees_shapes():
    a, b = tiny_cnn(), tiny_cnn()
    torch.nn.init.zeros_(b[3][0].weight)
    assert structure_digest(a) == structure_digest(b)
    assert structure_digest(a) != structure_digest(build_model("small_cnn", in_channels=1, width=8))


def test_models_that_differ_only_in_stride_get_their_own_dense_entry():
    one = nn.Sequential(nn.Conv2d(3, 4, 3, stride=1), nn.Flatten())
    two = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten())
    table = LatencyTable()
    LatencyEstimator(one, (3, 16, 16), FAST, table)
    LatencyEstimator(two, (3, 16, 16), FAST, table)
    assert table.measured == 2  # today the second model is served the first one's latency


def test_the_estimator_leaves_the_models_mode_alone():
    model = tiny_cnn().train()
    LatencyEstimator(model, SAMPLE, FAST)
    assert all(m.training for m in model.modules())


class WithAuxHead(nn.Module):
    """A compressible Linear that the (eval) forward pass never runs, like Inception's auxiliary head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.aux = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_layer_the_forward_pass_never_runs_costs_nothing():
    model = WithAuxHead()
    assert "aux" in rs.compressible_layers(model)  # the search space offers it
    estimator = LatencyEstimator(model, (4,), FAST)
    resolved = rs.CompressionConfig({"aux": ("svd", 2)}).resolve(model)
    assert estimator.predict(resolved, apply_resolved(model, resolved)) == estimator.dense_seconds


# --- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_timing_and_estimator(monkeypatch):
    settings = LatencySettings(device="cuda", dtype="bfloat16", batch_size=2, repeats=3, warmup=1, min_sample_seconds=0)
    synchronize, syncs = torch.cuda.synchronize, []

    def counted_sync(*args, **kwargs) -> None:
        syncs.append(None)
        synchronize(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "synchronize", counted_sync)
    model = tiny_cnn()
    clock = ForwardClock(model, step=0.25)
    assert measure_seconds(model, (2, *SAMPLE), settings, clock=clock) == 0.25
    clock.handle.remove()
    assert len(clock.calls) == 1 + 1 + 3
    assert {(call.device, call.dtype) for call in clock.calls} == {("cuda", torch.bfloat16)}
    assert len(syncs) == 1 + 1 + 3  # after warmup, after the probe, after each sample
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())

    table = LatencyTable()
    estimator = LatencyEstimator(model, SAMPLE, settings, table)
    assert torch.cuda.get_device_name(torch.device("cuda")) in estimator.context and "bfloat16" in estimator.context
    resolved = CONFIG.resolve(model)
    compressed = apply_resolved(model, resolved)
    predicted = estimator.predict(resolved, compressed)
    assert math.isfinite(predicted) and estimator.dense_seconds > 0
    assert table.measured == 1 + 2 * len(resolved)
    assert estimator.predict(resolved, compressed) == predicted and table.measured == 1 + 2 * len(resolved)
    assert estimator.measure_model(compressed) > 0
    assert all(p.device.type == "cpu" for p in compressed.parameters())
