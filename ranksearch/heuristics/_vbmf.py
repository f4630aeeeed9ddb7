"""The VBMF baseline: ranks estimated by empirical variational Bayesian matrix factorization.

EVBMF (Nakajima, Sugiyama, Babacan, Tomioka, JMLR 2013) models an ``L x M`` matrix (``L <= M``,
``alpha = L / M``) as ``B A^T`` plus i.i.d. Gaussian noise of variance ``sigma^2``, with Gaussian priors
on the columns of ``A`` and ``B`` whose variances are estimated too. Its global solution is analytic: a
shrinkage of the singular values ``gamma_h`` that keeps component ``h`` iff ``gamma_h^2 > M sigma^2 x_evb``,
where ``x_evb = (1 + tau)(1 + alpha / tau)`` and ``tau`` is the positive zero of
``log(tau + 1) + alpha log(tau / alpha + 1) - tau``. The rank is the number of kept components. Unknown
``sigma^2`` is chosen by minimizing the analytic free energy, up to constants
``sum_h psi(gamma_h^2 / (M sigma^2))`` with ``psi(x) = x - log x``, plus
``log(tau(x) + 1) + alpha log(tau(x) / alpha + 1) - tau(x)`` for kept components, over the paper's bracket
for ``sigma^2``.

Kim et al. (2016) use these ranks for one-shot whole-network compression: Tucker-2 ranks from the
mode-0 and mode-1 unfoldings of each conv kernel. MUSCO (Gusak et al., 2019) weakens them towards the full
rank, because plain EVBMF ranks often lose too much accuracy (see :func:`weaken_rank`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from numbers import Real
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from torch import nn

from ..config import CompressionConfig
from ..errors import ConfigError
from ._energy import check_unit_interval, spectral_config

__all__ = ["vbmf_config", "vbmf_rank", "weaken_rank"]

_GRID_POINTS = 200  # log-spaced sigma^2 candidates before the local refinement


class _EVBMF(NamedTuple):
    rank: int
    sigma2: float  # the noise variance used: given, or estimated (0.0 for an all-zero matrix)


def vbmf_rank(matrix: torch.Tensor, *, weakening: float = 0.0, sigma2: float | None = None) -> int:
    """The EVBMF rank of a 2-D ``matrix``, optionally weakened towards its full rank ``min(m, n)``.

    Args:
        matrix: ``(m, n)``, finite; computed in float64 on the CPU from its singular values only.
        weakening: in ``[0, 1]``; 0 is plain EVBMF, 1 the full rank (see :func:`weaken_rank`).
        sigma2: the noise variance of each entry, if known; estimated by EVBMF otherwise.

    The result can be 0 (EVBMF sees only noise, or the matrix is all zeros, and ``weakening`` is small):
    a layer cannot have rank 0, so :func:`vbmf_config` raises such ranks to 1. With ``sigma2`` estimated,
    EVBMF keeps at most ``ceil(L / (1 + alpha)) - 1`` components (the bound behind the paper's ``sigma^2``
    bracket, ``L = min(m, n)``, ``alpha = L / max(m, n)``): about half the rank of a square matrix.
    """
    weakening = check_unit_interval(weakening, "weakening", include_zero=True)
    if sigma2 is not None and (isinstance(sigma2, bool) or not isinstance(sigma2, Real) or not 0 < sigma2 < math.inf):
        raise ConfigError(f"sigma2 must be a finite number > 0 or None, got {sigma2!r}")
    if not isinstance(matrix, torch.Tensor):
        raise ConfigError(f"matrix must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.numel() == 0:
        raise ConfigError(f"matrix must be a non-empty 2-D tensor, got shape {tuple(matrix.shape)}")
    if matrix.is_complex() or not torch.isfinite(matrix).all():
        raise ConfigError("matrix must be real with finite entries")
    values = matrix.detach().to(device="cpu", dtype=torch.float64)
    singular = torch.linalg.svdvals(values).numpy()
    rank = _evbmf(singular, tuple(values.shape), None if sigma2 is None else float(sigma2)).rank
    return weaken_rank(rank, min(values.shape), weakening)


def weaken_rank(rank: int, full_rank: int, weakening: float) -> int:
    """MUSCO's weakened rank: ``floor(rank + weakening * (full_rank - rank))``.

    MUSCO writes it ``int(R - w_musco * (R - r_evbmf))`` with its factor ``w_musco = 1 - weakening``
    (``w_musco = 1`` is plain EVBMF); this parameter runs the other way, so that 0 means no weakening.
    The float is rounded down, as MUSCO's ``int()`` does (with a 1e-9 allowance for float error). Two
    MUSCO heuristics are left out: its floor of 8 on weakened ranks (``min_rank``), and keeping a layer
    at full rank when EVBMF returns 0; here 0 is weakened like any rank.
    """
    weakening = check_unit_interval(weakening, "weakening", include_zero=True)
    if not 0 <= rank <= full_rank:
        raise ConfigError(f"rank must be in [0, full_rank={full_rank}], got {rank!r}")
    return min(full_rank, math.floor(rank + weakening * (full_rank - rank) + 1e-9))


def vbmf_config(
    model: nn.Module, *, method: str = "tucker2", weakening: float = 0.0, layers: Iterable[str] | None = None
) -> CompressionConfig:
    """One-shot EVBMF ranks for a whole model (Kim et al., 2016), optionally weakened as in MUSCO.

    Args:
        model: the dense model (not modified).
        method: ``"tucker2"``: ``(r_out, r_in)`` from the mode-0 (``O x I*kh*kw``) and mode-1
            (``I x O*kh*kw``) unfoldings of each conv kernel; ``"svd"``: the rank of the weight folded to
            ``O x (I*kh*kw)`` (Linear: ``O x I``).
        weakening: in ``[0, 1]``, applied to every rank component (see :func:`weaken_rank`).
        layers: only these layers; by default every compressible layer that supports ``method``
            (the others are skipped). A named layer that cannot take ``method`` is an error.

    A component EVBMF finds to be pure noise (rank 0) gets rank 1, the least a factorized layer can have.
    Ranks go through the method's ``canonical_rank``, so the config applies as it is.
    """
    weakening = check_unit_interval(weakening, "weakening", include_zero=True)
    return spectral_config(model, method, lambda matrix: vbmf_rank(matrix, weakening=weakening), layers)


# --- EVBMF on the singular values -------------------------------------------------------------------


@lru_cache(maxsize=256)
def _evb_threshold(alpha: float) -> float:
    """``x_evb``: the kept components are those with ``gamma^2 / (M sigma^2) > x_evb``."""

    def psi(tau: float) -> float:  # > 0 for small tau, < 0 for large tau; one zero in between
        return math.log1p(tau) + alpha * math.log1p(tau / alpha) - tau

    tau = brentq(psi, 1e-8, 100.0, xtol=1e-14, rtol=1e-14)
    return (1 + tau) * (1 + alpha / tau)


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """The positive solution's ``tau(x)``, the larger root of ``tau^2 - (x - 1 - alpha) tau + alpha = 0``."""
    b = x - (1 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4 * alpha, 0.0)))


def _free_energy(sigma2: np.ndarray, s2: np.ndarray, m: int, alpha: float, x_evb: float) -> np.ndarray:
    """The free energy, up to constants, for each candidate ``sigma2`` (shape ``(G,)``); ``s2``: ``(L,)``."""
    x = s2[None, :] / (m * sigma2[:, None])  # (G, L)
    kept = x > x_evb
    tau = _tau(np.where(kept, x, x_evb), alpha)
    bonus = np.where(kept, np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau, 0.0)
    return (x - np.log(x) + bonus).sum(axis=1)


def _estimate_sigma2(s2: np.ndarray, m: int, alpha: float, x_evb: float) -> float:
    """The free-energy minimizing ``sigma^2`` over the bracket of Nakajima et al. (2013).

    Upper end: everything is noise, ``sum(s2) / (L M)``. Lower end: at most ``H = ceil(L / (1 + alpha)) - 1``
    components are signal, so the rest bounds the noise from below. The objective is not convex: a
    log-spaced grid finds the best basin, a bounded Brent search refines it.
    """
    n = s2.size
    h = math.ceil(n / (1 + alpha)) - 1  # 0-based index of the first component that must be noise
    upper = float(s2.sum()) / (n * m)
    lower = max(float(s2[h]) / (m * x_evb), float(s2[h:].mean()) / m)
    if lower >= upper * (1 - 1e-12):
        return upper
    grid = np.linspace(math.log(lower), math.log(upper), _GRID_POINTS)
    energies = _free_energy(np.exp(grid), s2, m, alpha, x_evb)
    best = int(np.argmin(energies))
    result = minimize_scalar(
        lambda t: float(_free_energy(np.array([math.exp(t)]), s2, m, alpha, x_evb)[0]),
        bounds=(grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return math.exp(result.x) if result.fun <= energies[best] else math.exp(grid[best])


def _evbmf(singular_values: np.ndarray, shape: tuple[int, int], sigma2: float | None) -> _EVBMF:
    """EVBMF rank and noise variance from the singular values of a matrix of ``shape``."""
    n, m = min(shape), max(shape)  # L <= M: transposing does not change the singular values
    alpha = n / m
    s2 = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1][:n] ** 2
    if s2[0] == 0.0:
        return _EVBMF(0, 0.0 if sigma2 is None else sigma2)
    # exact zeros (a noise-free low-rank matrix) would make log(x) infinite: floor them at round-off level
    s2 = np.maximum(s2, s2[0] * (np.finfo(np.float64).eps * m) ** 2)
    x_evb = _evb_threshold(alpha)
    if sigma2 is None:
        sigma2 = _estimate_sigma2(s2, m, alpha, x_evb)
    return _EVBMF(int(np.count_nonzero(s2 > m * sigma2 * x_evb)), sigma2)
