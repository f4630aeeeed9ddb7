"""Picking the trial to ship: by number, or by a rule over the measured trials.

Rules (combinable): cost caps as fractions of the dense model (``max_costs={"macs": 0.5}``), an
accuracy floor (absolute ``min_accuracy`` or ``max_accuracy_drop`` below dense), and the goal:

- with an accuracy floor: the cheapest trial that reaches it (primary cost, then accuracy);
- ``knee=True``: the knee of the accuracy / primary-cost front among the trials the caps allow;
- otherwise: the most accurate trial under the caps (then the cheapest).

When no trial satisfies a rule the error names the closest one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import RanksearchError
from ._pareto import pareto_mask
from ._results import QUALITY, StudyResults

__all__ = ["Choice", "choose", "knee_point"]

COSTS = ("macs", "params", "latency")


@dataclass(frozen=True)
class Choice:
    """The chosen trial and why: ``rule`` is a one-line description for logs and reports."""

    trial: int
    rule: str
    row: pd.Series


def _describe(row: pd.Series, results: StudyResults) -> str:
    costs = ", ".join(f"{c} {row[f'{c}_ratio']:.3f}" for c in COSTS if pd.notna(row.get(f"{c}_ratio")))
    return f"trial {int(row['trial'])} (accuracy {row[QUALITY]:.4f}, {costs} of dense)"


def knee_point(accuracy: np.ndarray, cost: np.ndarray) -> int:
    """Index of the knee of a (maximize accuracy, minimize cost) point set.

    On the Pareto front, both axes scaled to [0, 1], the knee is the point farthest above the chord
    from the cheapest to the most accurate point: where extra cost stops buying much accuracy. A
    front of one or two points gives its most accurate point.
    """
    accuracy, cost = np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)
    front = np.flatnonzero(pareto_mask(np.stack([accuracy, cost], axis=1), ["maximize", "minimize"]))
    order = front[np.lexsort((-accuracy[front], cost[front]))]  # cheapest first
    if len(order) <= 2:
        return int(order[np.argmax(accuracy[order])])
    a, c = accuracy[order], cost[order]
    a_span, c_span = np.ptp(a) or 1.0, np.ptp(c) or 1.0
    x, y = (c - c[0]) / c_span, (a - a[0]) / a_span  # chord from (0, 0) to (x[-1], y[-1]) = (1, 1)
    distance = (y * x[-1] - x * y[-1]) / math.hypot(x[-1], y[-1])
    return int(order[np.argmax(distance)])


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RanksearchError(f"{name} must be a number > 0 (a fraction of the dense model), got {value!r}")
    return float(value)


def choose(
    results: StudyResults,
    *,
    trial: int | None = None,
    max_costs: Mapping[str, float] | None = None,
    min_accuracy: float | None = None,
    max_accuracy_drop: float | None = None,
    knee: bool = False,
) -> Choice:
    """The trial a rule picks among completed trials (each config once); see the module docstring."""
    max_costs = dict(max_costs or {})
    _check_rule(trial, max_costs, min_accuracy, max_accuracy_drop, knee)
    if trial is not None:
        return _by_number(results, trial)
    candidates = results.completed()
    if candidates.empty:
        raise RanksearchError(f"study {results.name!r} has no completed trial to choose from")
    candidates, rules = _under_caps(results, candidates, max_costs)
    if min_accuracy is not None or max_accuracy_drop is not None:
        floor = _floor(results, min_accuracy, max_accuracy_drop)
        pick, rule = _cheapest_reaching(results, candidates, floor, rules)
    elif knee:
        index = knee_point(candidates[QUALITY].to_numpy(), candidates[_cost_column(results)].to_numpy())
        pick, rule = candidates.iloc[index], f"knee of accuracy vs {results.primary_cost}"
    else:
        order = [QUALITY, _cost_column(results), "trial"]
        pick, rule = candidates.sort_values(order, ascending=[False, True, True]).iloc[0], "most accurate"
    rules.append(rule)
    return Choice(int(pick["trial"]), f"{_describe(pick, results)}: {', '.join(rules)}", pick)


def _check_rule(
    trial: int | None, max_costs: dict[str, float], min_accuracy: float | None, max_drop: float | None, knee: bool
) -> None:
    """Refuse a trial number with a rule, no rule at all, and rules that contradict each other."""
    floor = min_accuracy is not None or max_drop is not None
    ruled = bool(max_costs) or floor or knee
    if trial is not None:
        if ruled:
            raise RanksearchError("give either a trial number or a rule (cost caps, accuracy floor, knee), not both")
        return
    if not ruled:
        raise RanksearchError(
            "say which trial: a trial number, a cost cap (e.g. max macs 0.5), an accuracy floor, or the knee"
        )
    if min_accuracy is not None and max_drop is not None:
        raise RanksearchError("give min_accuracy or max_accuracy_drop, not both")
    if knee and floor:
        raise RanksearchError("the knee rule picks its own accuracy: drop the accuracy floor, or drop knee")


def _cost_column(results: StudyResults) -> str:
    return f"{results.primary_cost}_ratio"


def _under_caps(
    results: StudyResults, candidates: pd.DataFrame, max_costs: dict[str, float]
) -> tuple[pd.DataFrame, list[str]]:
    """The candidates within every cost cap, and the caps as rule texts; an error names the cheapest trial."""
    rules = []
    for cost, cap in max_costs.items():
        if cost not in COSTS:
            raise RanksearchError(f"unknown cost {cost!r} for a cap; available: {', '.join(COSTS)}")
        cap = _check_fraction(f"max {cost}", cap)
        column = f"{cost}_ratio"
        if candidates[column].isna().all():
            raise RanksearchError(f"study {results.name!r} recorded no {cost}: it cannot be capped")
        allowed = candidates[candidates[column] <= cap + 1e-12]
        if allowed.empty:
            cheapest = candidates.loc[candidates[column].idxmin()]
            raise RanksearchError(
                f"no trial has {cost} <= {cap:g} of dense; the cheapest in {cost} is {_describe(cheapest, results)}"
            )
        candidates = allowed
        rules.append(f"{cost} <= {cap:g}")
    return candidates, rules


def _cheapest_reaching(
    results: StudyResults, candidates: pd.DataFrame, floor: float, rules: list[str]
) -> tuple[pd.Series, str]:
    """The cheapest candidate (primary cost) at accuracy ``floor`` or above; an error names the best one."""
    cost_column = _cost_column(results)
    reaching = candidates[candidates[QUALITY] >= floor - 1e-12]
    if reaching.empty:
        best = candidates.sort_values([QUALITY, cost_column], ascending=[False, True]).iloc[0]
        where = f" with {' and '.join(rules)}" if rules else ""
        raise RanksearchError(f"no trial{where} reaches accuracy {floor:.4f}; the best is {_describe(best, results)}")
    pick = reaching.sort_values([cost_column, QUALITY, "trial"], ascending=[True, False, True]).iloc[0]
    return pick, f"accuracy >= {floor:.4f}, cheapest in {results.primary_cost}"


def _floor(results: StudyResults, min_accuracy: float | None, max_drop: float | None) -> float:
    if min_accuracy is not None:
        if (
            isinstance(min_accuracy, bool)
            or not isinstance(min_accuracy, (int, float))
            or not math.isfinite(min_accuracy)
        ):
            raise RanksearchError(f"min_accuracy must be a finite number, got {min_accuracy!r}")
        return float(min_accuracy)
    if (
        isinstance(max_drop, bool)
        or not isinstance(max_drop, (int, float))
        or not math.isfinite(max_drop)
        or max_drop < 0
    ):
        raise RanksearchError(f"max_accuracy_drop must be a number >= 0, got {max_drop!r}")
    return float(results.dense["accuracy"]) - float(max_drop)


def _by_number(results: StudyResults, trial: int) -> Choice:
    if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)):
        raise RanksearchError(f"a trial number must be an int, got {trial!r}")
    frame = results.trials
    rows = frame[frame["trial"] == int(trial)]
    if rows.empty:
        numbers = frame["trial"]
        span = f"finished trials are {numbers.min()}..{numbers.max()}" if len(numbers) else "it has no finished trial"
        raise RanksearchError(f"study {results.name!r} has no trial {trial} ({span})")
    row = rows.iloc[0]
    if row["state"] != "complete":
        raise RanksearchError(f"trial {trial} of study {results.name!r} failed ({row['failure']}): choose another")
    return Choice(int(trial), f"{_describe(row, results)}: chosen by number", row)
