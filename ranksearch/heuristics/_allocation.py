"""Error-balanced rank allocation under a global cost budget, in the spirit of ALDS (Liebenwein et al., 2021).

Every selected layer gets the rank that keeps the *largest* relative weight error
``||W - W_r||_F / ||W||_F`` over the layers as small as possible, while the whole model's cost (MACs or
parameters for one input shape) stays within ``budget`` times the dense model's. No data and no
fine-tuning: errors come from a :class:`~ranksearch.FactorCache`, costs from each method's exact
analytic ``cost`` (MACs are multiply-accumulates; FLOPs = 2 x MACs).

The algorithm:

1. *Candidates.* Per layer, the ranks at fractions ``j / n`` (``j = 1..n``) of the method's largest rank,
   rounded up per component (``r_k = ceil(j * max_k / n)``, exact integer arithmetic). ``n`` is ``grid``,
   or the largest component of the largest rank, which gives every rank (every rank of the larger mode
   for Tucker-2). "dense" (the layer's own cost, error 0) is always a candidate. Dominated candidates
   (no cheaper and no more accurate than another) are dropped, which leaves a staircase: cost up,
   error down.
2. *Threshold.* For an error bound ``eps`` each layer takes its cheapest candidate with error <= eps. The
   model's cost never grows with ``eps``, so a binary search over the sorted distinct candidate errors
   finds the smallest feasible ``eps`` exactly. That ``eps`` is the minimal max error over *all*
   allocations on the candidate grid: one with max error ``e`` costs at least the threshold allocation at
   ``e``, per layer.
3. *Leftover* (``spend_leftover=True``, the default). What the threshold leaves of the budget is spent
   greedily: the layer with the largest error moves to its next candidate if that fits, else it is
   dropped for good (the leftover only shrinks); repeat. At the end no single layer can move to a more
   accurate candidate within the budget. The max error stays the threshold's (were every layer at it
   improved, a smaller threshold would have been feasible); the other layers' errors only go down.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral

from torch import nn

from ..attention import searchable_view
from ..cache import FactorCache
from ..config import DENSE, CompressionConfig
from ..costs import count
from ..decompositions import Decomposition, Rank, get_method
from ..errors import ConfigError, RanksearchError
from ._candidates import Candidate, staircases
from ._layers import check_finite_weights, select_layers

__all__ = ["Allocation", "LayerAllocation", "error_balanced_allocation", "error_balanced_config"]

COSTS = ("macs", "params")


@dataclass(frozen=True)
class LayerAllocation:
    """One layer's pick.

    Attributes:
        name: the layer's qualified name.
        rank: the canonical rank, or None when the layer stays dense.
        error: ``||W - W_r||_F / ||W||_F`` at that rank (0 for dense).
        cost: the layer's MACs (all its calls in one forward pass) or parameters at that rank.
        dense_cost: the same for the dense layer.
    """

    name: str
    rank: Rank | None
    error: float
    cost: int
    dense_cost: int


@dataclass(frozen=True)
class Allocation:
    """The result of :func:`error_balanced_allocation`.

    Attributes:
        config: every selected layer, ``(method, rank)`` or ``("dense", None)``.
        method: the decomposition method.
        cost: what the budget is on, ``"macs"`` or ``"params"``.
        budget: the allowed fraction of the dense model's cost.
        layers: per selected layer, in model order.
        total: the whole compressed model's cost (what :func:`ranksearch.count` reports on the applied model).
        dense_total: the dense model's cost.
    """

    config: CompressionConfig
    method: str
    cost: str
    budget: float
    layers: Mapping[str, LayerAllocation]
    total: int
    dense_total: int

    @property
    def max_error(self) -> float:
        """The largest relative layer error (0 when every layer stays dense)."""
        return max((layer.error for layer in self.layers.values()), default=0.0)

    @property
    def errors(self) -> dict[str, float]:
        """Relative error per selected layer."""
        return {name: layer.error for name, layer in self.layers.items()}

    @property
    def fraction(self) -> float:
        """The compressed model's cost as a fraction of the dense model's."""
        return self.total / self.dense_total


def error_balanced_config(
    model: nn.Module,
    budget: float,
    *,
    input_shape: Sequence[int],
    cost: str = "macs",
    method: str = "svd",
    layers: Iterable[str] | None = None,
    cache: FactorCache | None = None,
    grid: int | None = None,
    spend_leftover: bool = True,
) -> CompressionConfig:
    """The config of :func:`error_balanced_allocation` (same arguments)."""
    return error_balanced_allocation(
        model,
        budget,
        input_shape=input_shape,
        cost=cost,
        method=method,
        layers=layers,
        cache=cache,
        grid=grid,
        spend_leftover=spend_leftover,
    ).config


def error_balanced_allocation(
    model: nn.Module,
    budget: float,
    *,
    input_shape: Sequence[int],
    cost: str = "macs",
    method: str = "svd",
    layers: Iterable[str] | None = None,
    cache: FactorCache | None = None,
    grid: int | None = None,
    spend_leftover: bool = True,
) -> Allocation:
    """Per-layer ranks that minimize the largest relative layer error within a whole-model cost budget.

    Args:
        model: the dense model (not modified).
        budget: allowed fraction in ``(0, 1]`` of the dense whole model's cost; layers left out (or that
            the method does not support) keep their dense cost and count against it.
        input_shape: the model's input shape, batch included, for the MAC counts.
        cost: ``"macs"`` (multiply-accumulates of one forward pass) or ``"params"``.
        method: a registered method name (``"svd"``, ``"tucker2"``...). Methods that fit one decomposition
            per rank (``cp``, ``tt``, ``tucker2_hooi``) need ``grid``.
        layers: the layers to compress (default: every layer the method supports).
        cache: a factor cache to reuse (a private one otherwise).
        grid: number of rank fractions ``1/grid, 2/grid, ..., 1`` per layer (default: every rank).
        spend_leftover: spend the budget the threshold leaves on the largest errors first (module docs).

    Raises:
        ConfigError: a bad argument, unknown or unsupported layer.
        RanksearchError: the budget is below the smallest achievable fraction (the message says which).
    """
    decomposition, shape = _check_arguments(budget, cost, method, grid, input_shape)
    model = searchable_view(model)  # attention projections are layers
    names = select_layers(model, decomposition.name, layers)
    check_finite_weights(model, names)
    dense_total = getattr(count(model, shape), cost)
    if dense_total <= 0:
        raise RanksearchError(f"the dense model has no {cost} at input {shape}: there is nothing to budget")
    cache = FactorCache() if cache is None else cache
    dense_costs, stairs = staircases(model, shape, names, decomposition, cost, cache, grid)
    rest = dense_total - sum(dense_costs)  # the cost of everything the allocation leaves dense
    allowance = math.floor(budget * dense_total) - rest  # what the selected layers may cost together
    cheapest = sum(stair[0].cost for stair in stairs)
    if cheapest > allowance:
        raise RanksearchError(
            f"budget {budget:g} of the dense {cost} is not achievable with {decomposition.name!r} on "
            f"{len(names)} layer(s): the smallest achievable is {_round_up(rest + cheapest, dense_total):.4f} "
            "(every layer at its cheapest candidate)"
        )
    picks = _threshold_picks(stairs, allowance)
    if spend_leftover:
        picks = _spend_leftover(stairs, picks, allowance)
    chosen = {
        name: LayerAllocation(name, stair[i].rank, stair[i].error, stair[i].cost, dense)
        for name, stair, i, dense in zip(names, stairs, picks, dense_costs, strict=True)
    }
    return _allocation(chosen, decomposition.name, cost, budget, rest, dense_total)


def _allocation(
    chosen: Mapping[str, LayerAllocation], method: str, cost: str, budget: float, rest: int, dense_total: int
) -> Allocation:
    """The :class:`Allocation` of the picks ``chosen``; ``rest`` is the cost of the layers left out."""
    config = CompressionConfig(
        {name: (DENSE, None) if layer.rank is None else (method, layer.rank) for name, layer in chosen.items()}
    )
    total = rest + sum(layer.cost for layer in chosen.values())
    return Allocation(config, method, cost, float(budget), chosen, total, dense_total)


# --- arguments --------------------------------------------------------------------------------------


def _check_arguments(
    budget: object, cost: object, method: object, grid: object, input_shape: object
) -> tuple[Decomposition, tuple[int, ...]]:
    """The method and the input shape, once every argument that is not about layers is checked."""
    _check_budget(budget)
    if cost not in COSTS:
        raise ConfigError(f"unknown cost {cost!r}; expected one of {', '.join(map(repr, COSTS))}")
    return _check_method(method, grid), _check_shape(input_shape)


def _check_budget(budget: object) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ConfigError(f"budget must be a fraction of the dense model's cost in (0, 1], got {budget!r}")


def _check_method(method: object, grid: object) -> Decomposition:
    if not isinstance(method, str):
        raise ConfigError(f"method must be a registered method name, got {type(method).__name__}")
    decomposition = get_method(method)
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 1):
        raise ConfigError(f"grid must be a positive int (number of rank fractions) or None, got {grid!r}")
    if grid is None and not decomposition.nested:
        raise ConfigError(
            f"method {method!r} fits one decomposition per rank: pass grid= (e.g. grid=8) to bound the number of fits"
        )
    return decomposition


def _check_shape(input_shape: object) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) and not isinstance(input_shape, str) else None
    if not shape or not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ConfigError(f"input_shape must be a sequence of positive ints (batch included), got {input_shape!r}")
    return tuple(int(s) for s in shape)


# --- the allocation ---------------------------------------------------------------------------------


def _picks_at(negated_errors: Sequence[Sequence[float]], eps: float) -> list[int]:
    """Per layer, the index of its cheapest candidate with error <= eps (errors negated: ascending)."""
    return [bisect_left(negated, -eps) for negated in negated_errors]


def _threshold_picks(stairs: Sequence[Sequence[Candidate]], allowance: int) -> list[int]:
    """The picks at the smallest error bound whose total cost fits ``allowance`` (feasible at the largest)."""
    negated = [[-c.error for c in stair] for stair in stairs]  # ascending, for bisect

    def total(picks: list[int]) -> int:
        return sum(stair[i].cost for stair, i in zip(stairs, picks, strict=True))

    errors = sorted({c.error for stair in stairs for c in stair})
    lo, hi = 0, len(errors) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if total(_picks_at(negated, errors[mid])) <= allowance:
            hi = mid
        else:
            lo = mid + 1
    return _picks_at(negated, errors[lo])


def _spend_leftover(stairs: Sequence[Sequence[Candidate]], picks: list[int], allowance: int) -> list[int]:
    """Move the largest-error layer to its next candidate while that fits; ties go to the earlier layer."""
    picks = list(picks)
    left = allowance - sum(stair[i].cost for stair, i in zip(stairs, picks, strict=True))
    heap = [(-stairs[k][i].error, k) for k, i in enumerate(picks) if i + 1 < len(stairs[k])]
    heapq.heapify(heap)
    while heap:
        _, k = heapq.heappop(heap)
        i, stair = picks[k], stairs[k]
        step = stair[i + 1].cost - stair[i].cost
        if step > left:  # never fits later either: the leftover only shrinks
            continue
        left -= step
        picks[k] = i + 1
        if i + 2 < len(stair):
            heapq.heappush(heap, (-stair[i + 1].error, k))
    return picks


def _round_up(total: int, dense_total: int, digits: int = 4) -> float:
    """``total / dense_total`` rounded up to ``digits`` decimals such that that budget admits ``total``."""
    steps = -(-total * 10**digits // dense_total)  # ceil, in integers
    while math.floor(steps / 10**digits * dense_total) < total:  # float rounding of the product
        steps += 1
    return steps / 10**digits
