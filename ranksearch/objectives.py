"""The objectives, samplers and defaults of a search (plain data, no Optuna or torch, so study files and
the Python API share one definition of each).

Objective values: ``accuracy`` is the evaluator's metric after fine-tuning (maximized); ``macs``,
``params`` and ``latency`` (predicted from measured per-layer latencies on the study's device) are
fractions of the dense model's (minimized), so the dense model sits at 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import RanksearchError

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DEFAULT_SAMPLER",
    "DEFAULT_STORAGE",
    "HEARTBEAT_SECONDS",
    "OBJECTIVES",
    "SAMPLERS",
    "WARM_START_FRACTIONS",
    "check_objectives",
    "check_sampler",
    "default_storage",
]

OBJECTIVES = {"accuracy": "maximize", "macs": "minimize", "params": "minimize", "latency": "minimize"}
"""Every objective name and its direction."""

SAMPLERS = ("tpe", "nsga2", "nsga3", "random")

DEFAULT_OBJECTIVES = ("accuracy", "macs")
DEFAULT_SAMPLER = "tpe"
DEFAULT_STORAGE = "sqlite:///runs/{study_name}.db"
"""Where a study is stored unless told otherwise (``{study_name}`` is filled in)."""
WARM_START_FRACTIONS = (0.25, 0.5)
"""Kept-rank fractions of the uniform configs tried first, after the dense model."""
HEARTBEAT_SECONDS = 60
"""Seconds between a running trial's "alive" marks; a trial silent for twice that is failed."""


def default_storage(study_name: str) -> str:
    """:data:`DEFAULT_STORAGE` for ``study_name``."""
    return DEFAULT_STORAGE.replace("{study_name}", study_name)


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Validate an objective list: known names, at least two, distinct, accuracy among them."""
    if isinstance(objectives, str):
        raise RanksearchError(f"objectives must be a list of names, got the string {objectives!r}")
    objectives = tuple(objectives)
    for name in objectives:
        if name not in OBJECTIVES:
            raise RanksearchError(f"unknown objective {name!r}; available: {', '.join(OBJECTIVES)}")
    if len(objectives) < 2 or len(set(objectives)) != len(objectives):
        raise RanksearchError(f"a rank search needs at least two distinct objectives, got {list(objectives)}")
    if "accuracy" not in objectives:
        raise RanksearchError(f"objectives must include 'accuracy' (the quality to keep), got {list(objectives)}")
    return objectives


def check_sampler(name: str) -> str:
    """Validate a sampler name."""
    if name not in SAMPLERS:
        raise RanksearchError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    return name
