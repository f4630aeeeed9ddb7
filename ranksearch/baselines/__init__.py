"""Established rank-selection methods, as baselines and warm starts for the search.

Each returns a :class:`~ranksearch.CompressionConfig`: ``uniform_config`` (one kept-rank fraction, or
one MACs/params target, for every layer). No Optuna here.
"""

from __future__ import annotations

from ._uniform import uniform_config

__all__ = ["uniform_config"]
