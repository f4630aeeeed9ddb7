"""Checking predicted latency against measurements: interleaved timing with a dense reference, the prediction as
a ratio to it, the per-model scale fitted on the timed trials (leave-one-out), and old studies' stored timings."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from torch import nn

from ranksearch.errors import RanksearchError
from ranksearch.latency import LatencyEstimator, LatencySettings, measure_paired, measure_seconds
from ranksearch.models import build_model
from ranksearch.record import FRONT_LATENCY_ATTR
from ranksearch.report._latency_check import CHECK_COLUMNS, fit_latency_scale, latency_check_frame
from ranksearch.study._results import records_of


class DriftingClock:
    """A clock that advances ``cost[module] * drift`` per forward of each module: ``drift`` grows by ``rate``
    with every forward, as a machine slowing down (or another job starting) would."""

    def __init__(self, costs: dict[nn.Module, float], rate: float = 0.0) -> None:
        self.now, self.drift, self.order = 0.0, 1.0, []
        for module, cost in costs.items():
            module.register_forward_hook(self._hook(cost))
        self.rate = rate

    def _hook(self, cost: float):
        def hook(module, args, output):
            self.now += cost * self.drift
            self.drift *= 1 + self.rate
            self.order.append(cost)

        return hook

    def __call__(self) -> float:
        return self.now


SETTINGS = LatencySettings(repeats=5, warmup=1, min_sample_seconds=0.0)


def test_paired_timing_gives_each_module_its_own_median_and_alternates_the_order():
    fast, slow = nn.Linear(3, 2), nn.Linear(3, 2)
    clock = DriftingClock({fast: 0.25, slow: 0.5})
    assert measure_paired([fast, slow], (1, 3), SETTINGS, clock=clock) == [0.25, 0.5]
    timed = clock.order[2 * (SETTINGS.warmup + 1) :]  # after each module's warm-up and probe
    assert timed == [0.25, 0.5, 0.5, 0.25, 0.25, 0.5, 0.5, 0.25, 0.25, 0.5]


def test_one_module_paired_is_measure_seconds():
    module = nn.Linear(3, 2)
    assert measure_paired([module], (1, 3), SETTINGS, clock=DriftingClock({module: 0.125})) == [0.125]
    assert measure_seconds(module, (1, 3), SETTINGS, clock=DriftingClock({module: 0.125})) == 0.125


def test_interleaving_cancels_drift_that_separate_timings_do_not():
    # The machine slows by 2% per forward pass. Timed one after the other, the second module looks slower
    # than it is; interleaved, the ratio stays within 5% of the true 2.0.
    fast, slow = nn.Linear(3, 2), nn.Linear(3, 2)
    settings = LatencySettings(repeats=9, warmup=1, min_sample_seconds=0.0)
    clock = DriftingClock({fast: 1.0, slow: 2.0}, rate=0.02)
    separate = measure_seconds(slow, (1, 3), settings, clock=clock) / measure_seconds(
        fast, (1, 3), settings, clock=clock
    )
    clock = DriftingClock({fast: 1.0, slow: 2.0}, rate=0.02)
    first, second = measure_paired([fast, slow], (1, 3), settings, clock=clock)
    assert abs(separate / 2.0 - 1) > 0.15
    assert second / first == pytest.approx(2.0, rel=0.05)


def test_the_estimator_times_a_model_against_the_dense_model():
    model = build_model("small_cnn", in_channels=1, width=4)
    estimator = LatencyEstimator(model, (1, 8, 8), LatencySettings(repeats=3, warmup=1, min_sample_seconds=0.0))
    seconds, reference = estimator.measure_against_dense(model)
    assert seconds > 0 and reference > 0
    assert 0.2 < seconds / reference < 5  # the same model: about 1, whatever the machine's noise


# --- the per-model scale -----------------------------------------------------------------------------


def test_the_scale_is_the_least_squares_slope_of_the_changes():
    predicted = np.array([0.5, 0.8, 1.2, 0.6])
    measured = 1 + 0.7 * (predicted - 1)
    assert fit_latency_scale(predicted, measured) == pytest.approx(0.7, abs=1e-12)
    noisy = measured + np.array([0.01, -0.02, 0.0, 0.01])
    x, y = predicted - 1, noisy - 1
    assert fit_latency_scale(predicted, noisy) == pytest.approx(float(x @ y / (x @ x)), abs=1e-12)


@pytest.mark.parametrize(
    ("predicted", "measured", "scale"),
    [
        ([0.5, 0.6], [0.1, 0.2], 1.0),
        ([1.0, 1.0, 1.0], [0.5, 0.9, 1.2], 1.0),
        ([0.9, 0.9, 0.9], [1.5, 1.5, 1.5], 0.2),
        ([0.9, 0.9, 0.9], [0.1, 0.1, 0.1], 5.0),
    ],
    ids=["too-few-points", "no-predicted-change", "clipped-low", "clipped-high"],
)
def test_the_scale_stays_1_without_evidence_and_is_clipped(predicted, measured, scale):
    assert fit_latency_scale(np.array(predicted), np.array(measured)) == scale


def completed(rows: list[tuple[int, float, float, float | None]], pareto=True) -> pd.DataFrame:
    """A trials table with (trial, predicted ratio, measured ms, reference ms) rows, 10 ms dense."""
    return pd.DataFrame(
        {
            "trial": [r[0] for r in rows],
            "latency_ratio": [r[1] for r in rows],
            "latency_ms": [10 * r[1] for r in rows],
            "latency_measured_ms": [r[2] for r in rows],
            "latency_reference_ms": [r[3] for r in rows],
            "is_pareto": pareto,
        }
    )


def test_the_check_compares_ratios_and_corrects_each_trial_with_the_others_scale():
    # Measured changes are 0.5x the predicted ones, and the dense model ran at 20 ms when timed (10 ms in the
    # table): the raw ratios disagree by the changes' gap, never by the drift; leave-one-out fixes the gap.
    predicted = [0.4, 0.6, 0.8, 0.5, 0.9]
    rows = [(i, p, 20 * (1 + 0.5 * (p - 1)), 20.0) for i, p in enumerate(predicted)]
    check = latency_check_frame(completed(rows), dense_seconds=0.010)
    assert list(check.columns) == list(CHECK_COLUMNS)
    assert np.allclose(check["measured_ratio"], [1 + 0.5 * (p - 1) for p in predicted])
    assert np.allclose(check["error"], [p / (1 + 0.5 * (p - 1)) - 1 for p in predicted])
    assert np.allclose(check["corrected_error"], 0, atol=1e-12)


def test_a_trial_is_not_corrected_by_its_own_measurement():
    # Three timed trials: each has only two others, too few to fit, so nothing is corrected.
    rows = [(0, 0.5, 7.0, 10.0), (1, 0.6, 8.0, 10.0), (2, 0.7, 9.0, 10.0)]
    check = latency_check_frame(completed(rows), dense_seconds=0.010)
    assert np.allclose(check["corrected_ratio"], check["predicted_ratio"])


def test_old_timings_without_a_reference_use_the_dense_latency_of_the_study():
    check = latency_check_frame(completed([(0, 0.5, 6.0, None), (1, 0.7, 7.0, 14.0)]), dense_seconds=0.012)
    assert check["reference_ms"].tolist() == [12.0, 14.0]
    assert check["measured_ratio"].tolist() == [0.5, 0.5]


def test_a_study_without_timed_trials_has_an_empty_check():
    frame = completed([(0, 0.5, math.nan, None)])
    assert latency_check_frame(frame, dense_seconds=0.01).empty


@pytest.mark.parametrize(
    ("stored", "seconds", "reference"), [(0.004, 0.004, None), ([0.004, 0.008], 0.004, 0.008)], ids=["old", "new"]
)
def test_front_timings_are_read_in_both_stored_forms(stored, seconds, reference):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 0.5], user_attrs={"latency_seconds": 0.003}))
    study.set_user_attr(FRONT_LATENCY_ATTR, {"0": stored})
    (record,) = records_of(study)
    assert record.measurements.latency_measured_seconds == seconds
    assert record.measurements.latency_reference_seconds == reference


# --- the correction in targets and caps --------------------------------------------------------------


def timed_results(measured_change: float):
    """A latency study: dense (10 ms) and five configs whose measured change is ``measured_change`` times the
    predicted one, each timed against a 10 ms reference; trial 3 is predicted at 0.5 of dense."""
    from _records import make_results, record

    records = [record(0, 0.95, 1.0, methods=("dense",) * 3, latency_ratio=1.0, latency_seconds=0.01)]
    for number, (accuracy, predicted) in enumerate([(0.9, 0.4), (0.91, 0.45), (0.92, 0.5), (0.93, 0.6), (0.94, 0.8)]):
        measured = 1 + measured_change * (predicted - 1)
        timed = {"latency_seconds": 0.01 * predicted, "latency_measured_seconds": 0.01 * measured}
        records.append(record(number + 1, accuracy, predicted, latency_ratio=predicted, latency_reference_seconds=0.01,
                              **timed))  # fmt: skip
    return make_results(records, objectives=("accuracy", "latency"), settings={"targets": {"latency": [0.6]}})


def test_latency_targets_and_caps_use_the_correction_the_checks_support():
    from ranksearch.report import choose

    results = timed_results(0.5)  # the table predicts twice the savings the whole model shows
    assert results.latency_scale == pytest.approx(0.5)
    corrected = results.corrected_latency(results.completed()).set_index("trial")["latency_ratio"]
    assert corrected.loc[3] == pytest.approx(0.75) and corrected.loc[0] == 1.0
    # raw, trials 1-4 are predicted at <= 0.6 of dense (the best: 4); corrected (0.7-0.8), none are
    best = results.best_per_target()
    assert best["trial"].isna().all()
    assert results.best_per_target({"latency": [0.8]})["trial"].tolist() == [4]  # 4 corrects to 0.8
    with pytest.raises(RanksearchError, match=r"no trial has latency <= 0\.6"):
        choose(results, max_costs={"latency": 0.6})


def test_without_a_correction_that_helps_the_table_prediction_stands():
    results = timed_results(1.0)  # measured as predicted: no correction
    frame = results.completed()
    assert results.corrected_latency(frame) is frame
    assert results.best_per_target()["trial"].tolist() == [4]  # predicted at 0.6: the most accurate within it
