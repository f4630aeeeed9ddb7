"""Truncated SVD of the weight, folded to a matrix: the smallest complete method.

Linear ``(O, I)`` (also Hugging Face's Conv1D, whose ``(I, O)`` weight is transposed first):
``Linear(I -> r)`` then ``Linear(r -> O)``.
Conv ``(O, I, *k)`` (1-D or 2-D) folded to ``O x (I*prod(k))``: a ``k`` conv with ``r`` outputs (keeps
stride, padding, dilation and padding mode), then a 1x1 conv ``r -> O`` with the bias.
Grouped conv with ``g`` groups: the same per group, as two grouped convs (``g*r`` channels between
them); offered where rank 1 per group holds fewer weights than the dense kernel.

One SVD serves every rank: rank ``r`` keeps the ``r`` leading singular triplets, with the singular
values split evenly (``sqrt(s)``) between the two factors so both start at the same scale. The factors
are ``(O, r), (r, I*prod(k))``, with a leading group axis ``(g, O/g, r), (g, r, I/g*prod(k))`` when grouped.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import tensorly as tl
import torch
from torch import nn

from ._base import Cost, Decomposition, FactorizedLayer, Factors, Rank, random_float64, tensorly_torch
from ._geometry import conv_macs, conv_output_size, linear_macs
from ._modules import (
    batch_and_spatial,
    bias_of,
    bias_params,
    conv_unsupported_reason,
    grouped_reason,
    is_hf_conv1d,
    is_linear_like,
    linear_dims,
    matrix_of,
    new_conv,
    new_linear,
    to_layout,
    weight_of,
)

__all__ = ["SVD", "folded_weight"]


def folded_weight(module: nn.Module) -> torch.Tensor:
    """The weight as one ``(rows, columns)`` matrix per group: ``(g, O/g, I/g*prod(k))`` for a conv (the
    columns in im2col order), ``(1, O, I)`` for a Linear (Hugging Face's Conv1D transposed first)."""
    groups, rows, columns = _fold(module)
    if is_linear_like(module):
        return matrix_of(module).reshape(1, rows, columns)
    return weight_of(module).reshape(groups, rows, columns)


def _fold(module: nn.Module) -> tuple[int, int, int]:
    """``(groups, rows, columns)`` of the matrix per group: ``(1, O, I)`` for a Linear."""
    if is_linear_like(module):
        return (1, *linear_dims(module))
    groups = module.groups
    return groups, module.weight.shape[0] // groups, module.weight[0].numel()


class SVD(Decomposition, name="svd"):
    """Rank-``r`` truncated SVD of the (folded) weight matrix, per group for grouped convs."""

    nested = True

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if is_linear_like(module):
            return None
        reason = conv_unsupported_reason(module, needs_spatial_kernel=False, grouped=True)
        return reason or grouped_reason(module, _params(module, 1))

    def max_rank(self, module: nn.Module) -> int:
        _, rows, columns = _fold(module)
        return min(rows, columns)

    def prepare(self, module: nn.Module) -> Factors:
        groups, rows, _ = _fold(module)
        if groups > 1:
            matrices = folded_weight(module)  # (g, O/g, I/g*prod(k))
            u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
            root = s.sqrt()
            return u * root[:, None, :], root[:, :, None] * vh  # (g, O/g, K), (g, K, I/g*prod(k))
        matrix = matrix_of(module) if is_linear_like(module) else weight_of(module).reshape(rows, -1)
        with tensorly_torch():
            u, s, vh = tl.svd_interface(matrix, method="truncated_svd", n_eigenvecs=min(matrix.shape))
        root = s.sqrt()  # the split of each singular value does not depend on the rank
        return u * root, root[:, None] * vh  # (O, K), (K, I*prod(k))

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        left, right = prepared
        return left[..., :rank], right[..., :rank, :]  # views: (O, r), (r, I*prod(k)) (per group)

    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        left, right = factors
        product = left @ right  # (O, I*prod(k)), or per group
        if is_linear_like(module):
            return to_layout(module, product)
        return product.reshape(module.weight.shape)

    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        left, right = factors
        rank = left.shape[-1]
        if is_linear_like(module):
            layers = (new_linear(module, right), new_linear(module, left, bias_of(module)))
            return FactorizedLayer(*layers, method=self.name, rank=rank, weight_transposed=is_hf_conv1d(module))
        groups, ones = module.groups, (1,) * (module.weight.dim() - 2)
        first = new_conv(
            module,
            right.reshape(groups * rank, *module.weight.shape[1:]),  # (g*r, I/g, *k)
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=groups,
            spatial=True,
        )
        out_channels = module.weight.shape[0]
        second = new_conv(module, left.reshape(out_channels, rank, *ones), groups=groups, bias=bias_of(module))
        return FactorizedLayer(first, second, method=self.name, rank=rank)

    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """The product of random ``(O, r)`` and ``(r, I*prod(k))`` matrices (per group),
        ``r = min(3, max_rank)``."""
        rand = random_float64(seed)
        groups, rows, columns = _fold(module)
        rank = min(3, self.max_rank(module))
        lead = (groups,) if groups > 1 else ()
        factors = rand(*lead, rows, rank), rand(*lead, rank, columns)
        return self.reconstruct(module, factors), rank

    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        if is_linear_like(module):
            out_dim, in_dim = linear_dims(module)
            rows = tuple(input_shape)[:-1]
            macs = linear_macs((*rows, in_dim), rank) + linear_macs((*rows, rank), out_dim)
            return Cost(macs, _params(module, rank))
        groups, out_dim = module.groups, module.weight.shape[0]
        in_dim, taps = module.in_channels, prod(module.kernel_size)
        batch, size = batch_and_spatial(input_shape, len(module.kernel_size))
        out_size = conv_output_size(module, size)
        macs = conv_macs(batch, out_size, in_dim, groups * rank, taps, groups) + conv_macs(
            batch, out_size, groups * rank, out_dim, 1, groups
        )
        return Cost(macs, _params(module, rank))


def _params(module: nn.Module, rank: int) -> int:
    """Parameters of the built module: ``r * (I + O)`` for a Linear, ``r * (I*prod(k) + O)`` for a conv
    (grouped too: ``g`` groups of ``r * (I/g*prod(k) + O/g)``), plus the bias."""
    if is_linear_like(module):
        out_dim, in_dim = linear_dims(module)
        return rank * (in_dim + out_dim) + bias_params(module)
    return rank * (module.in_channels * prod(module.kernel_size) + module.out_channels) + bias_params(module)
