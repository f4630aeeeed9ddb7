"""apply(model, config): a compressed copy of a model; the user's model is never modified.

Attention: a projection of an ``nn.MultiheadAttention`` (``<attn>.q_proj``, ``k_proj``, ``v_proj``,
``out_proj``) is replaced after the attention is unpacked into an
:class:`~ranksearch.attention.UnpackedMultiheadAttention` (in the copy; attention left untouched by the
config stays packed). Around every replaced layer, torch's encoder fast path is kept off
(:func:`~ranksearch.attention.turn_off_fast_paths`): it would run the dense weights, so the compressed
model computes with its factors in eval mode as in training. The same happens when
:func:`ranksearch.load` rebuilds a saved model, since both go through :func:`replace_module`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from torch import nn

from .attention import turn_off_fast_paths, unpack_in_place
from .cache import FactorCache
from .config import CompressionConfig, ResolvedLayer
from .decompositions import InputStatistics
from .errors import ConfigError, RanksearchError

__all__ = ["apply", "apply_resolved", "replace_module"]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (in place).

    A projection of an ``nn.MultiheadAttention`` unpacks that attention first (in ``model``); encoder
    layers above ``name`` leave torch's fast path (see the module docs).
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):  # it never calls its projections: unpack it first
        unpack_in_place(model, [parent_name])
        parent = model.get_submodule(parent_name)
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
    turn_off_fast_paths(model, name)


def apply(
    model: nn.Module,
    config: CompressionConfig,
    *,
    cache: FactorCache | None = None,
    calibration: Mapping[str, InputStatistics] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with every layer in ``config`` replaced by its factorized module.

    Args:
        model: any ``nn.Module``; it is deep-copied and left untouched.
        config: which method and rank each layer gets; layers not listed stay dense.
        cache: a :class:`FactorCache` to reuse decompositions across calls (a private one otherwise).
        calibration: the input statistics of ``model``'s layers (:func:`ranksearch.calibrate`), needed by
            data-aware methods (``svd_whiten``, ``tucker2_whiten``, ``cp_refit``, ``tt_refit``).

    The copy keeps each replaced layer's device, dtype, bias and train/eval mode. Errors name the
    layer: unknown name, unsupported method, rank out of range, non-finite weight.
    """
    if not isinstance(config, CompressionConfig):
        raise RanksearchError(f"config must be a CompressionConfig, got {type(config).__name__}")
    return apply_resolved(model, config.resolve(model), cache=cache, calibration=calibration)


def apply_resolved(
    model: nn.Module,
    resolved: Sequence[ResolvedLayer],
    *,
    cache: FactorCache | None = None,
    calibration: Mapping[str, InputStatistics] | None = None,
) -> nn.Module:
    """:func:`apply` for entries already checked by :meth:`CompressionConfig.resolve` against ``model``.

    For callers that also need the resolved layers (the evaluator, the demo): the config is checked once.
    """
    cache = FactorCache() if cache is None else cache
    replacements = {}
    for layer in resolved:  # decompose from the user's model: cache keys are weight contents
        try:
            statistics = None
            if layer.method.data_aware and calibration is not None:
                if layer.name not in calibration:
                    raise ConfigError(
                        f"method {layer.method.name!r} is data-aware and the calibration has no statistics for it"
                    )
                statistics = calibration[layer.name]
            factors = cache.factors(layer.module, layer.method, layer.rank, statistics)
        except RanksearchError as error:
            raise type(error)(f"layer {layer.name!r}: {error}") from None
        replacement = layer.method.build(layer.module, factors)
        replacement.train(layer.module.training)
        replacements[layer.name] = replacement
    compressed = copy.deepcopy(model)
    for name, replacement in replacements.items():
        replace_module(compressed, name, replacement)
    return compressed
