"""Tensor-train (TT-SVD, Oseledets 2011) of a conv kernel or a Linear weight.

Conv2d: the kernel in order ``(I, kh, kw, O)`` with TT ranks ``(r1, r2, r3)`` becomes ``1x1 (I -> r1)``,
``kh x 1 (r1 -> r2)``, ``1 x kw (r2 -> r3)`` (each carrying its axis's stride, padding and dilation)
and ``1x1 (r3 -> O)`` with the bias. Conv1d: ``(I, k, O)`` with ranks ``(r1, r2)``, one ``k`` conv.
Grouped convolutions are not supported.

Linear (also Hugging Face's Conv1D, whose weight is transposed first): a TT-matrix (Novikov et al.,
2015). ``I`` and ``O`` are each factored into three balanced integer factors ``i_k``, ``o_k``; the
weight, reshaped to modes ``(i_k * o_k)``, gets TT ranks
``(r1, r2)``. No chain of standard layers computes a TT-matrix product (each core needs a reshape and
a transpose), so the Linear form is a small module, :class:`TTMatrixLinear`, whose forward is three
matmuls and reshapes: it trains and exports to ONNX like any module.

TT-SVD is not nested (each truncation changes the later unfoldings), so every rank is its own
``tensorly.decomposition.tensor_train`` call, memoized by the factor cache. An int rank ``r`` means
``min(r, cap_k)`` for every bond, where ``cap_k`` is the bond's largest useful rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from tensorly.decomposition import tensor_train
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
from ._geometry import axis_output_size, axis_paddings, conv_macs, one_axis, spatial_dims
from ._modules import (
    batch_and_spatial,
    bias_of,
    bias_params,
    conv_unsupported_reason,
    is_hf_conv1d,
    is_linear_like,
    linear_dims,
    matrix_of,
    new_conv,
    to_layout,
    weight_of,
)

__all__ = ["TT", "TTMatrixLinear", "balanced_factors"]

LINEAR_CORES = 3


def balanced_factors(n: int, parts: int) -> tuple[int, ...]:
    """Split ``n`` into ``parts`` integer factors as equal as possible, largest first (1s allowed)."""
    primes, rest, p = [], n, 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    factors = [1] * parts
    for prime in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= prime
    return tuple(sorted(factors, reverse=True))


def _bond_caps(mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """Largest useful TT rank of each inner bond: min(product of modes left, product right)."""
    return tuple(min(prod(mode_sizes[: k + 1]), prod(mode_sizes[k + 1 :])) for k in range(len(mode_sizes) - 1))


def _effective_ranks(ranks: Sequence[int], mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """Ranks reduced to what their neighbours allow: ``r_k <= r_{k-1} n_k`` and ``r_k <= n_{k+1} r_{k+1}``.

    TT-SVD cannot produce more (the unfolding it truncates has no more rows or columns).
    """
    bonds = [1, *ranks, 1]
    for k in range(1, len(bonds) - 1):
        bonds[k] = min(bonds[k], bonds[k - 1] * mode_sizes[k - 1])
    for k in range(len(bonds) - 2, 0, -1):
        bonds[k] = min(bonds[k], mode_sizes[k] * bonds[k + 1])
    return tuple(bonds[1:-1])


def _linear_modes(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    out_features, in_features = linear_dims(module)
    return balanced_factors(in_features, LINEAR_CORES), balanced_factors(out_features, LINEAR_CORES)


def _tt_svd(tensor: torch.Tensor, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    with tensorly_torch():
        return list(tensor_train(tensor, rank=[1, *ranks, 1]).factors)


class TTMatrixLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` held as a TT-matrix.

    Core ``k`` has shape ``(r_{k-1}, i_k, o_k, r_k)`` with ``r_0 = r_d = 1``;
    ``W[(o_1..o_d), (i_1..i_d)] = G_1[:, i_1, o_1, :] @ ... @ G_d[:, i_d, o_d, :]``.
    """

    def __init__(self, cores: Sequence[torch.Tensor], bias: torch.Tensor | None) -> None:
        super().__init__()
        # contiguous: a core may be a strided view of the TT-SVD; a saved model must reload bit-identical
        self.cores = nn.ParameterList(nn.Parameter(core.contiguous().clone()) for core in cores)
        self.bias = None if bias is None else nn.Parameter(bias.clone())
        self.in_modes = tuple(core.shape[1] for core in cores)
        self.out_modes = tuple(core.shape[2] for core in cores)
        self.in_features, self.out_features = prod(self.in_modes), prod(self.out_modes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, 1, *self.in_modes)  # (B, r_0=1, i_1, ..., i_d)
        for k, core in enumerate(self.cores):
            r_prev, i_k, o_k, r_k = core.shape
            rest = prod(self.in_modes[k + 1 :])
            t = rows.reshape(-1, r_prev * i_k, rest).transpose(1, 2)  # (B*O_<k, I_>k, r_prev*i_k)
            t = t @ core.reshape(r_prev * i_k, o_k * r_k)  # (B*O_<k, I_>k, o_k*r_k)
            rows = t.reshape(-1, rest, o_k, r_k).permute(0, 2, 3, 1)  # (B*O_<k, o_k, r_k, I_>k)
        out = rows.reshape(*lead, self.out_features)
        return out if self.bias is None else out + self.bias

    def count_macs(self, input_shape: Sequence[int]) -> int:
        """Exact MACs of :meth:`forward` (its matmuls) for an input of ``input_shape``."""
        batch = prod(input_shape) // self.in_features
        return batch * _tt_matrix_macs(self.in_modes, self.out_modes, [c.shape[0] for c in self.cores][1:])

    def extra_repr(self) -> str:
        return f"in_modes={self.in_modes}, out_modes={self.out_modes}, bias={self.bias is not None}"


def _tt_matrix_macs(in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]) -> int:
    """MACs per input row of :class:`TTMatrixLinear` with inner ``ranks``."""
    bonds = (1, *ranks, 1)
    return sum(
        prod(out_modes[:k]) * prod(in_modes[k + 1 :]) * bonds[k] * in_modes[k] * out_modes[k] * bonds[k + 1]
        for k in range(len(in_modes))
    )


class TT(Decomposition, name="tt"):
    """TT-SVD: ranks ``(r1, r2, r3)`` for a Conv2d, ``(r1, r2)`` for a Conv1d or a Linear."""

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if is_linear_like(module):
            return None
        return conv_unsupported_reason(module, needs_spatial_kernel=True)

    def _mode_sizes(self, module: nn.Module) -> list[int]:
        if is_linear_like(module):
            in_modes, out_modes = _linear_modes(module)
            return [i * o for i, o in zip(in_modes, out_modes, strict=True)]
        out_channels, in_channels, *kernel = module.weight.shape
        return [in_channels, *kernel, out_channels]

    def max_rank(self, module: nn.Module) -> tuple[int, ...]:
        return _bond_caps(self._mode_sizes(module))

    def canonical_rank(self, module: nn.Module, rank: object) -> tuple[int, ...]:
        """Each bond within ``[1, cap_k]`` (an int ``r`` means ``min(r, cap_k)``), then reduced to what its
        neighbours allow: TT-SVD cannot give a bond more than ``r_{k-1} n_k`` or ``n_{k+1} r_{k+1}``.
        """
        sizes = self._mode_sizes(module)
        return _effective_ranks(check_rank_tuple(rank, _bond_caps(sizes), "ranks"), sizes)

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        if is_linear_like(module):
            in_modes, out_modes = _linear_modes(module)
            d = len(in_modes)
            tensor = matrix_of(module).reshape(*out_modes, *in_modes)  # (o_1..o_d, i_1..i_d)
            tensor = tensor.permute(*(p for k in range(d) for p in (d + k, k)))  # (i_1, o_1, ..., i_d, o_d)
            tensor = tensor.reshape([i * o for i, o in zip(in_modes, out_modes, strict=True)])
            cores = _tt_svd(tensor, rank)  # (r_{k-1}, i_k*o_k, r_k)
            return tuple(
                c.reshape(c.shape[0], i, o, c.shape[2]) for c, i, o in zip(cores, in_modes, out_modes, strict=True)
            )
        weight = weight_of(module)
        order = (*range(1, weight.dim()), 0)
        return tuple(_tt_svd(weight.permute(order), rank))  # (1, I, r1), (r_a, k_a, r_a+1) per axis, (r, O, 1)

    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        if is_linear_like(module):
            d = len(factors)
            full = factors[0]
            for core in factors[1:]:
                full = torch.tensordot(full, core, dims=([full.ndim - 1], [0]))
            full = full.reshape(*full.shape[1:-1])  # (i_1, o_1, ..., i_d, o_d)
            full = full.permute(*range(1, 2 * d, 2), *range(0, 2 * d, 2))  # (o_1..o_d, i_1..i_d)
            out_features, in_features = linear_dims(module)
            return to_layout(module, full.reshape(out_features, in_features))
        full = factors[0][0]  # (I, r1)
        for core in factors[1:-1]:
            full = torch.tensordot(full, core, dims=([full.ndim - 1], [0]))  # (I, k_1, .., r)
        full = torch.tensordot(full, factors[-1][:, :, 0], dims=([full.ndim - 1], [0]))  # (I, *k, O)
        return full.permute(full.ndim - 1, *range(full.ndim - 1))  # (O, I, *k)

    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        rank = tuple(core.shape[-1] for core in factors[:-1])
        if is_linear_like(module):
            dtype, device = module.weight.dtype, module.weight.device
            cores = [core.to(device=device, dtype=dtype) for core in factors]
            layer = TTMatrixLinear(cores, bias_of(module))
            return FactorizedLayer(layer, method=self.name, rank=rank, weight_transposed=is_hf_conv1d(module))
        first, *middle, last = factors
        ones = (1,) * len(middle)
        layers = [new_conv(module, first[0].T.reshape(-1, first.shape[1], *ones))]  # (r1, I, 1...)
        paddings = axis_paddings(module)
        for axis, core in enumerate(middle):  # (r_a+1, r_a, 1..k..1): a conv along one spatial axis
            r_in, _, r_out = core.shape
            layers.append(
                new_conv(
                    module,
                    core.permute(2, 0, 1).reshape(r_out, r_in, *one_axis(module.kernel_size, axis)),
                    stride=one_axis(module.stride, axis),
                    padding=paddings[axis],
                    dilation=one_axis(module.dilation, axis),
                    spatial=True,
                )
            )
        out = last[:, :, 0].T  # (O, r)
        layers.append(new_conv(module, out.reshape(*out.shape, *ones), bias=bias_of(module)))  # (O, r, 1...)
        return FactorizedLayer(*layers, method=self.name, rank=rank)

    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """Random TT cores with every bond 2 (or less, where the neighbours allow no more), contracted."""
        rand = random_float64(seed)
        rank = self.canonical_rank(module, min(2, max(self.max_rank(module))))
        bonds = (1, *rank, 1)
        if is_linear_like(module):
            in_modes, out_modes = _linear_modes(module)
            cores = tuple(
                rand(bonds[k], i, o, bonds[k + 1]) for k, (i, o) in enumerate(zip(in_modes, out_modes, strict=True))
            )
        else:
            cores = tuple(rand(bonds[k], n, bonds[k + 1]) for k, n in enumerate(self._mode_sizes(module)))
        return self.reconstruct(module, cores), rank

    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        if is_linear_like(module):
            in_modes, out_modes = _linear_modes(module)
            bonds = (1, *rank, 1)
            params = sum(
                bonds[k] * i * o * bonds[k + 1] for k, (i, o) in enumerate(zip(in_modes, out_modes, strict=True))
            )
            rows = prod(input_shape) // linear_dims(module)[1]
            return Cost(rows * _tt_matrix_macs(in_modes, out_modes, rank), params + bias_params(module))
        sizes = self._mode_sizes(module)
        bonds = (1, *rank, 1)
        batch, size = batch_and_spatial(input_shape, len(module.kernel_size))
        macs = conv_macs(batch, size, sizes[0], rank[0], 1)
        for axis, geometry in enumerate(spatial_dims(module)):  # each axis shrinks once its conv has run
            size = (*size[:axis], axis_output_size(size[axis], geometry), *size[axis + 1 :])
            macs += conv_macs(batch, size, rank[axis], rank[axis + 1], geometry[0])
        macs += conv_macs(batch, size, rank[-1], sizes[-1], 1)
        params = sum(bonds[k] * n * bonds[k + 1] for k, n in enumerate(sizes)) + bias_params(module)
        return Cost(macs, params)
