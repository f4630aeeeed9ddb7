"""Tucker-2 of a conv kernel over its channel modes (Kim et al., 2016).

``W (O, I, kh, kw) ~= core (r_out, r_in, kh, kw) x_0 U_out (O, r_out) x_1 U_in (I, r_in)``, computed as a
truncated HOSVD: the leading left singular vectors of the mode-0 and mode-1 unfoldings. The two SVDs
and the full-rank core ``W x_0 U_out^T x_1 U_in^T`` are computed once; since the factor matrices are
orthogonal, the core for ranks ``(r_out, r_in)`` is the slice ``core[:r_out, :r_in]`` (the best core
for the kept subspaces). The module is
``1x1 (I -> r_in)``, ``kh x kw (r_in -> r_out)`` with the original stride/padding/dilation, and
``1x1 (r_out -> O)`` with the bias.
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
    check_rank_tuple,
    conv_unsupported_reason,
    new_conv,
    random_float64,
    tensorly_torch,
    weight_of,
)
from ._geometry import conv2d_macs, conv2d_output_hw

__all__ = ["Tucker2"]


class Tucker2(Decomposition, name="tucker2"):
    """Tucker-2 with ranks ``(r_out, r_in)``; an int ``r`` means ``(min(r, O), min(r, I))``."""

    nested = True

    def unsupported_reason(self, module: nn.Module) -> str | None:
        return conv_unsupported_reason(module, needs_spatial_kernel=True)

    def max_rank(self, module: nn.Module) -> tuple[int, int]:
        """``(O, I)``, each capped by the rank of its unfolding (e.g. a 1-channel stem has I*kh*kw < O)."""
        out_channels, in_channels, kh, kw = module.weight.shape
        return min(out_channels, in_channels * kh * kw), min(in_channels, out_channels * kh * kw)

    def canonical_rank(self, module: nn.Module, rank: object) -> tuple[int, ...]:
        return check_rank_tuple(rank, self.max_rank(module), "rank (r_out, r_in)")

    def prepare(self, module: nn.Module) -> Factors:
        weight = weight_of(module)
        with tensorly_torch():
            factors = []
            for mode in (0, 1):
                unfolded = tl.unfold(weight, mode)  # (dim, rest)
                u, _, _ = tl.svd_interface(unfolded, method="truncated_svd", n_eigenvecs=min(unfolded.shape))
                factors.append(u)
            core = tl.tenalg.multi_mode_dot(weight, factors, modes=[0, 1], transpose=True)
        return core, factors[0], factors[1]  # (O, I, kh, kw), U_out (O, O), U_in (I, I)

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        core, u_out, u_in = prepared
        r_out, r_in = rank
        return core[:r_out, :r_in], u_out[:, :r_out], u_in[:, :r_in]  # (r_out, r_in, kh, kw), (O, r_out), (I, r_in)

    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        core, u_out, u_in = factors
        with tensorly_torch():
            return tl.tenalg.multi_mode_dot(core, [u_out, u_in], modes=[0, 1])

    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        core, u_out, u_in = factors
        project_in = new_conv(module, u_in.T[:, :, None, None])  # (r_in, I, 1, 1)
        spatial = new_conv(
            module, core, stride=module.stride, padding=module.padding, dilation=module.dilation, spatial=True
        )
        project_out = new_conv(module, u_out[:, :, None, None], bias=bias_of(module))  # (O, r_out, 1, 1)
        rank = (core.shape[0], core.shape[1])
        return FactorizedLayer(project_in, spatial, project_out, method=self.name, rank=rank)

    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """A random ``(r_out, r_in, kh, kw)`` core times random ``(O, r_out)`` and ``(I, r_in)`` matrices,
        ``(r_out, r_in) = (3, 2)`` clipped to the maximum."""
        rand = random_float64(seed)
        max_out, max_in = self.max_rank(module)
        rank = (min(3, max_out), min(2, max_in))
        out_channels, in_channels, kh, kw = module.weight.shape
        core = rand(*rank, kh, kw)
        factors = core, rand(out_channels, rank[0]), rand(in_channels, rank[1])
        return self.reconstruct(module, factors), rank

    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        r_out, r_in = rank
        out_channels, in_channels, kh, kw = module.weight.shape
        batch, hw = batch_and_hw(input_shape)
        out_hw = conv2d_output_hw(module, hw)
        macs = (
            conv2d_macs(batch, hw, in_channels, r_in, 1)
            + conv2d_macs(batch, out_hw, r_in, r_out, kh * kw)
            + conv2d_macs(batch, out_hw, r_out, out_channels, 1)
        )
        params = in_channels * r_in + r_in * r_out * kh * kw + r_out * out_channels + bias_params(module)
        return Cost(macs, params)
