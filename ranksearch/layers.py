"""Which layers of a model can be compressed, by which methods, up to which ranks; and why not.

A *candidate* is any convolution or Linear module. It is *compressible* when at least one registered
method supports it, and *skipped* (with the reason) otherwise. Some reasons are the layer's own and
hold for every method:

- its weight is shared with another module (tied weights): replacing one copy would untie them;
- the module is registered under several names: replacing it under one name would miss the others;
- it is the output projection of an ``nn.MultiheadAttention``, which reads the weight directly and
  never calls the module;
- its weight is reparametrized (``torch.nn.utils.parametrize``), uninitialized (lazy), or not a
  floating-point tensor.

Per-method reasons (grouped convs, 1x1 kernels for CP/Tucker-2/TT...) come from each method.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from .decompositions import Rank, available_methods, get_method

__all__ = ["LayerInfo", "compressible_layers", "probe_shape", "skipped_layers"]

_CANDIDATE_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)


@dataclass(frozen=True)
class LayerInfo:
    """What ranksearch can do with one layer.

    Attributes:
        name: the module's qualified name in the model (``model.get_submodule(name)``).
        kind: the module's class name, e.g. ``"Conv2d"`` or ``"Linear"``.
        weight_shape: ``(O, I, kh, kw)`` for a Conv2d, ``(O, I)`` for a Linear.
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
    """Candidate name -> the layer's own reason to be skipped (None when there is none)."""
    names_of: dict[int, list[str]] = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        names_of[id(module)].append(name)
    owners_of: dict[int, list[str]] = defaultdict(list)
    for name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            owners_of[id(param)].append(f"{name}.{param_name}" if name else param_name)
    attention_projections = {
        f"{name}.out_proj" if name else "out_proj"
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    }

    reasons: dict[str, str | None] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _CANDIDATE_TYPES) or not name:
            continue
        reasons[name] = _own_reason(name, module, names_of, owners_of, attention_projections)
    return reasons


def _own_reason(
    name: str,
    module: nn.Module,
    names_of: Mapping[int, list[str]],
    owners_of: Mapping[int, list[str]],
    attention_projections: set[str],
) -> str | None:
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "lazy module with uninitialized parameters: run a forward pass first"
    if parametrize.is_parametrized(module):
        return "weight is reparametrized (torch.nn.utils.parametrize): remove the parametrization first"
    if isinstance(module, nn.Bilinear):
        return "Bilinear is not supported"
    if not module.weight.is_floating_point():
        return f"weight dtype {module.weight.dtype} is not floating point"
    if len(names_of[id(module)]) > 1:
        return f"module registered under several names ({', '.join(names_of[id(module)])})"
    owners = owners_of[id(module.weight)]
    if len(owners) > 1:
        return f"weight shared by several modules ({', '.join(owners)})"
    if name in attention_projections:
        return "output projection of nn.MultiheadAttention (the weight is used directly, not the module)"
    return None


def _method_reasons(module: nn.Module) -> dict[str, str | None]:
    return {m: get_method(m).unsupported_reason(module) for m in available_methods()}


def compressible_layers(model: nn.Module) -> dict[str, LayerInfo]:
    """Every layer at least one method can compress, by qualified name, in model order."""
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
    """Every convolution/Linear layer no method can compress, by qualified name, with the reason."""
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
    """The smallest valid input shape (batch 1) of a Conv or Linear layer: what its parameter count needs
    when the layer never runs in a traced forward pass."""
    if isinstance(module, nn.Linear):
        return (1, module.in_features)
    span = [d * (k - 1) + 1 for k, d in zip(module.kernel_size, module.dilation, strict=True)]
    return (1, module.in_channels, *span)
