"""Measured latency: timing on the target device, the per-layer latency table, and the prediction.

No Optuna here; the evaluator uses :class:`LatencyEstimator` when a study has a latency objective.
"""

from __future__ import annotations

from ._estimator import LatencyEstimator, layer_inputs, structure_digest
from ._measure import DTYPES, LatencySettings, device_name, measure_paired, measure_seconds
from ._table import LatencyTable

__all__ = [
    "DTYPES",
    "LatencyEstimator",
    "LatencySettings",
    "LatencyTable",
    "device_name",
    "layer_inputs",
    "measure_paired",
    "measure_seconds",
    "structure_digest",
]
