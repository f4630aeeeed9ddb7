"""Shapes and exact MAC counts of the standard layers that factorized modules are made of.

MACs are multiply-accumulates: one multiply-add counts 1 (FLOPs = 2 x MACs). Bias additions are
not counted, as in fvcore.
"""

from __future__ import annotations

from math import prod

from torch import nn

__all__ = ["conv2d_macs", "conv2d_output_hw", "linear_macs", "spatial_dims"]


def spatial_dims(conv: nn.Conv2d) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Per-axis geometry of a Conv2d: ``((kh, sh, ph, dh), (kw, sw, pw, dw))``.

    ``'same'`` padding (stride 1 by torch's rule) is returned as the padding that keeps the size,
    ``'valid'`` as 0. The padding value is only used for size arithmetic here; the layers we build
    pass the module's own padding through, so asymmetric ``'same'`` padding stays exact.
    """
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    if conv.padding == "same":
        ph, pw = dh * (kh - 1) / 2, dw * (kw - 1) / 2  # only the total per axis matters
    elif conv.padding == "valid":
        ph = pw = 0
    else:
        ph, pw = conv.padding
    return (kh, sh, ph, dh), (kw, sw, pw, dw)


def _out_size(size: int, kernel: int, stride: int, pad: float, dilation: int) -> int:
    return int((size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1)


def conv2d_output_hw(conv: nn.Conv2d, hw: tuple[int, int]) -> tuple[int, int]:
    """Output height and width of ``conv`` for an input of spatial size ``hw``."""
    (kh, sh, ph, dh), (kw, sw, pw, dw) = spatial_dims(conv)
    return _out_size(hw[0], kh, sh, ph, dh), _out_size(hw[1], kw, sw, pw, dw)


def axis_output_size(size: int, axis: tuple[int, int, int, int]) -> int:
    """Output length along one axis for ``axis = (kernel, stride, pad, dilation)``."""
    return _out_size(size, *axis)


def conv2d_macs(
    batch: int, out_hw: tuple[int, int], in_channels: int, out_channels: int, kernel: int, groups: int = 1
) -> int:
    """MACs of a 2-D convolution: ``N * H_out * W_out * C_out * (C_in / groups) * kh * kw``.

    Args:
        kernel: number of kernel taps, ``kh * kw``.
    """
    return batch * out_hw[0] * out_hw[1] * out_channels * (in_channels // groups) * kernel


def linear_macs(input_shape: tuple[int, ...], out_features: int) -> int:
    """MACs of a Linear layer on an input of shape ``(..., in_features)``: ``numel(input) * out``."""
    return prod(input_shape) * out_features


def separable_paddings(conv: nn.Conv2d) -> tuple[str | tuple[int, int], str | tuple[int, int]]:
    """Paddings of a ``kh x 1`` conv and a ``1 x kw`` conv that together pad exactly like ``conv``.

    Every padding mode indexes rows and columns independently, so padding H in the first layer and
    W in the second equals padding both at once. ``'same'`` stays ``'same'`` (per axis, with torch's
    own asymmetric split for even kernels).
    """
    if conv.padding in ("same", "valid"):
        return conv.padding, conv.padding
    ph, pw = conv.padding
    return (ph, 0), (0, pw)
