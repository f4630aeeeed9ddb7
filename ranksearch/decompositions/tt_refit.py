"""Data-aware tensor-train (convolutions): TT-SVD's cores, with the output core refitted to calibration data.

The conv chain ends in a ``1x1 (r -> O)`` conv holding the last core; the cores before it compute a map
``M`` ``(r, I * prod(k))`` from the im2col patch to its ``r`` channels. With ``C`` the patches' second moment
(:mod:`._statistics`), the output factor ``W C M^T (M C M^T)^-1`` minimises ``E||(W - L M) x||^2`` for that
``M`` and replaces TT-SVD's when its output error is lower, so the result is never worse than plain TT on
that data. Module, cost and ranks are plain TT's.

Linear layers are not offered: their TT-matrix form has no output factor to refit (``svd_whiten`` is the
data-aware choice there).
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Factors, Rank
from ._modules import is_linear_like
from ._statistics import DataAware, refit_if_better
from .tt import TT

__all__ = ["RefitTT"]


class RefitTT(DataAware, TT, name="tt_refit"):
    """TT-SVD of a conv kernel, then the output core refitted by least squares in the data's metric.

    Args:
        damping: relative damping of the second moment.
    """

    plain = "tt"

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if is_linear_like(module):
            return "a TT-matrix Linear has no output factor to refit (svd_whiten is the data-aware choice)"
        return super().unsupported_reason(module)

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        *inner_cores, last = super().factorize(module, rank, None)  # last: (r, O, 1)
        bond = last.shape[0]
        identity = torch.eye(bond, dtype=last.dtype, device=last.device)[:, :, None]  # (r, r, 1)
        inner = self.reconstruct(module, (*inner_cores, identity)).reshape(bond, -1)  # (r, I*prod(k))
        weight = module.weight.detach().reshape(module.weight.shape[0], -1)
        output = last[:, :, 0].T  # (O, r)
        moment = prepared.group(0).to(last.device)  # type: ignore[union-attr]
        refit = refit_if_better(weight, output, inner, moment, self.damping)
        return (*inner_cores, refit.T.unsqueeze(-1).contiguous())
