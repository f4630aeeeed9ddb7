"""How well the latency table predicted the timed trials, and the per-model correction fitted on them.

A prediction is a ratio to the dense model: ``predicted_ratio = 1 + sum(factorized - dense layer) / dense``,
from per-layer timings in the table. A timed trial is a ratio too: the whole compressed model over the dense
model timed interleaved with it (``reference``), so the machine's drift between the table's timings and the
check cancels. What is left is the gap between layers timed alone and layers inside the whole graph (caches,
per-call overheads, fused kernels), which scales with how much of the model was changed: the correction is
one per-model scale ``s`` on the predicted change, ``corrected = 1 + s (predicted_ratio - 1)``, fitted by
least squares on the timed trials. ``s > 0`` keeps the order of the predictions, so the Pareto front of a
latency objective does not change; what changes is how far to trust the numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["CHECK_COLUMNS", "MIN_FIT_POINTS", "fit_latency_scale", "latency_check_frame", "trusted_scale"]

MIN_FIT_POINTS = 3
"""Timed trials needed (besides the one checked) before the scale is fitted; fewer leave it at 1."""
SCALE_RANGE = (0.2, 5.0)
"""The fitted scale is clipped to this range (a few noisy checks must not flip or explode a prediction)."""
CHECK_COLUMNS = (
    "trial",
    "predicted_ms",
    "measured_ms",
    "reference_ms",
    "predicted_ratio",
    "measured_ratio",
    "error",
    "corrected_ratio",
    "corrected_error",
    "is_pareto",
)


def fit_latency_scale(predicted_ratio: np.ndarray, measured_ratio: np.ndarray) -> float:
    """The scale ``s`` minimizing ``sum((measured - 1 - s (predicted - 1))^2)``; 1.0 with fewer than
    :data:`MIN_FIT_POINTS` points or no predicted change, clipped to :data:`SCALE_RANGE`."""
    x = np.asarray(predicted_ratio, dtype=float) - 1
    y = np.asarray(measured_ratio, dtype=float) - 1
    if len(x) < MIN_FIT_POINTS or float(x @ x) < 1e-12:
        return 1.0
    return float(np.clip((x @ y) / (x @ x), *SCALE_RANGE))


def latency_check_frame(completed: pd.DataFrame, dense_seconds: float | None) -> pd.DataFrame:
    """One row per timed trial of ``completed`` (a trials table), columns :data:`CHECK_COLUMNS`.

    ``measured_ratio`` is ``measured_ms / reference_ms`` (the dense model timed next to it) or, for trials
    stored before references were, over the dense latency recorded at the start. ``error`` is
    ``predicted_ratio / measured_ratio - 1``; ``corrected_ratio`` applies the scale fitted on the *other*
    timed trials (leave-one-out, so ``corrected_error`` is an honest estimate, not a fit to itself).
    """
    frame = completed[completed["latency_measured_ms"].notna() & completed["latency_ratio"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=list(CHECK_COLUMNS))
    reference = frame["latency_reference_ms"] if "latency_reference_ms" in frame else pd.Series(np.nan, frame.index)
    if dense_seconds:
        reference = reference.fillna(dense_seconds * 1e3)
    predicted = frame["latency_ratio"].to_numpy(dtype=float)
    measured = (frame["latency_measured_ms"] / reference).to_numpy(dtype=float)
    corrected = np.empty_like(predicted)
    for i in range(len(predicted)):
        others = np.arange(len(predicted)) != i
        corrected[i] = 1 + fit_latency_scale(predicted[others], measured[others]) * (predicted[i] - 1)
    return pd.DataFrame(
        {
            "trial": frame["trial"].to_numpy(),
            "predicted_ms": frame["latency_ms"].to_numpy(),
            "measured_ms": frame["latency_measured_ms"].to_numpy(),
            "reference_ms": reference.to_numpy(dtype=float),
            "predicted_ratio": predicted,
            "measured_ratio": measured,
            "error": predicted / measured - 1,
            "corrected_ratio": corrected,
            "corrected_error": corrected / measured - 1,
            "is_pareto": frame["is_pareto"].to_numpy(),
        }
    )


def trusted_scale(check: pd.DataFrame) -> float:
    """The scale to apply to a study's predicted latencies (its targets and caps): the fit on every timed trial
    of ``check`` (:func:`latency_check_frame`) when the leave-one-out corrected errors beat the raw ones
    (median |error|), else 1.0. A few noisy checks give a scale that predicts held-out checks worse: then the
    table's own prediction stands."""
    if check.empty or not check["corrected_error"].abs().median() < check["error"].abs().median():
        return 1.0
    return fit_latency_scale(check["predicted_ratio"].to_numpy(), check["measured_ratio"].to_numpy())
