"""Which layers of a model can be compressed, by which methods, up to which ranks; and why not.

A *candidate* is any convolution, Linear or Bilinear module, Hugging Face's ``Conv1D`` (GPT-2's
projections, recognized by duck typing), and each projection of an ``nn.MultiheadAttention``. It is
*compressible* when at least one registered method supports it, and *skipped* (with the reason)
otherwise. Some reasons are the layer's own and hold for every method:

- its weight is shared with another module (tied weights): replacing one copy would untie them;
- the module is registered under several names: replacing it under one name would miss the others;
- it is a projection of an ``nn.MultiheadAttention`` that cannot be unpacked (see below);
- its weight is reparametrized (``torch.nn.utils.parametrize``), uninitialized (lazy), or not a
  floating-point tensor.

Attention: ``nn.MultiheadAttention`` runs none of its projections as a module, so layers are listed on
:func:`~ranksearch.attention.searchable_view`, where each one is unpacked into ``<attn>.q_proj``,
``k_proj``, ``v_proj`` and ``out_proj`` Linear layers; ``apply`` unpacks it the same way in its copy.
Per-method reasons (grouped convs, 1x1 kernels for CP/Tucker-2/TT...) come from each method.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from .attention import PROJECTIONS, searchable_view, unpack_blockers
from .decompositions import Rank, available_methods, get_method, is_hf_conv1d

__all__ = ["LayerInfo", "compressible_layers", "probe_shape", "skipped_layers"]

_CANDIDATE_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)


def _is_candidate(module: nn.Module) -> bool:
    return isinstance(module, _CANDIDATE_TYPES) or (type(module).__name__ == "Conv1D" and hasattr(module, "weight"))


@dataclass(frozen=True)
class LayerInfo:
    """What ranksearch can do with one layer.

    Attributes:
        name: the module's qualified name in the model (``model.get_submodule(name)``).
        kind: the module's class name, e.g. ``"Conv2d"`` or ``"Linear"``.
        weight_shape: the weight as stored: ``(O, I/groups, kh, kw)`` for a Conv2d, ``(O, I/groups, k)`` for a
            Conv1d, ``(O, I)`` for a Linear, ``(I, O)`` for Hugging Face's Conv1D.
        methods: names of the methods that support the layer.
        max_ranks: largest meaningful rank per supported method.
        unsupported: reason per registered method that does not support the layer.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    methods: tuple[str, ...]
    max_ranks: Mapping[str, Rank]
    unsupported: Mapping[str, str]


def _layer_reasons(model: nn.Module) -> dict[str, str | None]:
    """Candidate name -> the layer's own reason to be skipped (None when there is none), in model order.

    ``model`` is the model as searched (:func:`~ranksearch.attention.searchable_view`): attention that
    can be unpacked already is; the projections of attention that cannot are listed with the reason.
    """
    names_of: dict[int, list[str]] = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        names_of[id(module)].append(name)
    owners_of: dict[int, list[str]] = defaultdict(list)
    for name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            owners_of[id(param)].append(f"{name}.{param_name}" if name else param_name)
    packed = unpack_blockers(model)

    reasons: dict[str, str | None] = {}
    for name, module in model.named_modules():
        if name in packed:
            for projection in PROJECTIONS:
                full = f"{name}.{projection}" if name else projection
                reasons[full] = (
                    f"projection of nn.MultiheadAttention {name!r}, which cannot be unpacked: {packed[name]}"
                )
        if _is_candidate(module) and name and name not in reasons:
            reasons[name] = _own_reason(module, names_of, owners_of)
    return reasons


def _own_reason(module: nn.Module, names_of: Mapping[int, list[str]], owners_of: Mapping[int, list[str]]) -> str | None:
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "lazy module with uninitialized parameters: run a forward pass first"
    if parametrize.is_parametrized(module):
        return "weight is reparametrized (torch.nn.utils.parametrize): remove the parametrization first"
    if isinstance(module, nn.Bilinear):
        return "Bilinear is not supported"
    if type(module).__name__ == "Conv1D" and not is_hf_conv1d(module):
        return "a Conv1D without Hugging Face's layout (int nf, weight (nx, nf), bias (nf,)) is not supported"
    if not module.weight.is_floating_point():
        return f"weight dtype {module.weight.dtype} is not floating point"
    if len(names_of[id(module)]) > 1:
        return f"module registered under several names ({', '.join(names_of[id(module)])})"
    owners = owners_of[id(module.weight)]
    if len(owners) > 1:
        return f"weight shared by several modules ({', '.join(owners)})"
    return None


def _method_reasons(module: nn.Module) -> dict[str, str | None]:
    return {m: get_method(m).unsupported_reason(module) for m in available_methods()}


def compressible_layers(model: nn.Module) -> dict[str, LayerInfo]:
    """Every layer at least one method can compress, by qualified name, in model order.

    Names are those of :func:`~ranksearch.attention.searchable_view`: an ``nn.MultiheadAttention``'s
    projections are ``<attn>.q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``.
    """
    model = searchable_view(model)
    layers = {}
    for name, own in _layer_reasons(model).items():
        if own is not None:
            continue
        module = model.get_submodule(name)
        by_method = _method_reasons(module)
        methods = tuple(m for m, reason in by_method.items() if reason is None)
        if not methods:
            continue
        layers[name] = LayerInfo(
            name=name,
            kind=type(module).__name__,
            weight_shape=tuple(module.weight.shape),
            methods=methods,
            max_ranks={m: get_method(m).max_rank(module) for m in methods},
            unsupported={m: reason for m, reason in by_method.items() if reason is not None},
        )
    return layers


def skipped_layers(model: nn.Module) -> dict[str, str]:
    """Every candidate layer no method can compress, by qualified name, with the reason."""
    model = searchable_view(model)
    skipped = {}
    for name, own in _layer_reasons(model).items():
        if own is not None:
            skipped[name] = own
            continue
        by_method = _method_reasons(model.get_submodule(name))
        if all(reason is not None for reason in by_method.values()):
            distinct = dict.fromkeys(by_method.values())
            skipped[name] = (
                next(iter(distinct)) if len(distinct) == 1 else "; ".join(f"{m}: {r}" for m, r in by_method.items())
            )
    return skipped


def probe_shape(module: nn.Module) -> tuple[int, ...]:
    """The smallest valid input shape (batch 1) of a Conv or Linear-like layer: what its parameter count needs
    when the layer never runs in a traced forward pass."""
    if isinstance(module, nn.Linear):
        return (1, module.in_features)
    if is_hf_conv1d(module):
        return (1, module.weight.shape[0])
    span = [d * (k - 1) + 1 for k, d in zip(module.kernel_size, module.dilation, strict=True)]
    return (1, module.in_channels, *span)
