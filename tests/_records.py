"""Synthetic trial records, written through the trial-record schema (:mod:`ranksearch.record`), for the
report tests: no training, no Optuna."""

from __future__ import annotations

from ranksearch.record import DENSE as DENSE_METHOD
from ranksearch.record import Measurements, TrialRecord, param_name, trial_attributes
from ranksearch.report import StudyResults

LAYERS = ("conv1", "block.0", "fc")
DENSE = {"accuracy": 0.95, "macs": 1000, "params": 500, "input_shape": [1, 1, 8, 8]}


def record(
    number, accuracy, macs, params=None, *, methods=("svd", "dense", "tt"), state="complete", names=LAYERS, **attrs
):
    """A trial record shaped like a real one (config, ratios, measurements); ``names`` are its layers."""
    params = macs if params is None else params
    layers = {
        name: {"method": m, "rank": None if m == DENSE_METHOD else 4} for name, m in zip(names, methods, strict=True)
    }
    choices = {param_name(n): m for n, m in zip(names, methods, strict=True)}
    choices.update({param_name(n, m): 0.25 for n, m in zip(names, methods, strict=True) if m != DENSE_METHOD})
    measured = Measurements(
        macs=int(macs * DENSE["macs"]),
        params=int(params * DENSE["params"]),
        macs_ratio=macs,
        params_ratio=params,
        accuracy=accuracy,
        accuracy_zero_shot=accuracy - 0.3,
        accuracy_recalibrated=accuracy - 0.1,
        accuracy_finetuned=accuracy,
        seconds={"total": 1.0},
    )
    config = {"format": "ranksearch.compression-config", "version": 1, "layers": layers}
    base = {**trial_attributes(config, measured), **attrs}
    values = None if state == "fail" else (accuracy, macs, params)
    return TrialRecord(number, state, values, choices, base)


def make_results(records, objectives=("accuracy", "macs"), *, layers=LAYERS, **kwargs) -> StudyResults:
    records = [
        TrialRecord(r.number, r.state, None if r.values is None else r.values[: len(objectives)], r.params, r.attrs)
        for r in records
    ]
    return StudyResults.from_records(
        records, name="toy", objectives=objectives, layers=layers, dense=DENSE, storage="sqlite:///x.db", **kwargs
    )


def toy_records():
    return [record(0, 0.95, 1.0, methods=("dense",) * 3), record(1, 0.9, 0.3, 0.5), record(2, 0.8, 0.5, 0.2)]


NUMERIC_NAMES = ("0.0", "3", "10")  # torch.nn.Sequential children: names plotly.js would read as numbers


def numeric_named_results() -> StudyResults:
    records = [record(0, 0.95, 1.0, methods=("dense",) * 3, names=NUMERIC_NAMES)]
    records += [record(i, 0.5 + 0.1 * i, 0.2 * i, names=NUMERIC_NAMES, methods=("svd", "tt", "cp")) for i in (1, 2, 3)]
    return make_results(records, layers=NUMERIC_NAMES)
