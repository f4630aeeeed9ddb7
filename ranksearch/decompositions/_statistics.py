"""What data-aware methods know of a layer's inputs, and the linear algebra they share.

A layer computes ``y = W x`` on the vectors it reads: a Linear's input rows, or a convolution's im2col
patches (``I/g * prod(k)`` values per output position and group). With ``C = E[x x^T]`` (the inputs'
second moment), the expected output error of an approximation ``W'`` is

    E ||(W - W') x||^2 = tr((W - W') C (W - W')^T) = ||(W - W') S||_F^2,   S S^T = C,

so minimising it is a weighted low-rank problem, solved exactly for SVD by whitening (SVD-LLM) and by
least-squares refits of an output factor for the other methods. Everything here works in float64.

Numerical care: ``C`` may be singular (dead channels, fewer samples than dimensions, constant inputs). It is
damped as ``C + damping * mean(diag C) * I`` before any root or inverse is taken (relative damping, so
the result does not depend on the inputs' scale); an all-zero ``C`` carries no information, and the
whitening is then the identity (the data-aware method reduces to the plain one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

__all__ = [
    "DEFAULT_DAMPING",
    "DataAware",
    "InputStatistics",
    "damped",
    "output_error",
    "refit_if_better",
    "refit_output_factor",
    "whitening",
]

DEFAULT_DAMPING = 1e-5
"""Relative damping of the second moment: ``1e-5 * mean(diag C)`` is added to its diagonal. Small
enough that the optimum barely moves on well-conditioned inputs (tested), large enough that inverse
roots stay below ~300x the typical scale in float64 and finite when cast to float32."""


@dataclass(frozen=True, eq=False)
class InputStatistics:
    """The second moment of one layer's inputs, as the layer reads them.

    Attributes:
        second_moment: ``(g, d, d)`` float64 on the CPU, ``E[x x^T]`` per group, where ``d`` is the
            Linear's ``in_features`` or the conv's ``I/g * prod(kernel)`` (im2col columns in the order of
            ``weight.reshape(O, -1)``) and ``g`` its groups (1 for a Linear).
        samples: number of vectors averaged (Linear rows, or conv output positions times batch).
    """

    second_moment: torch.Tensor
    samples: int
    _digest: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        moment = self.second_moment
        if moment.dim() != 3 or moment.shape[1] != moment.shape[2]:
            raise ValueError(f"second_moment must be (groups, d, d), got {tuple(moment.shape)}")
        if moment.dtype != torch.float64:
            raise ValueError(f"second_moment must be float64, got {moment.dtype}")
        if not torch.isfinite(moment).all():
            raise ValueError("second_moment holds non-finite values (did the calibration inputs overflow?)")

    @property
    def groups(self) -> int:
        return self.second_moment.shape[0]

    @property
    def dim(self) -> int:
        return self.second_moment.shape[1]

    @property
    def digest(self) -> str:
        """BLAKE2b digest of the second moment's bytes: the factor cache's key for what the data says."""
        if not self._digest:
            data = self.second_moment.contiguous()
            h = hashlib.blake2b(digest_size=16)
            h.update(f"{tuple(data.shape)}|{self.samples}".encode())
            h.update(data.reshape(-1).view(torch.uint8).numpy())
            self._digest.append(h.hexdigest())
        return self._digest[0]

    def group(self, index: int) -> torch.Tensor:
        """``(d, d)`` second moment of group ``index``."""
        return self.second_moment[index]

    def check_for(self, groups: int, dim: int, layer: str = "the layer") -> None:
        """Raise a ValueError unless these statistics fit a layer of ``groups`` groups reading ``dim``-vectors."""
        if (self.groups, self.dim) != (groups, dim):
            raise ValueError(
                f"calibration statistics of shape {tuple(self.second_moment.shape)} do not fit {layer} "
                f"(expected ({groups}, {dim}, {dim})): were they gathered on another model?"
            )


def damped(moment: torch.Tensor, damping: float = DEFAULT_DAMPING) -> torch.Tensor | None:
    """``C + damping * mean(diag C) * I`` (float64), or None for an all-zero ``C`` (no information)."""
    moment = moment.double()
    scale = float(torch.diagonal(moment).mean())
    if not scale > 0:
        return None
    return moment + damping * scale * torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)


def whitening(moment: torch.Tensor, damping: float = DEFAULT_DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``(S, S^-1)`` with ``S S = C`` damped; identities when ``C`` is all zero.

    Computed by an eigendecomposition (never fails on a singular ``C``, unlike Cholesky); eigenvalues that
    rounding pushed below zero are clipped to the damping floor.
    """
    dim = moment.shape[0]
    regular = damped(moment, damping)
    if regular is None:
        eye = torch.eye(dim, dtype=torch.float64, device=moment.device)
        return eye, eye.clone()
    values, vectors = torch.linalg.eigh(regular)
    floor = damping * float(torch.diagonal(regular).mean())
    values = values.clamp_min(floor)
    root = (vectors * values.sqrt()) @ vectors.T
    inverse_root = (vectors * values.rsqrt()) @ vectors.T
    return root, inverse_root


def output_error(weight: torch.Tensor, approx: torch.Tensor, moment: torch.Tensor) -> float:
    """``E||(W - W') x||^2 = tr((W - W') C (W - W')^T)`` for ``(rows, d)`` matrices and ``C`` ``(d, d)``."""
    diff = (weight.double() - approx.double()).reshape(weight.shape[0], -1)
    return float(torch.einsum("od,de,oe->", diff, moment.double(), diff).clamp_min(0))


def refit_output_factor(
    weight: torch.Tensor, inner: torch.Tensor, moment: torch.Tensor, damping: float = DEFAULT_DAMPING
) -> torch.Tensor:
    """The output factor ``L`` (``(rows, r)``) minimising ``E||(W - L M) x||^2`` for a fixed inner map ``M``.

    Args:
        weight: ``(rows, d)`` dense matrix (a folded kernel).
        inner: ``(r, d)`` map from the layer's input vectors to the last factor's inputs.
        moment: ``(d, d)`` second moment of the inputs.

    The normal equations ``L (M C M^T) = W C M^T``, solved with ``C`` damped (a ridge that keeps the
    solve finite when ``M C M^T`` is singular). An all-zero ``C`` leaves ``L`` undetermined: the
    least-squares solution in the plain (``C = I``) metric is returned instead.
    """
    regular = damped(moment, damping)
    if regular is None:
        regular = torch.eye(moment.shape[0], dtype=torch.float64, device=moment.device)
    weight, inner = weight.double().reshape(weight.shape[0], -1), inner.double()
    gram = inner @ regular @ inner.T  # (r, r)
    cross = weight @ regular @ inner.T  # (rows, r)
    jitter = 1e-12 * float(torch.diagonal(gram).mean().clamp_min(1e-300))
    gram = gram + jitter * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, cross.T).T


def refit_if_better(
    weight: torch.Tensor,
    output: torch.Tensor,
    inner: torch.Tensor,
    moment: torch.Tensor,
    damping: float = DEFAULT_DAMPING,
) -> torch.Tensor:
    """The output factor of ``W ~= L M`` with the least output error: the refit, or ``output`` as given.

    Args:
        weight: ``(rows, d)``; output: ``(rows, r)`` the plain method's output factor; inner: ``(r, d)``;
        moment: ``(d, d)``. Returned in ``output``'s dtype.

    Keeping the plain factor when the refit is not better (which only the damping can cause) makes the
    data-aware method never worse than the plain one on the calibration statistics.
    """
    weight = weight.double().reshape(weight.shape[0], -1)
    refit = refit_output_factor(weight, inner, moment, damping)
    inner = inner.double()
    plain_error = output_error(weight, output.double() @ inner, moment)
    refit_error = output_error(weight, refit @ inner, moment)
    return (refit if refit_error < plain_error else output.double()).to(output.dtype)


class DataAware:
    """What every data-aware method shares, mixed in before its plain twin (``class X(DataAware, SVD, ...)``):
    the ``damping`` setting (keyword-only; the twin's own arguments pass through), its place in the factor-cache
    key, and a ``prepare`` that checks the statistics fit an ungrouped layer and hands them to ``factorize``.

    Args:
        damping: relative damping of the second moment before roots and solves.
    """

    data_aware = True

    def __init__(self, *args: object, damping: float = DEFAULT_DAMPING, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.damping = damping

    def cache_token(self) -> tuple[object, ...]:
        return (*super().cache_token(), self.damping)

    def prepare(self, module: object, statistics: InputStatistics) -> object:
        statistics.check_for(1, module.weight[0].numel())
        return statistics
