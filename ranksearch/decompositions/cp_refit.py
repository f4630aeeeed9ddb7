"""Data-aware CP: plain CP's factors, with the output factor refitted to the output error on calibration data.

CP's last layer is a ``1x1 (R -> O)`` conv holding ``A_out``; the layers before it compute the map
``M[r, (i, h, w)] = A_in[i, r] A_h[h, r] A_w[w, r]`` from the im2col patch to the ``R`` channels. With ``C``
the patches' second moment (:mod:`._statistics`), ``A_out = W C M^T (M C M^T)^-1`` minimises
``E||(W - A_out M) x||^2`` for that ``M``; it replaces plain CP's ``A_out`` when its output error is lower
(always, up to the damping), so the result is never worse than plain CP on that data. Module, cost and
ranks are plain CP's; each rank is its own ALS fit plus one small solve.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Factors, Rank
from ._statistics import DataAware, refit_if_better
from .cp import CP

__all__ = ["RefitCP"]


class RefitCP(DataAware, CP, name="cp_refit"):
    """CP-ALS at rank ``R``, then the output factor refitted by least squares in the data's metric.

    Args:
        damping: relative damping of the second moment; the other arguments are :class:`CP`'s.
    """

    plain = "cp"

    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        a_out, *rest = super().factorize(module, rank, None)
        identity = torch.eye(a_out.shape[1], dtype=a_out.dtype, device=a_out.device)
        inner = self.reconstruct(module, (identity, *rest)).reshape(a_out.shape[1], -1)  # (R, I*prod(k))
        weight = module.weight.detach().reshape(a_out.shape[0], -1)
        moment = prepared.group(0).to(a_out.device)  # type: ignore[union-attr]
        return (refit_if_better(weight, a_out, inner, moment, self.damping), *rest)
