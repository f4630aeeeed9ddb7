"""Data-aware SVD: the truncated SVD of the weight whitened by its inputs' second moment (SVD-LLM).

With ``C = E[x x^T]`` of the layer's input vectors (Linear rows, im2col patches of a conv, per group) and
its symmetric root ``S`` (``S S = C``, damped, see :mod:`._statistics`), the SVD ``W S = U diag(s) V^T``
gives, at rank ``r``,

    W_r = U_r diag(s_r) V_r^T S^-1,   E||(W - W_r) x||^2 = sum_{i > r} s_i^2,

the smallest expected output error of any rank-``r`` matrix: each truncated singular value is exactly
the output error it causes (plain SVD minimises the weight error instead, which on anisotropic inputs is
a different and much worse problem). The module, cost and rank range are plain SVD's (same two layers),
so the search can set the two side by side on every layer; only the factors differ. Nested: one
decomposition per layer and calibration serves every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Factors
from ._statistics import DataAware, InputStatistics, whitening
from .svd import SVD, folded_weight

__all__ = ["WhitenedSVD"]


class WhitenedSVD(DataAware, SVD, name="svd_whiten"):
    """Rank-``r`` SVD of ``W S`` mapped back by ``S^-1``: the output-error-optimal rank-``r`` weight.

    Args:
        damping: relative damping of the second moment before its root is taken.
    """

    plain = "svd"

    def prepare(self, module: nn.Module, statistics: InputStatistics) -> Factors:
        matrices = folded_weight(module)  # (g, rows, d)
        groups, _, dim = matrices.shape
        statistics.check_for(groups, dim)
        lefts, rights = [], []
        for index, matrix in enumerate(matrices.double()):
            root, inverse_root = whitening(statistics.group(index).to(matrix.device), self.damping)
            u, s, vh = torch.linalg.svd(matrix @ root, full_matrices=False)
            split = s.sqrt()  # the singular values shared evenly by the two factors, as in plain SVD
            lefts.append(u * split)  # (rows, K)
            rights.append((split[:, None] * vh) @ inverse_root)  # (K, d)
        dtype = matrices.dtype
        left, right = torch.stack(lefts).to(dtype), torch.stack(rights).to(dtype)
        return (left[0], right[0]) if groups == 1 else (left, right)
