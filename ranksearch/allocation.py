"""Per-layer choices for a budget from sensitivity curves: a multiple-choice knapsack.

Each layer has options (dense, or a method at a grid level) with a cost (MACs or params, absolute) and a
penalty (its sensitivity: the proxy loss increase when that layer alone is compressed so). Assuming
penalties add up, the best config under a budget minimises the summed penalty subject to the summed
cost; Lagrangian relaxation solves it for the convex hull of each layer's options (per layer, argmin of
``penalty + lambda * cost``, with ``lambda`` bisected to meet the budget, as BALF, LC and ALDS do with
their error curves), and a greedy pass then spends what budget is left on the upgrades that remove the
most penalty per unit of cost.

Knobs (:class:`Knobs`) reshape the penalties so that a search can correct the additive model: a
preference per method (penalties times ``exp(2 * preference)``) and a depth tilt (penalties of early
layers times ``exp(-tilt)``, of late layers ``exp(tilt)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from .config import DENSE, CompressionConfig
from .costs import count
from .decompositions import get_method
from .errors import RanksearchError
from .latency import layer_inputs
from .layers import probe_shape
from .sensitivity import Sensitivity
from .space import LayerChoices, SearchSpace

__all__ = ["Allocator", "Knobs", "OptionCosts", "option_costs"]

Pick = tuple[str, float | None]
COST_KINDS = ("macs", "params")


@dataclass(frozen=True)
class Knobs:
    """What one allocation is asked for: ``budget`` (the model's cost as a fraction of dense), per-method
    ``preferences`` in [-1, 1] (negative favours the method) and ``depth_tilt`` in [-1, 1] (positive
    spends more on late layers... by making them costlier to compress)."""

    budget: float
    preferences: Mapping[str, float] = field(default_factory=dict)
    depth_tilt: float = 0.0


@dataclass(frozen=True)
class OptionCosts:
    """Absolute cost of every option of every layer, and the model's cost outside the searched layers."""

    kind: str
    options: Mapping[str, Mapping[Pick, int]]
    fixed: int
    dense_total: int


def option_costs(
    model: nn.Module, layers: Mapping[str, LayerChoices], input_shape: tuple[int, ...], kind: str = "macs"
) -> OptionCosts:
    """The cost (``"macs"`` of one forward at ``input_shape``, or ``"params"``) of every layer option."""
    if kind not in COST_KINDS:
        raise RanksearchError(f"allocation cost must be one of {', '.join(COST_KINDS)}, got {kind!r}")
    inputs = layer_inputs(model, input_shape)
    dense_total = getattr(count(model, input_shape), kind)
    options: dict[str, dict[Pick, int]] = {}
    for name, layer in layers.items():
        module = model.get_submodule(name)
        shape = inputs.get(name) or probe_shape(module)
        own = {(DENSE, None): getattr(count(nn.Sequential(module), shape), kind)}
        for method in layer.methods:
            if method != DENSE:
                for fraction in layer.fractions:
                    rank = layer.rank(method, fraction)
                    own[(method, fraction)] = getattr(get_method(method).cost(module, rank, shape), kind)
        options[name] = own
    fixed = dense_total - sum(o[(DENSE, None)] for o in options.values())
    return OptionCosts(kind, options, fixed, dense_total)


class Allocator:
    """Turns knobs into a config: the cheapest-penalty choices whose total cost meets the budget.

    Options without a sensitivity point (a method the curves did not measure) are not offered; dense
    is offered where the layer allows it.
    """

    def __init__(self, layers: Mapping[str, LayerChoices], sensitivity: Sensitivity, costs: OptionCosts) -> None:
        self.layers, self.costs = layers, costs
        increase = sensitivity.increase()
        # A tie-break that spends budget where the proxy sees no loss at all: a tiny penalty per unit of
        # cost saved, so that of two harmless options the costlier (closer to dense) one wins.
        tie = 1e-4 * max(sensitivity.dense_loss, 1e-3)
        self.options: dict[str, list[tuple[Pick, int, float]]] = {}
        for name, layer in layers.items():
            own = [((DENSE, None), costs.options[name][(DENSE, None)], 0.0)] if DENSE in layer.methods else []
            dense_cost = costs.options[name][(DENSE, None)]
            for (method, fraction), cost in costs.options[name].items():
                if method != DENSE and (name, method, fraction) in increase:
                    penalty = increase[(name, method, fraction)] + tie * (1 - cost / dense_cost)
                    own.append(((method, fraction), cost, penalty))
            if not own:
                raise RanksearchError(f"layer {name!r} has no measured option to allocate from")
            self.options[name] = own
        self.position = {name: i / max(1, len(layers) - 1) for i, name in enumerate(layers)}

    def cheapest(self) -> float:
        """The least cost any allocation reaches, as a fraction of dense."""
        total = self.costs.fixed + sum(min(c for _, c, _ in own) for own in self.options.values())
        return total / self.costs.dense_total

    def picks(self, knobs: Knobs) -> dict[str, Pick]:
        """Per layer (method, fraction): the Lagrangian solution for ``knobs.budget``, greedily topped up.

        A budget below :meth:`cheapest` gets the cheapest choices."""
        weighted = self._weighted(knobs)
        limit = knobs.budget * self.costs.dense_total - self.costs.fixed
        low, high = 1e-12, 1e6  # lambda: penalty per unit of cost (costs scaled to fractions of dense)
        best = self._solve(weighted, high)
        if self._cost(best) > limit:
            return {name: pick for name, (pick, _, _) in best.items()}
        for _ in range(60):
            middle = math.sqrt(low * high)
            solution = self._solve(weighted, middle)
            if self._cost(solution) <= limit:
                best, high = solution, middle
            else:
                low = middle
        self._top_up(weighted, best, limit)
        self._exchange(weighted, best, limit)
        return {name: pick for name, (pick, _, _) in best.items()}

    def config(self, knobs: Knobs) -> CompressionConfig:
        """The config of :meth:`picks`."""
        return SearchSpace.to_config(self.layers, self.picks(knobs))

    def cost(self, picks: Mapping[str, Pick]) -> float:
        """The model cost of ``picks`` as a fraction of dense."""
        own = sum(self.costs.options[name][pick] for name, pick in picks.items())
        return (self.costs.fixed + own) / self.costs.dense_total

    def _weighted(self, knobs: Knobs) -> dict[str, list[tuple[Pick, int, float]]]:
        weighted = {}
        for name, own in self.options.items():
            tilt = math.exp(knobs.depth_tilt * (2 * self.position[name] - 1))
            weighted[name] = [
                (pick, cost, penalty * tilt * math.exp(2 * knobs.preferences.get(pick[0], 0.0)))
                for pick, cost, penalty in own
            ]
        return weighted

    def _solve(self, weighted: Mapping[str, list], lam: float) -> dict[str, tuple[Pick, int, float]]:
        scale = lam / self.costs.dense_total
        return {name: min(own, key=lambda o: (o[2] + scale * o[1], o[1])) for name, own in weighted.items()}

    @staticmethod
    def _cost(solution: Mapping[str, tuple[Pick, int, float]]) -> int:
        return sum(cost for _, cost, _ in solution.values())

    def _top_up(self, weighted: Mapping[str, list], solution: dict[str, tuple], limit: float) -> None:
        """Spend the slack left under ``limit``: repeatedly take the upgrade with the largest penalty drop per
        unit of added cost that still fits."""
        while True:
            slack = limit - self._cost(solution)
            best, best_rate = None, 0.0
            for name, own in weighted.items():
                _, cost, penalty = solution[name]
                for option in own:
                    extra, drop = option[1] - cost, penalty - option[2]
                    if drop > 0 and extra <= slack:
                        rate = drop / max(extra, 1)
                        if rate > best_rate:
                            best, best_rate = (name, option), rate
            if best is None:
                return
            solution[best[0]] = best[1]

    def _exchange(
        self, weighted: Mapping[str, list], solution: dict[str, tuple], limit: float, rounds: int = 20
    ) -> None:
        """Improve on the relaxation where layers' options are not convex: repeatedly apply the best pair of
        moves (one layer to an option with less penalty, another to a cheaper one that pays for it) that
        lowers the summed penalty within ``limit``; then spend what is left again."""
        for _ in range(rounds):
            slack = limit - self._cost(solution)
            best, best_gain = None, 1e-12
            for up, own_up in weighted.items():
                _, cost_up, penalty_up = solution[up]
                for option in own_up:
                    extra, drop = option[1] - cost_up, penalty_up - option[2]
                    if drop <= best_gain or extra <= slack:  # nothing to gain, or the top-up's job
                        continue
                    for down, own_down in weighted.items():
                        if down == up:
                            continue
                        _, cost_down, penalty_down = solution[down]
                        for cheaper in own_down:
                            freed = cost_down - cheaper[1]
                            gain = drop - (cheaper[2] - penalty_down)
                            if freed > 0 and extra - freed <= slack and gain > best_gain:
                                best, best_gain = ((up, option), (down, cheaper)), gain
            if best is None:
                return
            for name, option in best:
                solution[name] = option
            self._top_up(weighted, solution, limit)
