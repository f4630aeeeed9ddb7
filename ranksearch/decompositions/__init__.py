"""Decomposition methods, one module each, registered by name.

Each method module is imported here explicitly, so the registry never depends on import order
elsewhere. A new method is one new file with one ``Decomposition`` subclass, plus its import line;
the test suite then holds it to the same contract as the others (see :class:`Decomposition`).
"""

from __future__ import annotations

from . import cp, cp_refit, svd, svd_whiten, tt, tt_refit, tucker2, tucker2_hooi, tucker2_whiten  # noqa: F401  (importing registers the methods)  # noqa: F401, I001  (data-aware: registered after)
from ._base import (
    Cost,
    Decomposition,
    FactorizedLayer,
    Factors,
    Rank,
    available_methods,
    get_method,
    relative_error,
    tensorly_torch,
    unregister,
)
from ._modules import is_hf_conv1d, is_linear_like
from ._statistics import InputStatistics
from .tt import TTMatrixLinear

__all__ = [
    "Cost",
    "Decomposition",
    "FactorizedLayer",
    "Factors",
    "InputStatistics",
    "Rank",
    "TTMatrixLinear",
    "available_methods",
    "get_method",
    "is_hf_conv1d",
    "is_linear_like",
    "relative_error",
    "tensorly_torch",
    "unregister",
]
