"""The layers methods read and the layers they build: weights in a common layout, new Conv/Linear
layers on the original's device and dtype, and the dense weight a chain of built layers equals.

Layer kinds: ``nn.Linear``; Hugging Face's ``Conv1D`` (GPT-2's projections: a Linear whose weight is
stored transposed, ``(nx, nf)`` = (in, out), recognized by duck typing since ``transformers`` is an
optional dependency of the user's, not ours); ``nn.Conv1d`` and ``nn.Conv2d``, grouped or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = [
    "batch_and_spatial",
    "bias_of",
    "bias_params",
    "chain_weight",
    "conv_unsupported_reason",
    "is_hf_conv1d",
    "is_linear_like",
    "linear_dims",
    "matrix_of",
    "new_conv",
    "new_linear",
    "to_layout",
    "weight_of",
]

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d}


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for a Hugging Face ``transformers.pytorch_utils.Conv1D``: ``y = x @ weight + bias`` with
    ``weight`` of shape ``(nx, nf)``, ``bias`` of shape ``(nf,)`` and an int attribute ``nf``.

    Recognized by its class name and those attributes (duck typing: transformers is not imported).
    """
    if type(module).__name__ != "Conv1D":
        return False
    weight, bias, nf = getattr(module, "weight", None), getattr(module, "bias", None), getattr(module, "nf", None)
    return (
        isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and isinstance(nf, int)
        and weight.shape[1] == nf
        and (bias is None or (isinstance(bias, torch.Tensor) and tuple(bias.shape) == (nf,)))
    )


def is_linear_like(module: nn.Module) -> bool:
    """A Linear layer: ``nn.Linear`` or Hugging Face's ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a Linear-like layer."""
    if is_hf_conv1d(module):
        nx, nf = module.weight.shape
        return nf, nx
    return module.out_features, module.in_features


def weight_of(module: nn.Module) -> torch.Tensor:
    """The layer's weight, detached, in a dtype that decompositions are accurate in.

    Half-precision weights are factorized in float32 and the factors cast back in :func:`new_conv`.
    """
    weight = module.weight.detach()
    if weight.dtype in (torch.float16, torch.bfloat16):
        weight = weight.float()
    return weight


def matrix_of(module: nn.Module) -> torch.Tensor:
    """A Linear-like layer's weight as an ``(out, in)`` matrix (:func:`weight_of`, transposed for Conv1D)."""
    weight = weight_of(module)
    return weight.T if is_hf_conv1d(module) else weight


def to_layout(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """An ``(out, in)`` matrix in ``module``'s own weight layout (the inverse of :func:`matrix_of`)."""
    return matrix.T if is_hf_conv1d(module) else matrix


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """The layer's bias, detached, or None."""
    return None if module.bias is None else module.bias.detach()


def bias_params(module: nn.Module) -> int:
    """Number of bias parameters the replacement keeps (the original's, unchanged)."""
    return 0 if module.bias is None else module.bias.numel()


def batch_and_spatial(input_shape: Sequence[int], nd: int) -> tuple[int, tuple[int, ...]]:
    """Split an ``(N, C, *spatial)`` (or unbatched ``(C, *spatial)``) input shape of an ``nd``-D conv."""
    shape = tuple(input_shape)
    if len(shape) == nd + 1:
        shape = (1, *shape)
    if len(shape) != nd + 2:
        axes = "L" if nd == 1 else "H, W"
        raise ConfigError(f"a Conv{nd}d input shape must be (N, C, {axes}), got {tuple(input_shape)}")
    return shape[0], shape[2:]


def new_conv(
    reference: nn.Module,
    weight: torch.Tensor,
    *,
    stride: Sequence[int] | None = None,
    padding: str | Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    groups: int = 1,
    bias: torch.Tensor | None = None,
    spatial: bool = False,
) -> nn.Conv1d | nn.Conv2d:
    """A Conv1d/Conv2d (by ``weight``'s rank) holding a copy of ``weight`` (shape ``(out, in / groups, *k)``).

    Device and dtype come from ``reference``. ``spatial=True`` marks a layer that sees the
    reference's padding, so it also takes the reference's padding mode; 1x1 layers never pad.
    Stride, padding and dilation default to 1, 0 and 1 on every axis.
    """
    out_channels, in_per_group, *kernel = weight.shape
    ones = (1,) * len(kernel)
    conv = _CONVS[len(kernel)](
        in_per_group * groups,
        out_channels,
        tuple(kernel),
        stride=tuple(stride or ones),
        padding=(0,) * len(kernel) if padding is None else padding,
        dilation=tuple(dilation or ones),
        groups=groups,
        bias=bias is not None,
        padding_mode=reference.padding_mode if spatial else "zeros",
        device=reference.weight.device,
        dtype=reference.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def new_linear(reference: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A Linear holding a copy of ``weight`` (shape ``(out, in)``), on the reference's device/dtype."""
    out_features, in_features = weight.shape
    linear = nn.Linear(
        in_features,
        out_features,
        bias=bias is not None,
        device=reference.weight.device,
        dtype=reference.weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def conv_unsupported_reason(module: nn.Module, *, needs_spatial_kernel: bool, grouped: bool = False) -> str | None:
    """The reasons shared by the convolution methods: Conv1d and Conv2d, ungrouped unless ``grouped``."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed convolution is not supported"
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        kind = "Conv1D (Hugging Face: a Linear layer)" if is_hf_conv1d(module) else type(module).__name__
        return f"{kind} is not supported (Conv1d and Conv2d only)"
    if module.groups != 1 and not grouped:
        return f"grouped convolution (groups={module.groups}) is not supported"
    if needs_spatial_kernel and prod(module.kernel_size) == 1:
        kernel = "1x1 kernel" if len(module.kernel_size) == 2 else "kernel size 1"
        return f"{kernel}: nothing to factorize spatially (use svd)"
    return None


def grouped_reason(module: nn.Module, params_at_rank_one: int) -> str | None:
    """Why a per-group factorization of a grouped conv cannot pay: even rank 1 in every group holds as
    many weights as the dense kernel (depthwise convolutions, for one). None when it can pay."""
    if module.groups == 1 or params_at_rank_one - bias_params(module) < module.weight.numel():
        return None
    per_group = module.weight.shape[1]
    return (
        f"grouped convolution (groups={module.groups}, {per_group} input channel(s) per group): even rank 1 "
        f"per group holds as many weights as the dense kernel, nothing to gain"
    )


def chain_weight(layers: Sequence[nn.Module]) -> torch.Tensor:
    """The dense weight a chain of layers equals, in the Conv/Linear layout ``(out, in / groups, *k)``.

    Convolutions (1-D or 2-D, grouped or not) compose their kernels: stride, padding and dilation only
    choose where the composed kernel is applied, so they do not enter. Every other chain (Linear
    layers, a :class:`~ranksearch.decompositions.TTMatrixLinear`) is probed on the identity: the weight
    is ``f(I) - f(0)`` transposed. The groups of a conv chain are its first layer's (how every method
    builds grouped layers). Costs one reconstruction; call under ``torch.no_grad()``.
    """
    if all(isinstance(layer, (nn.Conv1d, nn.Conv2d)) for layer in layers):
        kernel = _grouped_to_dense(layers[0].weight, layers[0].groups)  # (M, I, *k)
        for layer in layers[1:]:
            kernel = _compose(kernel, _grouped_to_dense(layer.weight, layer.groups))
        return _dense_to_grouped(kernel, layers[0].groups)
    first = layers[0]
    reference = next(first.parameters())
    n = first.in_features
    rows = torch.cat([torch.eye(n), torch.zeros(1, n)]).to(reference)  # (n + 1, n): the identity and 0
    for layer in layers:
        rows = layer.forward(rows)  # .forward: the chain's hooks are not called
    return (rows[:-1] - rows[-1]).T  # (out, in)


def _grouped_to_dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped kernel ``(O, I/g, *k)`` as the block-diagonal dense kernel ``(O, I, *k)``."""
    if groups == 1:
        return weight
    out_channels, per_group, *kernel = weight.shape
    dense = weight.new_zeros(groups, out_channels // groups, groups, per_group, *kernel)
    index = torch.arange(groups, device=weight.device)
    dense[index, :, index] = weight.reshape(groups, out_channels // groups, per_group, *kernel)
    return dense.reshape(out_channels, groups * per_group, *kernel)


def _dense_to_grouped(kernel: torch.Tensor, groups: int) -> torch.Tensor:
    """The diagonal blocks ``(O, I/g, *k)`` of a block-diagonal dense kernel ``(O, I, *k)``."""
    if groups == 1:
        return kernel
    out_channels, in_channels, *k = kernel.shape
    blocks = kernel.reshape(groups, out_channels // groups, groups, in_channels // groups, *k)
    diagonal = blocks.diagonal(dim1=0, dim2=2).movedim(-1, 0)  # (g, O/g, I/g, *k)
    return diagonal.reshape(out_channels, in_channels // groups, *k)


def _compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The kernel of conv ``second`` (O, M, *k2) applied after conv ``first`` (M, I, *k1): (O, I, *(k1+k2-1)).

    ``K[o, i, p] = sum_{m, q} second[o, m, q] first[m, i, p - q]``: a full convolution of the kernels,
    computed as a cross-correlation of the zero-padded first kernel (batch ``I``) with the flipped second.
    """
    nd = first.dim() - 2
    spatial = tuple(range(2, 2 + nd))
    conv = (F.conv1d, F.conv2d)[nd - 1]
    padding = tuple(k - 1 for k in second.shape[2:])
    out = conv(first.transpose(0, 1), second.flip(spatial), padding=padding)  # (I, O, *k)
    return out.transpose(0, 1)
