"""Data-aware Tucker-2: input-channel subspace chosen in the whitened metric, output side fitted to the data.

Same module, cost and ranks as :mod:`.tucker2` (``1x1 I -> r_in``, ``k r_in -> r_out``, ``1x1 r_out -> O``);
only the factors differ. With ``C`` the second moment of the conv's im2col patches (per group, see
:mod:`._statistics`) and ``P = U_in^T (x) I_k`` the input projection applied at every kernel tap, the
output error of ``W' = U_out G P`` is ``tr((W - W') C (W - W')^T)``. For a given ``U_in`` the best
``U_out G`` is closed form: the regression ``B = W C P^T (P C P^T)^-1`` truncated to rank ``r_out`` in the
metric ``P C P^T`` (a whitened SVD in the ``r_in * k`` space). Two input subspaces are tried:

- plain HOSVD's ``U_in`` (the leading left singular vectors of the weight's input-mode unfolding);
- the whitened one: with ``S_c`` the root of the input *channels'* second moment (``C`` summed over the
  kernel taps), the leading left singular vectors ``V`` of ``S_c W_(1)``, mapped back as
  ``U_in = S_c^-1 V`` (the first 1x1 conv then reads the channel directions that carry output energy).

Of those two fits and plain Tucker-2's own factors, the one with the smallest output error on the
calibration statistics is kept, so at equal ranks the result is never worse than plain Tucker-2 on
that data. Every rank is its own small fit (not nested); the HOSVD and the whitening are done once per
layer and calibration (:meth:`prepare`).
"""

from __future__ import annotations

from math import prod

import torch
from torch import nn

from ._base import Factors, Rank
from ._statistics import DataAware, InputStatistics, damped, output_error, whitening
from .tucker2 import Tucker2, _hosvd, group_weights, stack_groups

__all__ = ["WhitenedTucker2"]


class WhitenedTucker2(DataAware, Tucker2, name="tucker2_whiten"):
    """Tucker-2 ranks ``(r_out, r_in)`` fitted to the output error on calibration data.

    Args:
        damping: relative damping of the second moments before roots and solves.
    """

    plain = "tucker2"
    nested = False

    def prepare(self, module: nn.Module, statistics: InputStatistics) -> list[dict[str, torch.Tensor]]:
        kernels = group_weights(module)  # (O/g, I/g, *k) each
        statistics.check_for(len(kernels), kernels[0][0].numel())
        return [self._prepare_group(kernel, statistics.group(g)) for g, kernel in enumerate(kernels)]

    def _prepare_group(self, kernel: torch.Tensor, moment: torch.Tensor) -> dict[str, torch.Tensor]:
        kernel = kernel.double()
        _, in_channels, *taps = kernel.shape
        moment = moment.to(kernel.device)
        metric = damped(moment, self.damping)
        if metric is None:  # no information in the data: the plain metric
            metric = torch.eye(moment.shape[0], dtype=torch.float64, device=kernel.device)
        per_tap = metric.reshape(in_channels, prod(taps), in_channels, prod(taps))
        channel_root, channel_inverse_root = whitening(torch.einsum("itjt->ij", per_tap), self.damping)
        unfolded = kernel.transpose(0, 1).reshape(in_channels, -1)  # (I, O*prod(k))
        whitened_in, _, _ = torch.linalg.svd(channel_root @ unfolded, full_matrices=False)
        core, u_out, u_in = _hosvd(kernel)
        return {
            "kernel": kernel,
            "moment": moment.double(),
            "metric": metric,
            "hosvd_core": core,
            "hosvd_out": u_out,
            "hosvd_in": u_in,
            "whitened_in": channel_inverse_root @ whitened_in,  # (I, I') non-orthogonal input projections
        }

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        dtype = group_weights(module)[0].dtype
        per_group = [_best_fit(part, rank) for part in prepared]  # type: ignore[union-attr]
        return stack_groups(module, [tuple(f.to(dtype) for f in factors) for factors in per_group])


def _best_fit(part: dict[str, torch.Tensor], rank: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Of plain Tucker-2 and the two data-fitted variants, the factors with the least output error."""
    r_out, r_in = rank
    kernel = part["kernel"]
    candidates = [(part["hosvd_core"][:r_out, :r_in], part["hosvd_out"][:, :r_out], part["hosvd_in"][:, :r_in])]
    for u_in in (part["hosvd_in"][:, :r_in], part["whitened_in"][:, :r_in]):
        candidates.append(_fit_given_input(kernel, part["metric"], u_in, r_out))

    def error(factors: tuple[torch.Tensor, ...]) -> float:
        core, u_out, u_in = factors
        approx = torch.einsum("ab...,oa,ib->oi...", core, u_out, u_in)
        return output_error(kernel.reshape(kernel.shape[0], -1), approx.reshape(kernel.shape[0], -1), part["moment"])

    return min(candidates, key=error)


def _fit_given_input(
    kernel: torch.Tensor, metric: torch.Tensor, u_in: torch.Tensor, r_out: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Core and ``U_out`` minimising ``tr((W - U_out G P) C (W - U_out G P)^T)`` for ``P = U_in^T (x) I_k``.

    ``kernel`` ``(O, I, *k)``, ``metric`` the damped ``C`` ``((I*k), (I*k))``, ``u_in`` ``(I, r_in)``; returns
    ``core (r_out', r_in, *k), U_out (O, r_out'), U_in`` with ``r_out' = min(r_out, O, r_in * k)``, zero-padded to
    ``r_out`` columns when the regression has lower rank than asked (the module keeps its shape).
    """
    out_channels, in_channels, *taps = kernel.shape
    n_taps, r_in = prod(taps), u_in.shape[1]
    per_tap = metric.reshape(in_channels, n_taps, in_channels, n_taps)
    gram = torch.einsum("ia,itjs,jb->atbs", u_in, per_tap, u_in).reshape(r_in * n_taps, r_in * n_taps)
    cross = _cross(kernel, per_tap, u_in)  # (O, r_in*k)
    jitter = 1e-12 * float(torch.diagonal(gram).mean().clamp_min(1e-300))
    gram = gram + jitter * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    regression = torch.linalg.solve(gram, cross.T).T  # (O, r_in*k): the best unconstrained B
    values, vectors = torch.linalg.eigh(gram)
    gram_root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    u, _, _ = torch.linalg.svd(regression @ gram_root, full_matrices=False)
    u_out = torch.zeros(out_channels, r_out, dtype=kernel.dtype, device=kernel.device)
    kept = min(r_out, u.shape[1])
    u_out[:, :kept] = u[:, :kept]
    core = (u_out.T @ regression).reshape(r_out, r_in, *taps)
    return core, u_out, u_in


def _cross(kernel: torch.Tensor, per_tap: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    """``W C P^T`` as ``(O, r_in * k)`` without forming ``P``."""
    out_channels, in_channels, *taps = kernel.shape
    n_taps = prod(taps)
    weighted = torch.einsum("ojs,jsit->oit", kernel.reshape(out_channels, in_channels, n_taps), per_tap)  # W C
    return torch.einsum("oit,ia->oat", weighted, u_in).reshape(out_channels, u_in.shape[1] * n_taps)
