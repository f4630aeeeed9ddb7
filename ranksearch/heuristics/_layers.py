"""Which layers a heuristic compresses: its ``layers=`` argument checked against the model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..config import CompressionConfig
from ..errors import ConfigError
from ..layers import compressible_layers

__all__ = ["check_finite_weights", "select_layers"]


def select_layers(model: nn.Module, method: str, layers: Iterable[str] | None) -> list[str]:
    """The names of the layers to compress with ``method`` (a registered name), in model order.

    ``layers=None``: every compressible layer that supports ``method`` (a ConfigError if there is none).
    Otherwise exactly the named ones (duplicates dropped), checked like the entries of a config: a name
    that is unknown, not a Conv2d or Linear layer, not compressible, or that ``method`` cannot handle
    raises a :class:`ConfigError` (:class:`UnsupportedLayerError` for the last two) naming the layer
    and the reason.
    """
    infos = compressible_layers(model)
    if layers is None:
        names = [name for name, info in infos.items() if method in info.methods]
        if not names:
            raise ConfigError(f"no layer of the model supports method {method!r}")
        return names
    if isinstance(layers, str):
        raise ConfigError(f"layers must be a collection of layer names, got the string {layers!r}")
    wanted = list(dict.fromkeys(layers))
    if not wanted:
        raise ConfigError("layers is empty: name at least one layer, or pass None for every supported layer")
    # Rank 1 is valid for every method on every layer it supports: only the names are checked.
    CompressionConfig({name: (method, 1) for name in wanted}).resolve(model, check_weights=False)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(wanted, key=order.__getitem__)


def check_finite_weights(model: nn.Module, names: Iterable[str]) -> None:
    """A ConfigError naming the first of the layers ``names`` whose weight has a NaN or an infinity."""
    for name in names:
        if not torch.isfinite(model.get_submodule(name).weight).all():
            raise ConfigError(f"layer {name!r}: weight has non-finite values (NaN or inf)")
