"""Saving and loading a compressed model: its weights plus the config that shapes it.

A saved file (``torch.save`` of plain data, loadable with ``weights_only=True``) holds the format tag,
the :class:`CompressionConfig`, the compressed model's ``state_dict``, the shapes of each factorized
layer's factors (so loading builds the layers without decomposing anything), a signature of the base
model (its parameter and buffer names and shapes, to refuse a different base model with a clear
message) and, for a built-in model, its name and options (so it can be rebuilt without ``base_model``).
"""

from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .attention import unpack_attention
from .cache import FactorCache
from .compress import replace_module
from .config import CompressionConfig, ResolvedLayer
from .decompositions import InputStatistics, get_method
from .errors import RanksearchError

__all__ = ["FORMAT", "base_signature", "load", "save"]

FORMAT = "ranksearch.compressed-model"
VERSION = 1


def base_signature(model: nn.Module) -> dict[str, list[int]]:
    """Name -> shape of every parameter and buffer of ``model``: what a saved file must be loaded onto."""
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def _cpu_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """``model.state_dict()`` on the CPU, with its ``_metadata`` (modules' state versions, which some modules'
    loaders read, e.g. torchvision's MNASNet)."""
    state = model.state_dict()
    cpu = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    cpu._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    return cpu


def save(
    path: str | Path,
    compressed: nn.Module,
    config: CompressionConfig,
    base_model: nn.Module,
    *,
    builtin: Mapping[str, object] | None = None,
    metadata: Mapping[str, object] | None = None,
    cache: FactorCache | None = None,
    calibration: Mapping[str, InputStatistics] | None = None,
) -> Path:
    """Save ``compressed`` (``apply(base_model, config)``, possibly fine-tuned) so :func:`load` rebuilds it.

    Args:
        path: the file to write (folders created).
        compressed: the compressed model whose weights are saved.
        config: the config that made it from ``base_model``.
        base_model: the uncompressed model (only its structure is recorded, not its weights).
        builtin: ``{"name": ..., "options": {...}}`` of a built-in model (:func:`ranksearch.models.build_model`),
            so the file loads without ``base_model``.
        metadata: JSON-ready facts to keep with the weights (study, trial, accuracies...).
        cache: a warm :class:`FactorCache` (the evaluator's) to read factor shapes without decomposing again.
        calibration: the statistics data-aware layers were fitted to, so their factors come from that warm cache
            too; without them, a data-aware layer's shapes are read from its plain twin's factors (the same shapes).
    """
    cache = cache or FactorCache()
    builtin, metadata = _plain("builtin", builtin), _plain("metadata", metadata or {})
    factor_shapes = {
        layer.name: [list(f.shape) for f in _factors(cache, layer, calibration)] for layer in config.resolve(base_model)
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "factor_shapes": factor_shapes,
        "base_signature": base_signature(base_model),
        "builtin": builtin or None,
        "metadata": metadata,
        "state_dict": _cpu_state(compressed),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:  # atomic: an interrupted save never leaves a truncated model file behind
        torch.save(payload, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _plain(what: str, value: Mapping[str, object] | None) -> dict[str, object] | None:
    """``value`` as plain JSON data (what ``torch.load(weights_only=True)`` reads back), or a clear error."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(dict(value), allow_nan=True))
    except (TypeError, ValueError) as error:
        raise RanksearchError(
            f"{what} must hold plain JSON values (str, int, float, bool, lists, dicts): {error}"
        ) from None


REQUIRED = ("config", "factor_shapes", "base_signature", "state_dict")


def read(path: str | Path) -> dict[str, object]:
    """The raw payload of a saved file, checked to be a ranksearch compressed model."""
    path = Path(path)
    if not path.is_file():
        raise RanksearchError(f"model file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RanksearchError(f"{str(path)!r} is not a readable ranksearch model file: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RanksearchError(f"{str(path)!r} is not a ranksearch compressed model (written by `ranksearch export`)")
    if payload.get("version") != VERSION:
        raise RanksearchError(
            f"{str(path)!r} has format version {payload.get('version')}; this ranksearch reads {VERSION}"
        )
    missing = [key for key in REQUIRED if not isinstance(payload.get(key), dict)]
    if missing:
        raise RanksearchError(f"{str(path)!r} is damaged: it lacks {', '.join(missing)}")
    return payload


def _check_base(path: Path, base_model: nn.Module, expected: Mapping[str, list[int]]) -> None:
    actual = base_signature(base_model)
    missing = [name for name in expected if name not in actual]
    extra = [name for name in actual if name not in expected]
    changed = [name for name in expected if name in actual and list(actual[name]) != list(expected[name])]
    if missing or extra or changed:
        if changed:
            name = changed[0]
            detail = f"{name!r} has shape {tuple(actual[name])} here but {tuple(expected[name])} in the file"
        elif missing:
            detail = f"the file's base model has {missing[0]!r}, this one does not"
        else:
            detail = f"this model has {extra[0]!r}, the file's base model does not"
        raise RanksearchError(
            f"{str(path)!r} was made from a different base model: {detail} "
            f"({len(changed)} shapes differ, {len(missing)} missing, {len(extra)} extra)"
        )


def load(path: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """The compressed model saved in ``path``, in eval mode on the CPU.

    Args:
        path: a file written by :func:`save` (``ranksearch export`` writes ``model.pt``).
        base_model: the uncompressed model's architecture (its weights do not matter; it is not
            modified). Optional for built-in models, which are rebuilt from the file.
    """
    path = Path(path)
    payload = read(path)
    if base_model is None:
        builtin = payload.get("builtin")
        if not builtin:
            raise RanksearchError(
                f"{str(path)!r} was made from a user model: pass its architecture, load(path, base_model=MyModel())"
            )
        from .models import build_model

        base_model = build_model(builtin["name"], **builtin.get("options", {}))
    if not isinstance(base_model, nn.Module):
        raise RanksearchError(f"base_model must be a torch.nn.Module, got {type(base_model).__name__}")
    if base_signature(base_model) != payload["base_signature"]:  # saved from a study: attention unpacked
        unpacked = unpack_attention(base_model)
        if base_signature(unpacked) == payload["base_signature"]:
            base_model = unpacked
    _check_base(path, base_model, payload["base_signature"])
    config = CompressionConfig.from_dict(payload["config"])
    shapes = payload["factor_shapes"]
    model = copy.deepcopy(base_model).cpu()
    for layer in config.resolve(model, check_weights=False):
        if layer.name not in shapes:
            raise RanksearchError(f"{str(path)!r} is damaged: no factor shapes for layer {layer.name!r}")
        weight = layer.module.weight
        factors = tuple(torch.zeros(shape, dtype=weight.dtype) for shape in shapes[layer.name])
        replace_module(model, layer.name, layer.method.build(layer.module, factors))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise RanksearchError(f"the weights in {str(path)!r} do not fit the rebuilt model: {error}") from None
    return model.eval()


def _factors(cache: FactorCache, layer: ResolvedLayer, calibration: Mapping[str, InputStatistics] | None) -> tuple:
    """The layer's factors for their shapes: a data-aware layer's own where its statistics are given, else its plain
    twin's (the same shapes, no calibration data needed)."""
    method = layer.method
    if not method.data_aware:
        return cache.factors(layer.module, method, layer.rank)
    if calibration is not None and layer.name in calibration:
        return cache.factors(layer.module, method, layer.rank, calibration[layer.name])
    return cache.factors(layer.module, get_method(method.plain), layer.rank)
