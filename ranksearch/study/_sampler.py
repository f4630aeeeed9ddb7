"""Optuna samplers by name."""

from __future__ import annotations

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
    check_sampler(name)
    return optuna.samplers.RandomSampler(seed=seed)
