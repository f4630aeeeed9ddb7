"""A search's settings, checked and defaulted: the space against its calibration data, and the deployment
settings (latency, memory) that its objectives and targets need."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..calibration import Calibration
from ..decompositions import get_method
from ..errors import RanksearchError
from ..evaluator import EvaluatorSettings
from ..latency import LatencySettings
from ..memory import MemorySettings
from ..record import DENSE
from ..space import SearchSpace

__all__ = ["checked_space", "deployment_settings"]


def deployment_settings(
    objectives: Sequence[str],
    targets: Mapping[str, object],
    latency: LatencySettings | None,
    memory: MemorySettings | None,
    evaluator: EvaluatorSettings | None,
) -> tuple[LatencySettings | None, MemorySettings | None]:
    """``(latency, memory)`` settings: those given, else defaults where an objective or a target needs them.

    Latency defaults to float32, batch 1 on the evaluator's device. Memory is counted where latency is timed
    (same device, dtype and batch: both describe the deployment), else float32, batch 1 on the evaluator's device.
    """
    device = (evaluator or EvaluatorSettings()).device
    if latency is None and ("latency" in objectives or "latency" in targets):
        latency = LatencySettings(device=device)
    if memory is None and ("memory" in objectives or "memory" in targets):
        memory = MemorySettings.like(latency) if latency is not None else MemorySettings(device=device)
    return latency, memory


def checked_space(
    space: SearchSpace, settings: EvaluatorSettings | None, calibration: Calibration | None
) -> SearchSpace:
    """``space``, after checking that its data-aware methods have calibration data (say how to give it)."""
    listed = {*space.methods, *(m for methods in space.overrides.values() for m in methods)}
    aware = sorted(m for m in listed if m != DENSE and get_method(m).data_aware)
    if aware and calibration is None and not (settings and settings.calibration_batches):
        raise RanksearchError(
            f"the space's data-aware methods ({', '.join(aware)}) need calibration data: set "
            "EvaluatorSettings(calibration_batches=N) (study file: [calibration] batches = N) or pass "
            "calibration=ranksearch.calibrate(model, loader)"
        )
    return space
