"""CP-ALS in plain torch, initialised by tensorly's SVD init.

Why not ``tensorly.decomposition.parafac``: on large conv kernels it is dominated by per-iteration
overhead, and with its default ``tol=1e-8`` it always runs all its iterations. This loop computes each
MTTKRP with one einsum on the dense tensor and the fit from the Gram matrices (no reconstruction), and
stops when the relative error improves by less than ``tol`` (relative) per iteration. The tests check it reaches
tensorly's error on the same tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from tensorly.decomposition._cp import initialize_cp

from ._base import tensorly_torch

__all__ = ["CPResult", "cp_als"]

_LETTERS = "abcdefgh"


@dataclass(frozen=True)
class CPResult:
    """``tensor ~= sum_r weights[r] * outer(factors[0][:, r], factors[1][:, r], ...)``."""

    weights: torch.Tensor  # (R,)
    factors: tuple[torch.Tensor, ...]  # one (dim_n, R) per mode, unit-norm columns
    relative_error: float
    iterations: int


def _mttkrp(tensor: torch.Tensor, factors: list[torch.Tensor], mode: int) -> torch.Tensor:
    """``unfold(tensor, mode) @ khatri_rao(others)`` as one einsum: (dim_mode, R)."""
    order = tensor.ndim
    # contract the largest other mode first: it shrinks the intermediate the most
    others = sorted((m for m in range(order) if m != mode), key=lambda m: -tensor.shape[m])
    spec = _LETTERS[:order] + "," + ",".join(f"{_LETTERS[m]}z" for m in others) + f"->{_LETTERS[mode]}z"
    return torch.einsum(spec, tensor, *(factors[m] for m in others))


def _solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``rhs @ inv(gram)`` for a symmetric PSD ``gram`` (R, R), with a tiny ridge when singular."""
    ridge = torch.finfo(gram.dtype).eps * gram.diagonal().mean().clamp_min(1e-30)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + ridge * eye)
    if info.item() != 0:  # rank-deficient beyond rounding: fall back to the pseudo-inverse
        return rhs @ torch.linalg.pinv(gram, hermitian=True)
    return torch.cholesky_solve(rhs.T, chol).T


def cp_als(tensor: torch.Tensor, rank: int, *, tol: float = 1e-5, max_iter: int = 200, seed: int = 0) -> CPResult:
    """Fit a rank-``rank`` CP decomposition of ``tensor`` by alternating least squares.

    Args:
        tensor: dense tensor of any order >= 2, float32 or float64.
        rank: number of rank-one components.
        tol: stop when the relative error falls by less than ``tol`` times its value in an iteration.
        max_iter: iteration cap.
        seed: seeds the random columns of the SVD init (used where ``rank`` exceeds a mode's size).
    """
    with tensorly_torch(), warnings.catch_warnings():
        # ranks above a mode's size are expected: tensorly warns, then fills those columns randomly
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        init = initialize_cp(tensor, rank, init="svd", random_state=seed)
    factors = [f.to(tensor.dtype) for f in init.factors]
    norm_sq = tensor.pow(2).sum()
    norm = norm_sq.sqrt()
    grams = [f.T @ f for f in factors]  # (R, R) each
    weights = torch.ones(rank, dtype=tensor.dtype, device=tensor.device)
    error, iterations = float("inf"), 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (used after the loop)
        for mode in range(tensor.ndim):
            others = torch.ones_like(grams[0])
            for m, g in enumerate(grams):
                if m != mode:
                    others = others * g
            mttkrp = _mttkrp(tensor, factors, mode)  # (dim, R)
            factor = _solve(others, mttkrp)  # (dim, R), carries the weights
            if mode == tensor.ndim - 1:  # fit from Gram matrices: ||T||^2 - 2<T, X> + ||X||^2
                inner = (mttkrp * factor).sum()
                model_sq = (others * (factor.T @ factor)).sum()
                residual_sq = (norm_sq - 2 * inner + model_sq).clamp_min(0)
                new_error = float(residual_sq.sqrt() / norm) if norm > 0 else 0.0
            weights = torch.linalg.vector_norm(factor, dim=0)
            factors[mode] = factor / weights.clamp_min(torch.finfo(tensor.dtype).tiny)
            grams[mode] = factors[mode].T @ factors[mode]
        converged = error - new_error < tol * error
        error = new_error
        if converged or error == 0.0:
            break
    return CPResult(weights=weights, factors=tuple(factors), relative_error=error, iterations=iterations)
