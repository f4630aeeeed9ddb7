"""The search space: per compressible layer, the allowed methods and each method's rank grid.

Ranks are fractions of the layer's largest meaningful rank (``Decomposition.max_rank``), rounded to a
multiple (``rank_multiple``, e.g. 8 or 16 for tensor cores) and deduplicated. For tuple ranks
(Tucker-2, TT) the fraction applies to every component. ``"dense"`` (keep the layer) is a method like
the others, so the search can always decide that a layer is best left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import nn

from .config import DENSE, CompressionConfig
from .decompositions import Rank, available_methods, get_method
from .errors import ConfigError
from .layers import compressible_layers

__all__ = ["LayerChoices", "SearchSpace"]

DEFAULT_FRACTIONS = (0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.625, 0.75)


def _round_rank(fraction: float, top: int, multiple: int) -> int:
    """``fraction * top`` rounded to the nearest multiple of ``multiple``, within ``[1, top]``."""
    raw = fraction * top
    if multiple > 1 and top >= multiple:
        return min(top, max(multiple, multiple * round(raw / multiple)))
    return min(top, max(1, math.ceil(raw)))


@dataclass(frozen=True)
class LayerChoices:
    """What the search may pick for one layer.

    Attributes:
        name: the layer's qualified name.
        methods: allowed methods, ``"dense"`` included when allowed.
        fractions: the rank fractions offered for every method.
        ranks: per method, the canonical rank for each fraction (same order as ``fractions``).
    """

    name: str
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    ranks: Mapping[str, tuple[Rank, ...]]

    def rank(self, method: str, fraction: float) -> Rank | None:
        """The rank a (method, fraction) choice stands for (None for ``"dense"``)."""
        if method == DENSE:
            return None
        return self.ranks[method][self.fractions.index(fraction)]


@dataclass(frozen=True)
class SearchSpace:
    """Which layers the search touches and what it may do to them.

    Attributes:
        methods: methods the search may choose per layer; include ``"dense"`` to allow keeping layers.
        rank_fractions: kept-rank fractions of each layer's maximum rank, in (0, 1].
        rank_multiple: ranks are rounded to multiples of this (1 = no rounding).
        include: shell-style patterns of layer names to search (default: all compressible layers).
        exclude: patterns of layer names to leave dense.
        overrides: pattern -> allowed methods for matching layers (first matching pattern wins).
    """

    methods: tuple[str, ...] = (DENSE, "svd", "tucker2", "cp", "tt")
    rank_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    rank_multiple: int = 1
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("methods", "rank_fractions", "include", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "overrides", {k: tuple(v) for k, v in dict(self.overrides).items()})
        valid = (DENSE, *available_methods())
        for method in (*self.methods, *(m for ms in self.overrides.values() for m in ms)):
            if method not in valid:
                raise ConfigError(f"unknown method {method!r} in the search space; available: {', '.join(valid)}")
        if not self.methods:
            raise ConfigError("the search space needs at least one method")
        if not self.rank_fractions:
            raise ConfigError("rank_fractions must not be empty")
        for fraction in self.rank_fractions:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise ConfigError(f"rank fractions must be numbers in (0, 1], got {fraction!r}")
        if len(set(self.rank_fractions)) != len(self.rank_fractions):
            raise ConfigError(f"rank_fractions has duplicates: {list(self.rank_fractions)}")
        if isinstance(self.rank_multiple, bool) or not isinstance(self.rank_multiple, int) or self.rank_multiple < 1:
            raise ConfigError(f"rank_multiple must be an int >= 1, got {self.rank_multiple!r}")

    def _allowed(self, name: str) -> tuple[str, ...]:
        for pattern, methods in self.overrides.items():
            if fnmatchcase(name, pattern):
                return methods
        return self.methods

    def layers(self, model: nn.Module) -> dict[str, LayerChoices]:
        """The choices for every searched layer of ``model`` (layers that can only stay dense are left out)."""
        choices = {}
        for name, info in compressible_layers(model).items():
            if not any(fnmatchcase(name, p) for p in self.include) or any(fnmatchcase(name, p) for p in self.exclude):
                continue
            module = model.get_submodule(name)
            methods = tuple(m for m in self._allowed(name) if m == DENSE or m in info.methods)
            if not methods or methods == (DENSE,):  # nothing to choose
                continue
            ranks = {m: self._grid(module, m) for m in methods if m != DENSE}
            choices[name] = LayerChoices(name, methods, tuple(self.rank_fractions), ranks)
        if not choices:
            raise ConfigError(
                "no layer to search: the model has no compressible layer matching include/exclude "
                f"(compressible: {', '.join(compressible_layers(model)) or 'none'})"
            )
        return choices

    def _grid(self, module: nn.Module, method_name: str) -> tuple[Rank, ...]:
        method = get_method(method_name)
        top = method.max_rank(module)
        grid = []
        for fraction in self.rank_fractions:
            if isinstance(top, int):
                rank: Rank = _round_rank(fraction, top, self.rank_multiple)
            else:
                rank = tuple(_round_rank(fraction, t, self.rank_multiple) for t in top)
            grid.append(method.canonical_rank(module, rank))
        return tuple(grid)

    def uniform_picks(self, layers: Mapping[str, LayerChoices], methods: tuple[str, ...], fraction: float) -> dict:
        """Params of a uniform config: every layer gets the first of ``methods`` it allows, at the
        offered fraction nearest to ``fraction``; layers allowing none stay dense (or their first method).
        """
        nearest = min(self.rank_fractions, key=lambda f: abs(f - fraction))
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
