"""Optuna samplers by name."""

from __future__ import annotations

import logging
import warnings

import optuna

from ..objectives import check_sampler

__all__ = ["make_sampler"]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler by name. TPE (multivariate, grouped) is the default: it models the conditional
    per-layer space (a rank only exists for the chosen method); NSGA-II/III treat it as independent
    parameters and waste trials on inactive ones.
    """
    if name == "tpe":
        with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "nsga3":
        with warnings.catch_warnings():  # experimental in Optuna; chosen explicitly by the user
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.NSGAIIISampler(seed=seed)
    if name == "gp":
        return _gp_sampler(seed)
    check_sampler(name)
    return optuna.samplers.RandomSampler(seed=seed)


def _gp_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's Gaussian-process sampler (log-expected hypervolume improvement with several objectives).

    It models the continuous knobs of the ``allocate`` strategy; a conditional per-layer space falls back to
    independent random sampling for the parameters it cannot model, so its warning per parameter is off.
    Without the optional ``greenlet`` package Optuna logs, once, that its acquisition optimizer runs
    sequentially: that only costs time, which a search's wall-clock budget already counts, so it is quieted.
    """
    logging.getLogger("optuna._gp.batched_lbfgsb").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
