"""Truncated SVD of the weight, folded to a matrix: the smallest complete method.

Linear ``(O, I)``: ``Linear(I -> r)`` then ``Linear(r -> O)``.
Conv2d ``(O, I, kh, kw)`` folded to ``O x (I*kh*kw)``: a ``kh x kw`` conv with ``r`` outputs (keeps
stride, padding, dilation and padding mode), then a 1x1 conv ``r -> O`` with the bias.

One SVD serves every rank: rank ``r`` keeps the ``r`` leading singular triplets, with the singular
values split evenly (``sqrt(s)``) between the two factors so both start at the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorly as tl
import torch
from torch import nn

from ._base import (
    Cost,
    Decomposition,
    FactorizedLayer,
    Factors,
    Rank,
    batch_and_hw,
    bias_of,
    bias_params,
    conv_unsupported_reason,
    new_conv,
    new_linear,
    random_float64,
    tensorly_torch,
    weight_of,
)
from ._geometry import conv2d_macs, conv2d_output_hw, linear_macs

__all__ = ["SVD"]


class SVD(Decomposition, name="svd"):
    """Rank-``r`` truncated SVD of the (folded) weight matrix."""

    nested = True

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, nn.Linear):
            return None
        return conv_unsupported_reason(module, needs_spatial_kernel=False)

    def max_rank(self, module: nn.Module) -> int:
        out_dim = module.weight.shape[0]
        return min(out_dim, module.weight[0].numel())

    def prepare(self, module: nn.Module) -> Factors:
        matrix = weight_of(module).reshape(module.weight.shape[0], -1)  # (O, I*kh*kw)
        with tensorly_torch():
            u, s, vh = tl.svd_interface(matrix, method="truncated_svd", n_eigenvecs=min(matrix.shape))
        root = s.sqrt()  # the split of each singular value does not depend on the rank
        return u * root, root[:, None] * vh  # (O, K), (K, I*kh*kw)

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        left, right = prepared
        return left[:, :rank], right[:rank]  # views: (O, r), (r, I*kh*kw)

    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        left, right = factors
        return (left @ right).reshape(module.weight.shape)

    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        left, right = factors
        rank = left.shape[1]
        if isinstance(module, nn.Linear):
            layers = (new_linear(module, right), new_linear(module, left, bias_of(module)))
        else:
            first = new_conv(
                module,
                right.reshape(rank, *module.weight.shape[1:]),  # (r, I, kh, kw)
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                spatial=True,
            )
            second = new_conv(module, left[:, :, None, None], bias=bias_of(module))  # (O, r, 1, 1)
            layers = (first, second)
        return FactorizedLayer(*layers, method=self.name, rank=rank)

    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """The product of random ``(O, r)`` and ``(r, I*kh*kw)`` matrices, ``r = min(3, max_rank)``."""
        rand = random_float64(seed)
        rank = min(3, self.max_rank(module))
        factors = rand(module.weight.shape[0], rank), rand(rank, module.weight[0].numel())
        return self.reconstruct(module, factors), rank

    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        out_dim, fan_in = module.weight.shape[0], module.weight[0].numel()
        params = rank * (fan_in + out_dim) + bias_params(module)
        if isinstance(module, nn.Linear):
            rows = tuple(input_shape)[:-1]
            return Cost(linear_macs((*rows, fan_in), rank) + linear_macs((*rows, rank), out_dim), params)
        batch, hw = batch_and_hw(input_shape)
        out_hw = conv2d_output_hw(module, hw)
        return Cost(conv2d_macs(batch, out_hw, fan_in, rank, 1) + conv2d_macs(batch, out_hw, rank, out_dim, 1), params)
