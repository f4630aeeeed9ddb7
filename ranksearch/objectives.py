"""The objectives and samplers a search may use (plain data, no Optuna, so study files can check them).

Objective values: ``accuracy`` is the evaluator's metric after fine-tuning (maximized); ``macs``,
``params`` and ``latency`` (predicted from measured per-layer latencies on the study's device) are
fractions of the dense model's (minimized), so the dense model sits at 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import RanksearchError

__all__ = ["OBJECTIVES", "SAMPLERS", "check_objectives", "check_sampler"]

OBJECTIVES = {"accuracy": "maximize", "macs": "minimize", "params": "minimize", "latency": "minimize"}
"""Every objective name and its direction."""

SAMPLERS = ("tpe", "nsga2", "nsga3", "random")


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
