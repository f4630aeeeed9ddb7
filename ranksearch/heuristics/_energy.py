"""The energy baseline: per layer, the smallest rank that keeps a share of the weight's spectral energy.

For ``svd`` the spectrum is that of the weight folded to ``O x (I*kh*kw)`` (Linear: ``O x I``); for
``tucker2`` each channel rank comes from its own unfolding: ``r_out`` from mode 0 (``O x I*kh*kw``) and
``r_in`` from mode 1 (``I x O*kh*kw``), as in Kim et al. (2016) where ranks are chosen per unfolding.

This module also holds what the spectral baselines share (the VBMF one included): the matrices whose
ranks make a layer's rank, and the loop that builds the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from numbers import Real

import torch
from torch import nn

from ..attention import searchable_view
from ..config import CompressionConfig
from ..decompositions import Rank, get_method
from ..errors import ConfigError
from ._layers import check_finite_weights, select_layers

__all__ = ["energy_config", "energy_rank"]

SPECTRAL_METHODS = ("svd", "tucker2")
"""The methods whose ranks are ranks of weight matrices (a fold or an unfolding)."""


def check_unit_interval(value: object, what: str, *, include_zero: bool) -> float:
    """``value`` as a float in ``[0, 1]`` (or ``(0, 1]``), or a ConfigError naming ``what``."""
    interval = "[0, 1]" if include_zero else "(0, 1]"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{what} must be a number in {interval}, got {value!r}")
    number = float(value)
    inside = 0.0 <= number <= 1.0 if include_zero else 0.0 < number <= 1.0
    if not inside:  # also catches NaN
        raise ConfigError(f"{what} must be a number in {interval}, got {value!r}")
    return number


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest ``r`` with ``sum(s[:r]**2) >= energy * sum(s**2)``, at least 1.

    Args:
        singular_values: 1-D, non-negative, finite; sorted here in decreasing order (as an SVD returns them).
        energy: the share of the squared Frobenius norm to keep, in ``(0, 1]``.

    An all-zero spectrum gives 1. The comparison allows a relative 1e-12 so that an energy computed as
    a ratio of the same sums (e.g. 9/14 for ``s = [3, 2, 1]``) hits its rank exactly.
    """
    energy = check_unit_interval(energy, "energy", include_zero=False)
    if not isinstance(singular_values, torch.Tensor) or singular_values.ndim != 1 or singular_values.numel() == 0:
        raise ConfigError("singular_values must be a non-empty 1-D tensor")
    s = singular_values.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ConfigError("singular_values must be finite and non-negative")
    cumulative = torch.cumsum(torch.sort(s, descending=True).values ** 2, dim=0)
    total = float(cumulative[-1])
    if total == 0.0:
        return 1
    kept = cumulative / total >= energy * (1 - 1e-12)
    return int(torch.nonzero(kept)[0, 0]) + 1


def energy_config(
    model: nn.Module, energy: float, *, method: str = "svd", layers: Iterable[str] | None = None
) -> CompressionConfig:
    """Per layer, the rank (or ``(r_out, r_in)`` for ``tucker2``) keeping ``energy`` of the spectrum.

    Args:
        model: the dense model (not modified).
        energy: share of each matrix's squared singular values to keep, in ``(0, 1]``.
        method: ``"svd"`` or ``"tucker2"``.
        layers: only these layers; by default every compressible layer that supports ``method``
            (the others are skipped). A named layer that cannot take ``method`` is an error.

    Ranks go through the method's ``canonical_rank``, so the config applies as it is.
    """
    energy = check_unit_interval(energy, "energy", include_zero=False)
    return spectral_config(model, method, lambda matrix: energy_rank(torch.linalg.svdvals(matrix), energy), layers)


# --- shared by the spectral baselines ---------------------------------------------------------------


def check_spectral_method(method: object) -> str:
    """``method`` if a spectral baseline can choose its ranks, else a ConfigError listing the ones it can."""
    if method not in SPECTRAL_METHODS:
        raise ConfigError(
            f"method {method!r} is not supported by this baseline; supported: {', '.join(SPECTRAL_METHODS)}"
        )
    return method


def layer_matrices(weight: torch.Tensor, method: str) -> list[torch.Tensor]:
    """The float64 CPU matrices whose ranks make the layer's rank, one per rank component.

    ``svd``: ``[W folded to (O, I*kh*kw)]`` (Linear: ``[W]``). ``tucker2``: the mode-0 unfolding
    ``(O, I*kh*kw)`` and the mode-1 unfolding ``(I, O*kh*kw)`` (column order does not change singular values).
    """
    w = weight.detach().to(device="cpu", dtype=torch.float64)
    mode0 = w.reshape(w.shape[0], -1)
    if method == "svd":
        return [mode0]
    return [mode0, w.transpose(0, 1).reshape(w.shape[1], -1)]


def spectral_config(
    model: nn.Module,
    method: str,
    rank_of: Callable[[torch.Tensor], int],
    layers: Iterable[str] | None,
) -> CompressionConfig:
    """A config whose every rank component is ``rank_of(matrix)`` (raised to 1) over :func:`layer_matrices`."""
    check_spectral_method(method)
    decomposition = get_method(method)
    model = searchable_view(model)  # attention projections are layers
    names = select_layers(model, method, layers)
    check_finite_weights(model, names)
    entries: dict[str, tuple[str, Rank]] = {}
    for name in names:
        module = model.get_submodule(name)
        ranks = tuple(max(1, rank_of(matrix)) for matrix in layer_matrices(module.weight, method))
        rank = ranks[0] if method == "svd" else ranks
        entries[name] = (method, decomposition.canonical_rank(module, rank))
    return CompressionConfig(entries)
