"""The search space: per compressible layer, the allowed methods and each method's grid of ranks.

Two grids (``SearchSpace.grid``):

- ``"cost"`` (the default): the grid's fractions are of the *layer's dense cost* (MACs at the model's
  input shape; parameters when no input shape is given). For each method and level the rank is the
  largest whose factorized layer costs at most that fraction, so levels mean the same saving for every
  method, and a method whose smallest rank is not cheaper than the dense layer is not offered for it.
  No choice on this grid costs more than the layer it replaces.
- ``"rank"``: fractions of the layer's largest meaningful rank (``Decomposition.max_rank``). A CP or TT
  rank at half its maximum can cost several times the dense layer; kept for users who want rank grids.

Ranks are rounded to a multiple (``rank_multiple``, e.g. 8 or 16 for tensor cores); for tuple ranks
(Tucker-2, TT) the fraction applies to every component. ``"dense"`` (keep the layer) is a method like
the others, so the search can always decide that a layer is best left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import nn

from .attention import searchable_view
from .config import DENSE, CompressionConfig
from .costs import count
from .decompositions import Rank, available_methods, get_method
from .errors import ConfigError
from .latency import layer_inputs
from .layers import compressible_layers, probe_shape
from .tracing import is_shape

__all__ = ["GRIDS", "LayerChoices", "SearchSpace"]

DEFAULT_FRACTIONS = (0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.625, 0.75)
"""Kept-rank fractions of the ``"rank"`` grid."""
DEFAULT_COST_FRACTIONS = (0.03, 0.05, 0.08, 0.12, 0.18, 0.25, 0.35, 0.5, 0.7)
"""Cost fractions (of the layer's dense MACs) of the ``"cost"`` grid: denser where budgets are tight."""
GRIDS = ("cost", "rank")


def _round_rank(fraction: float, top: int, multiple: int) -> int:
    """``fraction * top`` rounded to the nearest multiple of ``multiple``, within ``[1, top]``."""
    raw = fraction * top
    if multiple > 1 and top >= multiple:
        return min(top, max(multiple, multiple * round(raw / multiple)))
    return min(top, max(1, math.ceil(raw - 1e-9)))  # 0.07 * 100 is 7.000000000000001: still 7


@dataclass(frozen=True)
class LayerChoices:
    """What the search may pick for one layer.

    Attributes:
        name: the layer's qualified name.
        methods: allowed methods, ``"dense"`` included when allowed.
        fractions: the grid's fractions offered for every method (of the rank or of the cost, as ``grid``).
        ranks: per method, the canonical rank for each fraction (same order as ``fractions``).
        costs: per method, each rank's cost as a fraction of the dense layer's (MACs, or params without
            an input shape); empty when not computed.
        grid: ``"cost"`` or ``"rank"``: what ``fractions`` are fractions of.
    """

    name: str
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    ranks: Mapping[str, tuple[Rank, ...]]
    costs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    grid: str = "rank"

    def rank(self, method: str, fraction: float) -> Rank | None:
        """The rank a (method, fraction) choice stands for (None for ``"dense"``)."""
        if method == DENSE:
            return None
        return self.ranks[method][self.fractions.index(fraction)]

    def cost(self, method: str, fraction: float | None) -> float:
        """The cost of a (method, fraction) choice as a fraction of the dense layer's (1.0 for dense)."""
        if method == DENSE:
            return 1.0
        return self.costs[method][self.fractions.index(fraction)]


@dataclass(frozen=True)
class SearchSpace:
    """Which layers the search touches and what it may do to them.

    Attributes:
        methods: methods the search may choose per layer; include ``"dense"`` to allow keeping layers.
        grid: ``"cost"`` (levels of the layer's dense cost) or ``"rank"`` (of its max rank); default:
            ``"rank"`` when ``rank_fractions`` are given, else ``"cost"``.
        rank_fractions: kept-rank fractions of each layer's maximum rank, in (0, 1] (the ``"rank"`` grid;
            default :data:`DEFAULT_FRACTIONS`).
        cost_fractions: fractions of each layer's dense cost, in (0, 1) (the ``"cost"`` grid).
        rank_multiple: ranks are rounded to multiples of this (1 = no rounding).
        include: shell-style patterns of layer names to search (default: all compressible layers).
        exclude: patterns of layer names to leave dense.
        overrides: pattern -> allowed methods for matching layers (first matching pattern wins).
    """

    methods: tuple[str, ...] = (DENSE, "svd", "tucker2", "cp", "tt")
    rank_fractions: tuple[float, ...] | None = None
    cost_fractions: tuple[float, ...] = DEFAULT_COST_FRACTIONS
    grid: str | None = None
    rank_multiple: int = 1
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grid is None:
            object.__setattr__(self, "grid", "cost" if self.rank_fractions is None else "rank")
        if self.rank_fractions is None:
            object.__setattr__(self, "rank_fractions", DEFAULT_FRACTIONS)
        for name in ("methods", "rank_fractions", "cost_fractions", "include", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "overrides", {k: tuple(v) for k, v in dict(self.overrides).items()})
        valid = (DENSE, *available_methods())
        for method in (*self.methods, *(m for ms in self.overrides.values() for m in ms)):
            if method not in valid:
                raise ConfigError(f"unknown method {method!r} in the search space; available: {', '.join(valid)}")
        if not self.methods:
            raise ConfigError("the search space needs at least one method")
        if self.grid not in GRIDS:
            raise ConfigError(f"grid must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        _check_fractions("rank_fractions", self.rank_fractions, upper_inclusive=True)
        _check_fractions("cost_fractions", self.cost_fractions, upper_inclusive=False)
        if isinstance(self.rank_multiple, bool) or not isinstance(self.rank_multiple, int) or self.rank_multiple < 1:
            raise ConfigError(f"rank_multiple must be an int >= 1, got {self.rank_multiple!r}")

    @property
    def fractions(self) -> tuple[float, ...]:
        """The active grid's fractions: ``cost_fractions`` or ``rank_fractions``."""
        return self.cost_fractions if self.grid == "cost" else self.rank_fractions

    def _allowed(self, name: str) -> tuple[str, ...]:
        for pattern, methods in self.overrides.items():
            if fnmatchcase(name, pattern):
                return methods
        return self.methods

    def layers(self, model: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, LayerChoices]:
        """The choices for every searched layer of ``model`` (layers that can only stay dense are left out).

        ``input_shape`` (with batch, e.g. ``(1, 3, 32, 32)``, or an example input: a tensor, tuple or dict of
        tensors) makes costs MACs; without it they are params. With it, layers the forward pass never calls as
        modules (their weight read directly, as Swin's attention does, or train-only heads) are left out:
        compressing them saves no MACs.
        """
        model = searchable_view(model)  # attention projections are layers
        if input_shape is not None and is_shape(input_shape):
            input_shape = tuple(input_shape)
        inputs = layer_inputs(model, input_shape) if input_shape is not None else {}
        choices = {}
        for name, info in compressible_layers(model).items():
            if not any(fnmatchcase(name, p) for p in self.include) or any(fnmatchcase(name, p) for p in self.exclude):
                continue
            if input_shape is not None and name not in inputs:
                continue
            module = model.get_submodule(name)
            shape = inputs.get(name) or probe_shape(module)
            methods = [m for m in self._allowed(name) if m == DENSE or m in info.methods]
            ranks, costs = {}, {}
            for method in [m for m in methods if m != DENSE]:
                grid = self._grid(module, method, shape, use_macs=name in inputs)
                if grid is None:  # never cheaper than the dense layer
                    methods.remove(method)
                    continue
                ranks[method], costs[method] = grid
            if not methods or methods == [DENSE]:  # nothing to choose
                continue
            choices[name] = LayerChoices(name, tuple(methods), self.fractions, ranks, costs, self.grid)
        if not choices:
            raise ConfigError(
                "no layer to search: the model has no compressible layer matching include/exclude "
                f"(compressible: {', '.join(compressible_layers(model)) or 'none'})"
            )
        return choices

    def _grid(
        self, module: nn.Module, method_name: str, shape: tuple[int, ...], *, use_macs: bool
    ) -> tuple[tuple[Rank, ...], tuple[float, ...]] | None:
        """Per grid fraction, the method's rank and that rank's cost fraction; None where the method is
        offered nowhere (on the cost grid: its smallest rank is not cheaper than the dense layer)."""
        method = get_method(method_name)
        kind = "macs" if use_macs else "params"
        dense = getattr(count(nn.Sequential(module), shape), kind)

        def at(fraction: float) -> Rank:
            top = method.max_rank(module)
            if isinstance(top, int):
                return method.canonical_rank(module, _round_rank(fraction, top, self.rank_multiple))
            return method.canonical_rank(module, tuple(_round_rank(fraction, t, self.rank_multiple) for t in top))

        def cost(rank: Rank) -> float:
            return getattr(method.cost(module, rank, shape), kind) / dense

        if self.grid == "rank":
            ranks = tuple(at(f) for f in self.rank_fractions)
            return ranks, tuple(cost(r) for r in ranks)
        if cost(at(0.0)) >= 1.0:
            return None
        ranks = tuple(at(_largest_fraction_within(lambda f: cost(at(f)), level)) for level in self.cost_fractions)
        return ranks, tuple(cost(r) for r in ranks)

    def uniform_picks(self, layers: Mapping[str, LayerChoices], methods: tuple[str, ...], fraction: float) -> dict:
        """Params of a uniform config: every layer gets the first of ``methods`` it allows, at the
        offered fraction nearest to ``fraction``; layers allowing none stay dense (or their first method).
        """
        nearest = min(self.fractions, key=lambda f: abs(f - fraction))
        params: dict[str, object] = {}
        for name, layer in layers.items():
            method = next((m for m in methods if m in layer.methods), DENSE if DENSE in layer.methods else None)
            method = method or layer.methods[0]
            params[name] = (method, None if method == DENSE else nearest)
        return params

    @staticmethod
    def snap(layers: Mapping[str, LayerChoices], config: CompressionConfig) -> dict[str, tuple[str, float | None]]:
        """The grid picks nearest to ``config``: per searched layer its method and the offered fraction whose
        rank is closest (in log of the rank's product) to the config's; layers the config leaves out, or
        whose method the layer does not allow, stay dense (or take their first method).

        Baselines produce arbitrary ranks; warm-starting a search needs them on the search's grid.
        """
        picks: dict[str, tuple[str, float | None]] = {}
        for name, layer in layers.items():
            method, rank = config.get(name, (DENSE, None))
            if method not in layer.methods:
                method, rank = (DENSE, None) if DENSE in layer.methods else (layer.methods[0], None)
            if method == DENSE:
                picks[name] = (DENSE, None)
                continue
            size = math.prod(rank) if isinstance(rank, tuple) else (rank or 1)
            grid = layer.ranks[method]
            distance = [abs(math.log(math.prod(r) if isinstance(r, tuple) else r) - math.log(size)) for r in grid]
            picks[name] = (method, layer.fractions[distance.index(min(distance))])
        return picks

    @staticmethod
    def to_config(
        layers: Mapping[str, LayerChoices], picks: Mapping[str, tuple[str, float | None]]
    ) -> CompressionConfig:
        """A CompressionConfig from ``{layer: (method, fraction)}`` picks."""
        return CompressionConfig(
            {name: (method, layers[name].rank(method, fraction)) for name, (method, fraction) in picks.items()}
        )


def _largest_fraction_within(cost: Callable[[float], float], level: float, steps: int = 30) -> float:
    """The largest kept-rank fraction whose cost is at most ``level`` (bisection; cost grows with the
    fraction); 0 (the smallest rank) when even that costs more."""
    low, high = 0.0, 1.0
    if cost(high) <= level:
        return high
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if cost(middle) <= level else (low, middle)
    return low


def _check_fractions(name: str, fractions: tuple[float, ...], *, upper_inclusive: bool) -> None:
    if not fractions:
        raise ConfigError(f"{name} must not be empty")
    for fraction in fractions:
        numeric = not isinstance(fraction, bool) and isinstance(fraction, (int, float))
        if not numeric or not (0 < fraction <= 1 if upper_inclusive else 0 < fraction < 1):
            interval = "(0, 1]" if upper_inclusive else "(0, 1)"
            raise ConfigError(f"{name.replace('_', ' ')} must be numbers in {interval}, got {fraction!r}")
    if len(set(fractions)) != len(fractions):
        raise ConfigError(f"{name} has duplicates: {list(fractions)}")
