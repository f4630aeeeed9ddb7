"""CompressionConfig: which method and rank each layer gets, with an exact JSON round trip.

The JSON form, also what ``ranksearch export`` writes::

    {
      "format": "ranksearch.compression-config",
      "version": 1,
      "layers": {
        "conv1": {"method": "tucker2", "rank": [16, 8]},
        "fc": {"method": "svd", "rank": 32},
        "head": {"method": "dense", "rank": null}
      }
    }

Layers not listed stay dense; ``"dense"`` may also be listed explicitly (a search records every
layer). Tuple ranks are JSON lists and come back as tuples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

import torch
from torch import nn

from .attention import searchable_view
from .decompositions import Decomposition, Rank, get_method
from .errors import ConfigError, UnsupportedLayerError
from .layers import _layer_reasons
from .record import DENSE  # re-exported here: configs name the kept layers with it

__all__ = ["DENSE", "CompressionConfig", "ResolvedLayer"]


FORMAT = "ranksearch.compression-config"
VERSION = 1

Entry = tuple[str, Rank | None]


@dataclass(frozen=True)
class ResolvedLayer:
    """One config entry checked against a model: the module, its method and its canonical rank."""

    name: str
    module: nn.Module
    method: Decomposition
    rank: Rank


def _normalize_rank(name: str, method: str, rank: object) -> Rank | None:
    if method == DENSE:
        if rank is not None:
            raise ConfigError(f"layer {name!r}: method 'dense' takes no rank, got {rank!r}")
        return None
    if isinstance(rank, int) and not isinstance(rank, bool):
        return rank
    if isinstance(rank, (list, tuple)) and rank and all(isinstance(r, int) and not isinstance(r, bool) for r in rank):
        return tuple(rank)
    raise ConfigError(f"layer {name!r}: rank must be an int or a list of ints, got {rank!r}")


def _normalize_entry(name: object, value: object) -> Entry:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"layer names must be non-empty strings, got {name!r}")
    if isinstance(value, str) and value == DENSE:
        value = (DENSE, None)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"layer {name!r}: expected a (method, rank) pair, got {value!r}")
    method, rank = value
    if method != DENSE:
        try:
            get_method(method)
        except ConfigError as error:
            raise ConfigError(f"layer {name!r}: {error} or 'dense'") from None
    return method, _normalize_rank(name, method, rank)


class CompressionConfig(Mapping[str, Entry]):
    """An immutable mapping ``layer name -> (method, rank)``.

    Args:
        layers: ``{name: (method, rank)}``; ``rank`` is an int or a tuple of ints, as the method
            expects (see each method's docs), or None for ``"dense"``.

    Example::

        cfg = rs.CompressionConfig({"conv1": ("tucker2", (16, 8)), "fc": ("svd", 32)})
        assert rs.CompressionConfig.from_json(cfg.to_json()) == cfg
    """

    def __init__(self, layers: Mapping[str, Entry] | None = None) -> None:
        if layers is not None and not isinstance(layers, Mapping):
            raise ConfigError(
                f"a CompressionConfig is built from a mapping of layer names, got {type(layers).__name__}"
            )
        self._layers: dict[str, Entry] = {name: _normalize_entry(name, value) for name, value in (layers or {}).items()}

    # --- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Entry:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressionConfig) and self._layers == other._layers

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._layers.items())))

    def __repr__(self) -> str:
        return f"CompressionConfig({self._layers!r})"

    def compressed(self) -> dict[str, tuple[str, Rank]]:
        """The entries that change their layer (every method but ``"dense"``)."""
        return {name: entry for name, entry in self._layers.items() if entry[0] != DENSE}

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """The JSON-ready form (see the module docstring)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "layers": {
                name: {"method": method, "rank": list(rank) if isinstance(rank, tuple) else rank}
                for name, (method, rank) in self._layers.items()
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Serialize to JSON; :meth:`from_json` gives back an equal config."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: object) -> CompressionConfig:
        """Parse the form :meth:`to_dict` writes; every problem is a :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a compression config must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"format", "version", "layers"}
        if unknown:
            raise ConfigError(f"unknown key(s) in compression config: {', '.join(sorted(unknown))}")
        if data.get("format", FORMAT) != FORMAT:
            raise ConfigError(f"not a compression config: format is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version", VERSION) != VERSION:
            raise ConfigError(f"unsupported compression config version {data.get('version')!r} (this is {VERSION})")
        if "layers" not in data:
            raise ConfigError("compression config has no 'layers' object")
        layers = data["layers"]
        if not isinstance(layers, dict):
            raise ConfigError(f"'layers' must be an object of layer names, got {type(layers).__name__}")
        entries = {}
        for name, spec in layers.items():
            if not isinstance(spec, dict) or "method" not in spec:
                raise ConfigError(f"layer {name!r}: expected an object with 'method' and 'rank', got {spec!r}")
            extra = set(spec) - {"method", "rank"}
            if extra:
                raise ConfigError(f"layer {name!r}: unknown key(s) {', '.join(sorted(extra))}")
            entries[name] = (spec["method"], spec.get("rank"))
        return cls(entries)

    @classmethod
    def from_json(cls, text: str | bytes) -> CompressionConfig:
        """Parse JSON text written by :meth:`to_json` (or by hand)."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"malformed compression config JSON: {error}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the JSON form to ``path``."""
        try:
            Path(path).write_text(self.to_json() + "\n")
        except OSError as error:
            raise ConfigError(f"cannot write compression config {str(path)!r}: {error.strerror}") from None

    @classmethod
    def load(cls, path: str | Path) -> CompressionConfig:
        """Read a config written by :meth:`save`."""
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"cannot read compression config {str(path)!r}: {error.strerror}") from None
        return cls.from_json(text)

    # --- against a model ----------------------------------------------------------------------
    def resolve(self, model: nn.Module, *, check_weights: bool = True) -> list[ResolvedLayer]:
        """Check every compressed entry against ``model``; errors name the layer and the problem.

        ``check_weights=False`` skips the finite-weights check, for callers that only need the
        structure (loading a saved model onto an architecture whose weights do not matter).

        Names are resolved on :func:`~ranksearch.attention.searchable_view`, so an
        ``nn.MultiheadAttention``'s ``<attn>.q_proj`` (``k_proj``, ``v_proj``, ``out_proj``) resolves to a
        Linear sharing the attention's weights; :func:`~ranksearch.compress.replace_module` unpacks the
        attention when such a layer is replaced.
        """
        model = searchable_view(model)
        own_reasons = _layer_reasons(model)
        resolved = []
        for name, (method_name, rank) in self.compressed().items():
            if name not in own_reasons:
                raise ConfigError(_unknown_layer_message(name, model, own_reasons))
            if own_reasons[name] is not None:
                raise UnsupportedLayerError(f"layer {name!r} cannot be compressed: {own_reasons[name]}")
            module = model.get_submodule(name)
            method = get_method(method_name)
            reason = method.unsupported_reason(module)
            if reason is not None:
                raise UnsupportedLayerError(f"layer {name!r}: method {method.name!r} does not support it: {reason}")
            try:
                canonical = method.canonical_rank(module, rank)
            except ConfigError as error:
                raise ConfigError(f"layer {name!r}: {method.name} {error}") from None
            if check_weights and not torch.isfinite(module.weight).all():
                raise ConfigError(f"layer {name!r}: weight has non-finite values (NaN or inf)")
            resolved.append(ResolvedLayer(name, module, method, canonical))
        return resolved


def _unknown_layer_message(name: str, model: nn.Module, candidates: Mapping[str, object]) -> str:
    known = dict(model.named_modules())
    if name in known:
        return f"layer {name!r} is a {type(known[name]).__name__}, not a Conv2d or Linear layer"
    close = get_close_matches(name, list(candidates), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown layer {name!r}: the model has no such module{hint}"
