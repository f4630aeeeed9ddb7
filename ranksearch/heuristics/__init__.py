"""Established rank-selection methods, as baselines and warm starts for the search.

Each returns a :class:`~ranksearch.CompressionConfig` without any fine-tuning:

- ``uniform_config``: one kept-rank fraction, or one MACs/params target, for every layer;
- ``error_balanced_config``: per-layer ranks minimizing the largest relative layer error under a global
  MACs/params budget (in the spirit of ALDS, Liebenwein et al. 2021);
- ``energy_config``: per layer, the smallest rank keeping a fraction of the squared singular values;
- ``vbmf_config``: per layer, the rank estimated by empirical variational Bayesian matrix factorization
  (Nakajima et al. 2013), as in Kim et al. 2016, with MUSCO's weakening (Gusak et al. 2019).

No Optuna here: ``RankSearch(warm_start_configs=[...])`` enqueues them as first trials.
"""

from __future__ import annotations

from ._allocation import Allocation, LayerAllocation, error_balanced_allocation, error_balanced_config
from ._energy import energy_config, energy_rank
from ._sweep import heuristic_configs
from ._uniform import uniform_config
from ._vbmf import vbmf_config, vbmf_rank, weaken_rank

__all__ = [
    "Allocation",
    "LayerAllocation",
    "energy_config",
    "energy_rank",
    "error_balanced_allocation",
    "error_balanced_config",
    "heuristic_configs",
    "uniform_config",
    "vbmf_config",
    "vbmf_rank",
    "weaken_rank",
]
