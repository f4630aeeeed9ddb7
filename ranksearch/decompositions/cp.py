"""CP decomposition of a conv kernel (Lebedev et al., 2015).

``W[o, i, h, w] ~= sum_r A_out[o, r] A_in[i, r] A_h[h, r] A_w[w, r]`` becomes
``1x1 (I -> R)``, a ``kh x 1`` depthwise conv, a ``1 x kw`` depthwise conv (each carrying its axis's
stride, padding and dilation), and ``1x1 (R -> O)`` with the bias. Padding of every mode
(zeros, reflect, replicate, circular) and ``'same'`` are separable per axis, so the chain is exact.

CP is not nested: each rank is a fit (CP-ALS from an SVD init, :mod:`._cp_als`) that the factor
cache memoizes. The component weights are spread evenly over the four factors so that they start at
the same scale for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    random_float64,
    weight_of,
)
from ._cp_als import cp_als
from ._geometry import axis_output_size, conv2d_macs, separable_paddings, spatial_dims

__all__ = ["CP"]


class CP(Decomposition, name="cp"):
    """Rank-``R`` CP of the 4-way kernel, fitted by ALS.

    Args:
        tol: relative-improvement stopping rule of the ALS.
        max_iter: ALS iteration cap. On conv kernels the relative-improvement rule rarely stops ALS
            early, so the cap sets the fit time. On a random 64x64x3x3 kernel at R=137 the error is 0.510
            after 100 sweeps (0.4 s), 0.499 after 200 (0.8 s) and 0.494 after 300 (1.2 s); 200 is already
            below tensorly-torch's CP fit at equal rank (benchmarks/decompositions.py). Pass a
            ``CP(max_iter=...)`` instance to ``FactorCache.factors`` to refit finalists more tightly.
        seed: seed of the random part of the initialisation.
    """

    exact_at_max_rank = False  # the maximum is the break-even rank, not the (much larger) exact CP rank
    exact_recovery_tolerance = 1e-3  # ALS stops at its relative-improvement rule

    def __init__(self, tol: float = 1e-5, max_iter: int = 200, seed: int = 0) -> None:
        self.tol, self.max_iter, self.seed = tol, max_iter, seed

    def cache_token(self) -> tuple[object, ...]:
        return (self.tol, self.max_iter, self.seed)

    def unsupported_reason(self, module: nn.Module) -> str | None:
        return conv_unsupported_reason(module, needs_spatial_kernel=True)

    def max_rank(self, module: nn.Module) -> int:
        """The break-even rank: beyond it the CP layers hold more parameters than the dense kernel."""
        shape = module.weight.shape
        return max(1, module.weight.numel() // sum(shape))

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        weight = weight_of(module)
        compute = weight if weight.dtype == torch.float64 else weight.float()
        result = cp_als(compute, rank, tol=self.tol, max_iter=self.max_iter, seed=self.seed)
        scale = result.weights.pow(1 / 4)  # (R,), weights are column norms (>= 0)
        return tuple(f * scale for f in result.factors)  # (O, R), (I, R), (kh, R), (kw, R)

    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        a_out, a_in, a_h, a_w = factors
        return torch.einsum("or,ir,hr,wr->oihw", a_out, a_in, a_h, a_w)

    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        a_out, a_in, a_h, a_w = factors
        rank = a_out.shape[1]
        (_, sh, _, dh), (_, sw, _, dw) = spatial_dims(module)
        pad_h, pad_w = separable_paddings(module)
        layers = (
            new_conv(module, a_in.T[:, :, None, None]),  # (R, I, 1, 1)
            new_conv(
                module,
                a_h.T[:, None, :, None],
                stride=(sh, 1),
                padding=pad_h,
                dilation=(dh, 1),
                groups=rank,
                spatial=True,
            ),  # (R, 1, kh, 1)
            new_conv(
                module,
                a_w.T[:, None, None, :],
                stride=(1, sw),
                padding=pad_w,
                dilation=(1, dw),
                groups=rank,
                spatial=True,
            ),  # (R, 1, 1, kw)
            new_conv(module, a_out[:, :, None, None], bias=bias_of(module)),  # (O, R, 1, 1)
        )
        return FactorizedLayer(*layers, method=self.name, rank=rank)

    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """The sum of ``R = min(3, max_rank)`` random rank-one kernels (one random factor per mode)."""
        rand = random_float64(seed)
        rank = min(3, self.max_rank(module))
        return self.reconstruct(module, tuple(rand(n, rank) for n in module.weight.shape)), rank

    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        out_channels, in_channels, kh, kw = module.weight.shape
        batch, (h, w) = batch_and_hw(input_shape)
        axis_h, axis_w = spatial_dims(module)
        h_out, w_out = axis_output_size(h, axis_h), axis_output_size(w, axis_w)
        macs = (
            conv2d_macs(batch, (h, w), in_channels, rank, 1)
            + conv2d_macs(batch, (h_out, w), rank, rank, kh, groups=rank)
            + conv2d_macs(batch, (h_out, w_out), rank, rank, kw, groups=rank)
            + conv2d_macs(batch, (h_out, w_out), rank, out_channels, 1)
        )
        params = rank * (in_channels + kh + kw + out_channels) + bias_params(module)
        return Cost(macs, params)
