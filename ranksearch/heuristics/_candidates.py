"""The candidates of one layer for the error-balanced allocation (step 1 of its algorithm).

A candidate is a rank (or dense) with the layer's cost at that rank and its relative weight error; a
layer's *staircase* keeps the non-dominated ones, cost strictly up and error strictly down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..cache import FactorCache
from ..costs import module_macs
from ..decompositions import Decomposition, Rank
from ..layers import probe_shape
from ..tracing import ModuleCall, trace_calls

__all__ = ["Candidate", "staircases"]


@dataclass(frozen=True)
class Candidate:
    """One choice for a layer: ``rank`` (None: dense), its ``cost`` (MACs or params) and relative ``error``."""

    rank: Rank | None
    cost: int
    error: float


def staircases(
    model: nn.Module,
    input_shape: tuple[int, ...],
    names: Sequence[str],
    method: Decomposition,
    cost: str,
    cache: FactorCache,
    grid: int | None,
) -> tuple[list[int], list[list[Candidate]]]:
    """Per named layer, in order: its dense cost and its staircase (:func:`_staircase`).

    MACs are summed over every call of the layer in one forward pass on zeros of ``input_shape``.
    """
    calls: dict[str, list[ModuleCall]] = {name: [] for name in names}
    for call in trace_calls(model, input_shape, names):
        calls[call.name].append(call)
    modules = [model.get_submodule(name) for name in names]
    dense_costs = [_dense_cost(module, calls[name], cost) for name, module in zip(names, modules, strict=True)]
    stairs = [
        _staircase(module, method, calls[name], cost, cache, grid, dense)
        for name, module, dense in zip(names, modules, dense_costs, strict=True)
    ]
    return dense_costs, stairs


def _dense_cost(module: nn.Module, calls: Sequence[ModuleCall], cost: str) -> int:
    if cost == "params":
        return sum(p.numel() for p in module.parameters())
    return sum(module_macs(module, call.input_shape, call.output_shape) for call in calls)


def _factorized_cost(
    module: nn.Module, method: Decomposition, rank: Rank, calls: Sequence[ModuleCall], cost: str
) -> int:
    if cost == "params":
        shape = calls[0].input_shape if calls else probe_shape(module)
        return method.cost(module, rank, shape).params
    return sum(method.cost(module, rank, call.input_shape).macs for call in calls)


def _candidate_ranks(module: nn.Module, method: Decomposition, grid: int | None = None) -> list[Rank]:
    """Canonical ranks at fractions ``j / n`` of the largest rank, rounded up per component, deduplicated.

    ``n`` is ``grid``, or the largest component of the largest rank (every rank of that component).
    """
    top = method.max_rank(module)
    tops = (top,) if isinstance(top, int) else tuple(top)
    steps = grid if grid is not None else max(tops)
    ranks: dict[Rank, None] = {}
    for j in range(1, steps + 1):
        raw = tuple(max(1, -(-j * t // steps)) for t in tops)  # ceil(j * t / steps), in integers
        ranks[method.canonical_rank(module, raw[0] if isinstance(top, int) else raw)] = None
    return list(ranks)


def _staircase(
    module: nn.Module,
    method: Decomposition,
    calls: Sequence[ModuleCall],
    cost: str,
    cache: FactorCache,
    grid: int | None,
    dense_cost: int,
) -> list[Candidate]:
    """The non-dominated candidates of one layer: cost strictly up, error strictly down, dense last or dropped."""
    candidates = [
        Candidate(rank, _factorized_cost(module, method, rank, calls, cost), cache.relative_error(module, method, rank))
        for rank in _candidate_ranks(module, method, grid)
    ]
    candidates.append(Candidate(None, dense_cost, 0.0))
    stair: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.cost, c.error)):
        if not stair or candidate.error < stair[-1].error:
            stair.append(candidate)
    return stair
