"""The uniform baseline: every layer keeps the same fraction of its rank, with one method.

Given a MACs (or params) target instead of a fraction, the fraction is found by bisection on the exact
analytic cost of the factorized layers, so the config lands on the target from below.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

from torch import nn

from ..attention import searchable_view
from ..config import CompressionConfig
from ..costs import count
from ..decompositions import get_method
from ..errors import RanksearchError
from ..latency import layer_inputs
from ..tracing import is_shape
from ._layers import select_layers

__all__ = ["uniform_config"]


def _rank(module: nn.Module, method: str, fraction: float) -> object:
    top = get_method(method).max_rank(module)
    if isinstance(top, int):
        return get_method(method).canonical_rank(module, max(1, math.ceil(fraction * top)))
    return get_method(method).canonical_rank(module, tuple(max(1, math.ceil(fraction * t)) for t in top))


def uniform_config(
    model: nn.Module,
    *,
    fraction: float | None = None,
    cost_fraction: float | None = None,
    cost: str = "macs",
    input_shape: Sequence[int] | None = None,
    method: str = "svd",
    layers: Iterable[str] | None = None,
) -> CompressionConfig:
    """Every layer (that supports ``method``, or those in ``layers``) at the same kept-rank fraction.

    Args:
        model: the dense model.
        fraction: kept-rank fraction in (0, 1] of each layer's maximum rank (rounded up, at least 1).
        cost_fraction: instead of ``fraction``: the whole model's MACs (or params) as a fraction of dense;
            the largest uniform fraction whose model stays within it (needs ``input_shape`` for MACs).
        cost: ``"macs"`` or ``"params"`` for ``cost_fraction``.
        input_shape: model input shape with batch, e.g. ``(1, 3, 32, 32)``.
        method: the decomposition every layer gets.
        layers: restrict to these layers (checked as in a config: unknown or unsupported ones are errors).
    """
    get_method(method)  # a clear error for an unknown method
    if (fraction is None) == (cost_fraction is None):
        raise RanksearchError("give exactly one of fraction (kept rank) or cost_fraction (of the dense cost)")
    model = searchable_view(model)  # attention projections are layers
    names = select_layers(model, method, layers)
    modules = {name: model.get_submodule(name) for name in names}
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise RanksearchError(f"fraction must be a number in (0, 1], got {fraction!r}")
        return CompressionConfig({n: (method, _rank(m, method, fraction)) for n, m in modules.items()})
    return _for_cost(model, modules, method, cost_fraction, cost, input_shape)


def _for_cost(
    model: nn.Module,
    modules: dict[str, nn.Module],
    method: str,
    target: float,
    cost: str,
    input_shape: Sequence[int] | None,
) -> CompressionConfig:
    if cost not in ("macs", "params"):
        raise RanksearchError(f"cost must be 'macs' or 'params', got {cost!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise RanksearchError(f"cost_fraction must be a number in (0, 1], got {target!r}")
    if input_shape is None:
        raise RanksearchError("a cost target needs the model's input_shape, e.g. (1, 3, 32, 32)")
    dense = count(model, input_shape)
    inputs = layer_inputs(model, tuple(input_shape) if is_shape(input_shape) else input_shape)
    if cost == "macs" and (uncalled := [n for n in modules if n not in inputs]):
        warnings.warn(
            f"uniform_config leaves {len(uncalled)} layer(s) dense: the forward pass never calls them as modules "
            f"(their weight is read directly, or they run in training only), so compressing them saves no MACs: "
            f"{', '.join(uncalled[:5])}{' ...' if len(uncalled) > 5 else ''}",
            stacklevel=3,
        )
        modules = {n: m for n, m in modules.items() if n in inputs}
    dense_total = dense.macs if cost == "macs" else dense.params
    own = {n: getattr(count(nn.Sequential(m), inputs[n]), cost) for n, m in modules.items()}  # dense layers
    rest = dense_total - sum(own.values())  # everything the config leaves alone

    def total(fraction: float) -> int:
        method_ = get_method(method)
        return rest + sum(
            getattr(method_.cost(m, _rank(m, method, fraction), inputs[n]), cost) for n, m in modules.items()
        )

    if total(1e-9) > target * dense_total:
        smallest = total(1e-9) / dense_total
        raise RanksearchError(
            f"a uniform {method} config cannot reach {cost} {target:g} of dense; the least is {smallest:.3f}"
        )
    low, high = 0.0, 1.0
    for _ in range(40):  # bisection on the fraction: cost is monotone in it
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) <= target * dense_total else (low, middle)
    fraction = max(low, 1e-9)
    return CompressionConfig({n: (method, _rank(m, method, fraction)) for n, m in modules.items()})
