"""The one exception family ranksearch raises for bad input.

Every message names what is wrong (the layer, the key, the method) and, where there is a short
list of valid values, lists them. Catch :class:`RanksearchError` to handle them all.
"""

from __future__ import annotations

__all__ = ["ConfigError", "RanksearchError", "UnsupportedLayerError"]


class RanksearchError(ValueError):
    """Base class of every error ranksearch raises for input it cannot use."""


class ConfigError(RanksearchError):
    """A compression config is malformed or does not fit the model (unknown layer, bad rank...)."""


class UnsupportedLayerError(ConfigError):
    """A method was asked to compress a layer it cannot handle (the message says why)."""
