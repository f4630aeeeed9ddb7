"""Shapes and exact MAC counts of the standard layers that factorized modules are made of.

MACs are multiply-accumulates: one multiply-add counts 1 (FLOPs = 2 x MACs). Bias additions are
not counted, as in fvcore. Convolutions are 1-D or 2-D (``nd`` spatial axes).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import nn

__all__ = [
    "axis_output_size",
    "axis_paddings",
    "conv_macs",
    "conv_output_size",
    "linear_macs",
    "spatial_dims",
]

Axis = tuple[int, int, float, int]
"""One spatial axis of a convolution: ``(kernel, stride, padding, dilation)``."""


def spatial_dims(conv: nn.modules.conv._ConvNd) -> tuple[Axis, ...]:
    """Per-axis geometry of a convolution: ``((kh, sh, ph, dh), (kw, sw, pw, dw))`` for a Conv2d.

    ``'same'`` padding (stride 1 by torch's rule) is returned as the padding that keeps the size,
    ``'valid'`` as 0. The padding value is only used for size arithmetic here; the layers we build
    pass the module's own padding through, so asymmetric ``'same'`` padding stays exact.
    """
    axes = []
    for a, (k, s, d) in enumerate(zip(conv.kernel_size, conv.stride, conv.dilation, strict=True)):
        if conv.padding == "same":
            p: float = d * (k - 1) / 2  # only the total per axis matters
        elif conv.padding == "valid":
            p = 0
        else:
            p = conv.padding[a]
        axes.append((k, s, p, d))
    return tuple(axes)


def axis_output_size(size: int, axis: Axis) -> int:
    """Output length along one axis for ``axis = (kernel, stride, pad, dilation)``."""
    kernel, stride, pad, dilation = axis
    return int((size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1)


def conv_output_size(conv: nn.modules.conv._ConvNd, size: Sequence[int]) -> tuple[int, ...]:
    """Output spatial size of ``conv`` for an input of spatial size ``size`` (one entry per axis)."""
    return tuple(axis_output_size(n, axis) for n, axis in zip(size, spatial_dims(conv), strict=True))


def conv_macs(
    batch: int, out_size: Sequence[int], in_channels: int, out_channels: int, kernel: int, groups: int = 1
) -> int:
    """MACs of a convolution: ``N * prod(out_size) * C_out * (C_in / groups) * taps``.

    Args:
        out_size: the output's spatial size, e.g. ``(H_out, W_out)``.
        kernel: number of kernel taps, e.g. ``kh * kw``.
    """
    return batch * prod(out_size) * out_channels * (in_channels // groups) * kernel


def linear_macs(input_shape: tuple[int, ...], out_features: int) -> int:
    """MACs of a Linear layer on an input of shape ``(..., in_features)``: ``numel(input) * out``."""
    return prod(input_shape) * out_features


def axis_paddings(conv: nn.modules.conv._ConvNd) -> list[str | tuple[int, ...]]:
    """Per spatial axis, the padding of a conv whose kernel spans only that axis, such that the chain of
    those convs pads exactly like ``conv``.

    Every padding mode indexes each axis independently, so padding H in one layer and W in the next
    equals padding both at once. ``'same'`` and ``'valid'`` stay as they are (per axis, with torch's own
    asymmetric split for even kernels).
    """
    nd = len(conv.kernel_size)
    if conv.padding in ("same", "valid"):
        return [conv.padding] * nd
    return [tuple(p if b == a else 0 for b, p in enumerate(conv.padding)) for a in range(nd)]


def one_axis(values: Sequence[int], axis: int, fill: int = 1) -> tuple[int, ...]:
    """``values[axis]`` at ``axis`` and ``fill`` elsewhere, e.g. a stride acting along one axis only."""
    return tuple(v if a == axis else fill for a, v in enumerate(values))
