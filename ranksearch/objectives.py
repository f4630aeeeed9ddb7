"""The objectives, samplers and defaults of a search (plain data, no Optuna or torch, so study files and
the Python API share one definition of each).

Objective values: ``accuracy`` is the evaluator's metric after fine-tuning (maximized; it needs labels);
``fidelity`` the agreement of the compressed model's outputs with the dense model's on the validation
batches (maximized, in [0, 1], 1.0 for the dense model; needs no labels, see :mod:`ranksearch.fidelity`);
``macs``, ``params``, ``latency`` (predicted from measured per-layer latencies on the study's device) and
``memory`` (bytes of weights at the deployment dtype plus the peak activations of one forward at the
deployment batch size, see :mod:`ranksearch.memory`) are fractions of the dense model's (minimized), so the
dense model sits at 1.0. A study keeps at least
one quality (``accuracy`` or ``fidelity``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import RanksearchError

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DEFAULT_SAMPLER",
    "DEFAULT_SCREEN",
    "DEFAULT_STORAGE",
    "DEFAULT_STRATEGY",
    "HEARTBEAT_SECONDS",
    "OBJECTIVES",
    "ONE_SHOT_BUDGETS",
    "QUALITY_OBJECTIVES",
    "SAMPLERS",
    "STRATEGIES",
    "TARGET_KINDS",
    "WARM_START_FRACTIONS",
    "check_objectives",
    "check_sampler",
    "check_strategy",
    "check_targets",
    "default_storage",
]

OBJECTIVES = {
    "accuracy": "maximize",
    "macs": "minimize",
    "params": "minimize",
    "latency": "minimize",
    "memory": "minimize",
    "fidelity": "maximize",
}
"""Every objective name and its direction."""
QUALITY_OBJECTIVES = ("accuracy", "fidelity")
"""The objectives that measure how good a compressed model is (maximized); the others are costs."""

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random")

DEFAULT_OBJECTIVES = ("accuracy", "macs")
DEFAULT_SAMPLER = "tpe"
DEFAULT_STORAGE = "sqlite:///runs/{study_name}.db"
"""Where a study is stored unless told otherwise (``{study_name}`` is filled in)."""
WARM_START_FRACTIONS = (0.25, 0.5)
"""Kept-rank fractions of the uniform configs tried first, after the dense model."""
HEARTBEAT_SECONDS = 60
"""Seconds between a running trial's "alive" marks; a trial silent for twice that is failed."""

STRATEGIES = ("allocate", "per-layer")
"""How trials are proposed. ``allocate``: per-layer sensitivity curves are measured once, and each trial
searches a few knobs (budget, method preferences, depth tilt) that a knapsack allocation turns into a whole
config, screened by a cheap proxy among nearby variants. ``per-layer``: the sampler picks every layer's
method and grid level itself."""
DEFAULT_STRATEGY = "allocate"
DEFAULT_SCREEN = 8
"""Candidates scored by the proxy per trial of the ``allocate`` strategy, at most (the best earns the fine-tune)."""
ONE_SHOT_BUDGETS = (0.1, 0.25, 0.5)
"""MACs budgets of the one-shot allocations tried first when a study names no targets."""
TARGET_KINDS = ("macs", "params", "latency", "memory")
"""Costs a study may name targets for (fractions of the dense model's)."""


def default_storage(study_name: str) -> str:
    """:data:`DEFAULT_STORAGE` for ``study_name``."""
    return DEFAULT_STORAGE.replace("{study_name}", study_name)


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Validate an objective list: known names, at least two, distinct, a quality (accuracy or fidelity) among them."""
    if isinstance(objectives, str):
        raise RanksearchError(f"objectives must be a list of names, got the string {objectives!r}")
    objectives = tuple(objectives)
    for name in objectives:
        if name not in OBJECTIVES:
            raise RanksearchError(f"unknown objective {name!r}; available: {', '.join(OBJECTIVES)}")
    if len(objectives) < 2 or len(set(objectives)) != len(objectives):
        raise RanksearchError(f"a rank search needs at least two distinct objectives, got {list(objectives)}")
    if not any(name in QUALITY_OBJECTIVES for name in objectives):
        raise RanksearchError(
            f"objectives must include 'accuracy' or 'fidelity' (the quality to keep), got {list(objectives)}"
        )
    return objectives


def check_sampler(name: str) -> str:
    """Validate a sampler name."""
    if name not in SAMPLERS:
        raise RanksearchError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    return name


def check_strategy(strategy: str) -> str:
    """A known strategy name, or a clear error."""
    if strategy not in STRATEGIES:
        raise RanksearchError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    return strategy


def check_targets(targets: object) -> dict[str, tuple[float, ...]]:
    """Validate budget targets ``{cost: [fractions of dense]}``: known costs, fractions in (0, 1), sorted."""
    if targets is None:
        return {}
    if not isinstance(targets, dict):
        raise RanksearchError(f"targets must map a cost to fractions, e.g. {{macs = [0.1, 0.25]}}, got {targets!r}")
    checked = {}
    for kind, values in targets.items():
        if kind not in TARGET_KINDS:
            raise RanksearchError(f"unknown target cost {kind!r}; available: {', '.join(TARGET_KINDS)}")
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, (list, tuple)) or not values:
            raise RanksearchError(f"targets {kind} must be a non-empty list of fractions, got {values!r}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise RanksearchError(f"targets {kind} must be fractions of dense in (0, 1), got {value!r}")
        checked[kind] = tuple(sorted({float(v) for v in values}))
    return checked
