"""CP decomposition of a conv kernel (Lebedev et al., 2015).

``W[o, i, h, w] ~= sum_r A_out[o, r] A_in[i, r] A_h[h, r] A_w[w, r]`` becomes
``1x1 (I -> R)``, a ``kh x 1`` depthwise conv, a ``1 x kw`` depthwise conv (each carrying its axis's
stride, padding and dilation), and ``1x1 (R -> O)`` with the bias. A Conv1d ``(O, I, k)`` has one
depthwise ``k`` conv. Grouped convolutions are not supported. Padding of every mode
(zeros, reflect, replicate, circular) and ``'same'`` are separable per axis, so the chain is exact.

CP is not nested: each rank is a fit (CP-ALS from an SVD init, :mod:`._cp_als`) that the factor
cache memoizes. The component weights are spread evenly over the factors (four; three for a Conv1d)
so that they start at the same scale for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._base import Cost, Decomposition, FactorizedLayer, Factors, Rank, random_float64
from ._cp_als import cp_als
from ._geometry import axis_output_size, axis_paddings, conv_macs, one_axis, spatial_dims
from ._modules import batch_and_spatial, bias_of, bias_params, conv_unsupported_reason, new_conv, weight_of

__all__ = ["CP"]

_LETTERS = "hw"


class CP(Decomposition, name="cp"):
    """Rank-``R`` CP of the 3-way (Conv1d) or 4-way (Conv2d) kernel, fitted by ALS.

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
        scale = result.weights.pow(1 / weight.dim())  # (R,), weights are column norms (>= 0)
        return tuple(f * scale for f in result.factors)  # (O, R), (I, R), then (k_axis, R) per spatial axis

    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        axes = _LETTERS[: len(factors) - 2]
        spec = ",".join(f"{m}r" for m in f"oi{axes}") + f"->oi{axes}"
        return torch.einsum(spec, *factors)

    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        a_out, a_in, *a_axes = factors
        rank, nd = a_out.shape[1], len(a_axes)
        ones = (1,) * nd
        layers = [new_conv(module, a_in.T.reshape(rank, -1, *ones))]  # (R, I, 1...)
        paddings = axis_paddings(module)
        for axis, a_k in enumerate(a_axes):  # a depthwise conv along each spatial axis: (R, 1, 1..k..1)
            kernel = one_axis(module.kernel_size, axis)
            layers.append(
                new_conv(
                    module,
                    a_k.T.reshape(rank, 1, *kernel),
                    stride=one_axis(module.stride, axis),
                    padding=paddings[axis],
                    dilation=one_axis(module.dilation, axis),
                    groups=rank,
                    spatial=True,
                )
            )
        layers.append(new_conv(module, a_out.reshape(-1, rank, *ones), bias=bias_of(module)))  # (O, R, 1...)
        return FactorizedLayer(*layers, method=self.name, rank=rank)

    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """The sum of ``R = min(3, max_rank)`` random rank-one kernels (one random factor per mode)."""
        rand = random_float64(seed)
        rank = min(3, self.max_rank(module))
        return self.reconstruct(module, tuple(rand(n, rank) for n in module.weight.shape)), rank

    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        out_channels, in_channels = module.weight.shape[:2]
        batch, size = batch_and_spatial(input_shape, len(module.kernel_size))
        macs = conv_macs(batch, size, in_channels, rank, 1)
        for axis, geometry in enumerate(spatial_dims(module)):  # each axis shrinks once its conv has run
            size = (*size[:axis], axis_output_size(size[axis], geometry), *size[axis + 1 :])
            macs += conv_macs(batch, size, rank, rank, geometry[0], groups=rank)
        macs += conv_macs(batch, size, rank, out_channels, 1)
        params = rank * sum(module.weight.shape) + bias_params(module)
        return Cost(macs, params)
