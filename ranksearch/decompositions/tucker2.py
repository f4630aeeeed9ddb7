"""Tucker-2 of a conv kernel over its channel modes (Kim et al., 2016).

``W (O, I, *k) ~= core (r_out, r_in, *k) x_0 U_out (O, r_out) x_1 U_in (I, r_in)``, computed as a
truncated HOSVD: the leading left singular vectors of the mode-0 and mode-1 unfoldings. The two SVDs
and the full-rank core ``W x_0 U_out^T x_1 U_in^T`` are computed once; since the factor matrices are
orthogonal, the core for ranks ``(r_out, r_in)`` is the slice ``core[:r_out, :r_in]`` (the best core
for the kept subspaces). The module is
``1x1 (I -> r_in)``, ``k (r_in -> r_out)`` with the original stride/padding/dilation, and
``1x1 (r_out -> O)`` with the bias. Conv1d and Conv2d alike (``k`` is ``(kh, kw)`` or ``(k,)``).

A grouped conv with ``g`` groups gets the same per group (ranks per group), as three grouped convs;
its factors carry a leading group axis: ``(g, r_out, r_in, *k), (g, O/g, r_out), (g, I/g, r_in)``.
It is offered where ranks (1, 1) in every group hold fewer weights than the dense kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import tensorly as tl
import torch
from torch import nn

from ._base import (
    Cost,
    Decomposition,
    FactorizedLayer,
    Factors,
    Rank,
    check_rank_tuple,
    random_float64,
    tensorly_torch,
)
from ._geometry import conv_macs, conv_output_size
from ._modules import (
    batch_and_spatial,
    bias_of,
    bias_params,
    conv_unsupported_reason,
    grouped_reason,
    new_conv,
    weight_of,
)

__all__ = ["Tucker2", "group_weights"]


def group_weights(module: nn.Module) -> list[torch.Tensor]:
    """The kernel of each group, ``(O/g, I/g, *k)`` (one kernel for an ungrouped conv), for fitting."""
    weight = weight_of(module)
    return list(weight.reshape(module.groups, -1, *weight.shape[1:]))


def stack_groups(module: nn.Module, per_group: Sequence[Factors]) -> Factors:
    """Per-group factors as the method's factors: as they are when ungrouped, stacked otherwise."""
    if module.groups == 1:
        return tuple(per_group[0])
    return tuple(torch.stack(parts) for parts in zip(*per_group, strict=True))


def _hosvd(weight: torch.Tensor) -> Factors:
    """Full-rank HOSVD of one kernel over its channel modes: core, U_out, U_in."""
    with tensorly_torch():
        factors = []
        for mode in (0, 1):
            unfolded = tl.unfold(weight, mode)  # (dim, rest)
            u, _, _ = tl.svd_interface(unfolded, method="truncated_svd", n_eigenvecs=min(unfolded.shape))
            factors.append(u)
        core = tl.tenalg.multi_mode_dot(weight, factors, modes=[0, 1], transpose=True)
    return core, factors[0], factors[1]  # (O', I', *k), U_out (O, O'), U_in (I, I')


class Tucker2(Decomposition, name="tucker2"):
    """Tucker-2 with ranks ``(r_out, r_in)``; an int ``r`` means ``(min(r, O), min(r, I))`` (per group)."""

    nested = True

    def unsupported_reason(self, module: nn.Module) -> str | None:
        reason = conv_unsupported_reason(module, needs_spatial_kernel=True, grouped=True)
        return reason or grouped_reason(module, _params(module, (1, 1)))

    def max_rank(self, module: nn.Module) -> tuple[int, int]:
        """``(O, I)`` per group, each capped by the rank of its unfolding (e.g. a 1-channel stem has
        I*kh*kw < O)."""
        out_channels, in_per_group, *kernel = module.weight.shape
        out_per_group, taps = out_channels // module.groups, prod(kernel)
        return min(out_per_group, in_per_group * taps), min(in_per_group, out_per_group * taps)

    def canonical_rank(self, module: nn.Module, rank: object) -> tuple[int, ...]:
        return check_rank_tuple(rank, self.max_rank(module), "rank (r_out, r_in)")

    def prepare(self, module: nn.Module) -> Factors:
        return stack_groups(module, [_hosvd(weight) for weight in group_weights(module)])

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        core, u_out, u_in = prepared
        r_out, r_in = rank
        core = core[:, :r_out, :r_in] if module.groups > 1 else core[:r_out, :r_in]
        return core, u_out[..., :r_out], u_in[..., :r_in]  # (r_out, r_in, *k), (O, r_out), (I, r_in), per group

    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        core, u_out, u_in = factors
        spec = "gab...,goa,gib->goi..." if module.groups > 1 else "ab...,oa,ib->oi..."
        return torch.einsum(spec, core, u_out, u_in).reshape(module.weight.shape)

    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        core, u_out, u_in = factors
        groups, r_out, r_in = module.groups, u_out.shape[-1], u_in.shape[-1]
        ones = (1,) * (module.weight.dim() - 2)
        in_per_group = module.weight.shape[1]
        project_in = new_conv(
            module, u_in.transpose(-1, -2).reshape(groups * r_in, in_per_group, *ones), groups=groups
        )  # (g*r_in, I/g, 1...)
        spatial = new_conv(
            module,
            core.reshape(groups * r_out, r_in, *module.kernel_size),  # (g*r_out, r_in, *k)
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=groups,
            spatial=True,
        )
        project_out = new_conv(
            module, u_out.reshape(module.out_channels, r_out, *ones), groups=groups, bias=bias_of(module)
        )  # (O, r_out, 1...)
        return FactorizedLayer(project_in, spatial, project_out, method=self.name, rank=(r_out, r_in))

    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """A random ``(r_out, r_in, *k)`` core times random ``(O, r_out)`` and ``(I, r_in)`` matrices (per
        group), ``(r_out, r_in) = (3, 2)`` clipped to the maximum."""
        rand = random_float64(seed)
        max_out, max_in = self.max_rank(module)
        rank = (min(3, max_out), min(2, max_in))
        out_channels, in_per_group, *kernel = module.weight.shape
        lead = (module.groups,) if module.groups > 1 else ()
        core = rand(*lead, *rank, *kernel)
        factors = core, rand(*lead, out_channels // module.groups, rank[0]), rand(*lead, in_per_group, rank[1])
        return self.reconstruct(module, factors), rank

    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        r_out, r_in = rank
        groups, taps = module.groups, prod(module.kernel_size)
        batch, size = batch_and_spatial(input_shape, len(module.kernel_size))
        out_size = conv_output_size(module, size)
        macs = (
            conv_macs(batch, size, module.in_channels, groups * r_in, 1, groups)
            + conv_macs(batch, out_size, groups * r_in, groups * r_out, taps, groups)
            + conv_macs(batch, out_size, groups * r_out, module.out_channels, 1, groups)
        )
        return Cost(macs, _params(module, rank))


def _params(module: nn.Module, rank: tuple[int, int]) -> int:
    """Parameters of the built module: ``I*r_in + g*r_in*r_out*prod(k) + r_out*O`` plus the bias."""
    r_out, r_in = rank
    taps = prod(module.kernel_size)
    return (
        module.in_channels * r_in
        + module.groups * r_in * r_out * taps
        + r_out * module.out_channels
        + bias_params(module)
    )
