"""Per-layer sensitivity curves: how much the loss grows when one layer alone is compressed.

For every searched layer, method and grid level, the model with only that layer compressed is scored by
the proxy (:mod:`ranksearch.screening`: BatchNorm recalibration, a few validation batches, no fine-tune).
These are the curves AIMET's greedy ratio selection and ASVD build: about layers x methods x levels cheap
evaluations, from which :mod:`ranksearch.allocation` picks per-layer choices for a budget. Levels whose
rank repeats an earlier level's are measured once, and by default every other level is measured and the
rest interpolated (halving the cost; the curves are smooth in log cost).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd

from .config import DENSE, CompressionConfig
from .errors import RanksearchError
from .screening import Screen
from .space import LayerChoices

__all__ = ["Sensitivity", "SensitivityPoint", "measure_sensitivity"]


@dataclass(frozen=True)
class SensitivityPoint:
    """One layer compressed alone: its ``method`` and grid ``fraction``, the layer's cost as a fraction of
    its dense cost, and the proxy's ``loss`` and ``metric`` of the whole model."""

    layer: str
    method: str
    fraction: float
    cost: float
    loss: float
    metric: float
    measured: bool = True
    """False where the loss is interpolated between measured levels."""


@dataclass
class Sensitivity:
    """The curves of one model: the dense proxy, a point per (layer, method, fraction), and the time taken."""

    dense_loss: float
    dense_metric: float
    points: list[SensitivityPoint] = field(default_factory=list)
    seconds: float = 0.0
    probes: int = 0
    """Proxy evaluations run (levels sharing a rank are measured once)."""

    def increase(self) -> dict[tuple[str, str, float], float]:
        """``{(layer, method, fraction): loss increase over dense}``, clipped at 0 (a proxy can be noisy)."""
        return {(p.layer, p.method, p.fraction): max(0.0, p.loss - self.dense_loss) for p in self.points}

    def methods(self) -> tuple[str, ...]:
        """The methods measured, in first-seen order."""
        return tuple(dict.fromkeys(p.method for p in self.points))

    def frame(self) -> pd.DataFrame:
        """One row per point: layer, method, fraction, cost, loss, metric, loss_increase."""
        frame = pd.DataFrame([asdict(p) for p in self.points])
        if not frame.empty:
            frame["loss_increase"] = (frame["loss"] - self.dense_loss).clip(lower=0)
        return frame

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (what the study stores)."""
        return {
            "dense_loss": self.dense_loss,
            "dense_metric": self.dense_metric,
            "seconds": self.seconds,
            "probes": self.probes,
            "points": [[p.layer, p.method, p.fraction, p.cost, p.loss, p.metric, p.measured] for p in self.points],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Sensitivity:
        """The inverse of :meth:`to_dict`."""
        try:
            points = [SensitivityPoint(str(a), str(b), float(c), float(d), float(e), float(f), bool(g))
                      for a, b, c, d, e, f, g in data["points"]]  # fmt: skip
            return cls(float(data["dense_loss"]), float(data["dense_metric"]), points,
                       float(data.get("seconds", 0.0)), int(data.get("probes", len(points))))  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise RanksearchError(f"stored sensitivity curves are malformed: {error}") from None


def measure_sensitivity(
    screen: Screen,
    layers: Mapping[str, LayerChoices],
    *,
    methods: Sequence[str] | None = None,
    stride: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Sensitivity:
    """Score each layer compressed alone under every allowed method (``methods`` limits which).

    Of each (layer, method)'s distinct ranks on the grid, every ``stride``-th is measured (the cheapest
    and the costliest always); the loss in between is interpolated linearly in log cost (points with
    ``measured`` False). ``progress(done, total)`` is called after each proxy evaluation.
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise RanksearchError(f"sensitivity stride must be an int >= 1, got {stride!r}")
    start = time.perf_counter()
    curves = [
        (name, method)
        for name, layer in layers.items()
        for method in layer.methods
        if method != DENSE and (methods is None or method in methods)
    ]
    plans = {curve: _plan(layers[curve[0]], curve[1], stride) for curve in curves}
    total = sum(len(measure) for _, measure in plans.values())
    result = Sensitivity(screen.dense.loss, screen.dense.metric)
    for (name, method), (ranks, measure) in plans.items():
        layer = layers[name]
        scores = {}
        for rank in measure:
            score = screen.score(CompressionConfig({name: (method, rank)}))
            scores[rank] = (score.loss, score.metric)
            result.probes += 1
            if progress is not None:
                progress(result.probes, total)
        for fraction in layer.fractions:
            rank = layer.rank(method, fraction)
            loss, metric = scores.get(rank) or _interpolate(ranks, scores, rank)
            cost = layer.cost(method, fraction)
            result.points.append(SensitivityPoint(name, method, fraction, cost, loss, metric, rank in scores))
    result.seconds = time.perf_counter() - start
    return result


def _plan(layer: LayerChoices, method: str, stride: int) -> tuple[dict, list]:
    """``({rank: cost}, ranks to measure)`` of one curve: distinct ranks by cost, every ``stride``-th measured."""
    ranks = {}
    for fraction in layer.fractions:
        ranks.setdefault(layer.rank(method, fraction), layer.cost(method, fraction))
    ordered = sorted(ranks, key=ranks.get)
    measure = ordered[::stride]
    if ordered[-1] not in measure:
        measure.append(ordered[-1])
    return ranks, measure


def _interpolate(costs: Mapping, scores: Mapping, rank: object) -> tuple[float, float]:
    """Loss and metric at ``rank`` by linear interpolation in log cost between the measured neighbours."""
    x = math.log(costs[rank])
    below = max((r for r in scores if costs[r] <= costs[rank]), key=costs.get)
    above = min((r for r in scores if costs[r] >= costs[rank]), key=costs.get)
    x0, x1 = math.log(costs[below]), math.log(costs[above])
    w = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
    return tuple((1 - w) * a + w * b for a, b in zip(scores[below], scores[above], strict=True))
