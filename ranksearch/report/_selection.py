"""Picking the trial to ship: by number, or by a rule over the measured trials.

Rules (combinable): cost caps as fractions of the dense model (``max_costs={"macs": 0.5}``), quality
floors (an accuracy floor, absolute ``min_accuracy`` or ``max_accuracy_drop`` below dense, and a fidelity
floor ``min_fidelity``, in [0, 1] where the dense model is 1.0; each needs the study to have measured that
quality, and both may be given), and the goal:

- with a floor: the cheapest trial that reaches every floor (primary cost, then the study's quality);
- ``knee=True``: the knee of the quality / primary-cost front among the trials the caps allow;
- otherwise: the best trial under the caps (highest quality, then the cheapest).

The quality is :attr:`StudyResults.quality`: ``accuracy`` when it is an objective, else ``fidelity``. When
no trial satisfies a rule the error names the closest one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import RanksearchError
from ._pareto import pareto_mask
from ._results import StudyResults

__all__ = ["Choice", "choose", "knee_point"]

COSTS = ("macs", "params", "latency", "memory")


@dataclass(frozen=True)
class Choice:
    """The chosen trial and why: ``rule`` is a one-line description for logs and reports."""

    trial: int
    rule: str
    row: pd.Series
    note: str = ""
    """A hint for the user, or "": a cost cap the study did not aim at, which its best trial under it
    underspends (:func:`cap_note`)."""


def _describe(row: pd.Series, results: StudyResults) -> str:
    qualities = [f"{q} {row[q]:.4f}" for q in results.qualities if pd.notna(row.get(q))]
    costs = ", ".join(f"{c} {row[f'{c}_ratio']:.3f}" for c in COSTS if pd.notna(row.get(f"{c}_ratio")))
    aware = int(row.get("data_aware_layers") or 0)
    note = f"; {aware} layer(s) data-aware" if aware else ""
    return f"trial {int(row['trial'])} ({', '.join([*qualities, costs])} of dense{note})"


def _best_words(quality: str) -> str:
    return "most accurate" if quality == "accuracy" else f"highest {quality}"


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
    min_fidelity: float | None = None,
) -> Choice:
    """The trial a rule picks among completed trials (each config once); see the module docstring."""
    max_costs = dict(max_costs or {})
    floors = {"min_accuracy": min_accuracy, "max_accuracy_drop": max_accuracy_drop, "min_fidelity": min_fidelity}
    _check_rule(trial, max_costs, floors, knee)
    if trial is not None:
        return _by_number(results, trial)
    candidates = results.completed()
    if candidates.empty:
        raise RanksearchError(f"study {results.name!r} has no completed trial to choose from")
    if "latency" in max_costs:  # caps compare the prediction corrected by the study's timed checks
        candidates = results.corrected_latency(candidates)
    candidates, rules = _under_caps(results, candidates, max_costs)
    quality = results.quality
    if any(value is not None for value in floors.values()):
        pick, rule = _cheapest_reaching(results, candidates, _floors(results, **floors), rules)
    elif knee:
        index = knee_point(candidates[quality].to_numpy(), candidates[_cost_column(results)].to_numpy())
        pick, rule = candidates.iloc[index], f"knee of {quality} vs {results.primary_cost}"
    else:
        order = [quality, _cost_column(results), "trial"]
        pick, rule = candidates.sort_values(order, ascending=[False, True, True]).iloc[0], _best_words(quality)
    rules.append(rule)
    note = cap_note(results, max_costs, pick)
    return Choice(int(pick["trial"]), f"{_describe(pick, results)}: {', '.join(rules)}", pick, note)


UNDERSPENT = 0.8
"""A chosen trial using less than this share of a cap the study did not aim at gets a :func:`cap_note`."""


def cap_note(results: StudyResults, max_costs: Mapping[str, float], pick: pd.Series) -> str:
    """Why the pick may sit far under a cap: the study aimed its trials at other budgets of that cost.

    A search concentrates its trials at and under its targets, so between two targets it has few points (on
    ResNet-20 / Fashion-MNIST, a study aimed at 10 / 25 / 50% of the MACs had nothing under 20% better than its
    10% point; one aimed at 20% found configs at 16-19%, far more accurate: ``benchmarks/RESULTS_fashion.md``).
    """
    targets = results.settings.get("targets") or {}
    for cost, cap in max_costs.items():
        aimed = [float(t) for t in targets.get(cost, [])]
        used = pick.get(f"{cost}_ratio")
        if not aimed or any(math.isclose(cap, t, rel_tol=1e-6) for t in aimed) or not used < UNDERSPENT * cap:
            continue
        listed = ", ".join(f"{t:g}" for t in sorted(aimed))
        return (
            f"this study aimed at {cost} {listed}, not {cap:g}, and its best trial under {cap:g} uses {used:.3f}; "
            f"a study that names {cap:g} as a target (targets = {{ {cost} = [{cap:g}] }}) searches there"
        )
    return ""


def _check_rule(trial: int | None, max_costs: dict[str, float], floors: dict[str, float | None], knee: bool) -> None:
    """Refuse a trial number with a rule, no rule at all, and rules that contradict each other."""
    given = [name for name, value in floors.items() if value is not None]
    ruled = bool(max_costs) or bool(given) or knee
    if trial is not None:
        if ruled:
            raise RanksearchError("give either a trial number or a rule (cost caps, quality floors, knee), not both")
        return
    if not ruled:
        raise RanksearchError(
            "say which trial: a trial number, a cost cap (e.g. max macs 0.5), an accuracy or fidelity floor, "
            "or the knee"
        )
    if "min_accuracy" in given and "max_accuracy_drop" in given:
        raise RanksearchError("give min_accuracy or max_accuracy_drop, not both")
    if knee and given:
        what = "accuracy" if given[0] != "min_fidelity" else "fidelity"
        raise RanksearchError(f"the knee rule picks its own {what}: drop the {what} floor, or drop knee")


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
    results: StudyResults, candidates: pd.DataFrame, floors: dict[str, float], rules: list[str]
) -> tuple[pd.Series, str]:
    """The cheapest candidate (primary cost) at or above every floor (``{quality: floor}``); an error names the
    best one in the first floor's quality."""
    cost_column, quality = _cost_column(results), results.quality
    reaching = candidates
    for column, floor in floors.items():
        reaching = reaching[reaching[column] >= floor - 1e-12]
    wanted = " and ".join(f"{column} {floor:.4f}" for column, floor in floors.items())
    if reaching.empty:
        first = next(iter(floors))
        best = candidates.sort_values([first, cost_column], ascending=[False, True]).iloc[0]
        where = f" with {' and '.join(rules)}" if rules else ""
        raise RanksearchError(f"no trial{where} reaches {wanted}; the best is {_describe(best, results)}")
    pick = reaching.sort_values([cost_column, quality, "trial"], ascending=[True, False, True]).iloc[0]
    reached = ", ".join(f"{column} >= {floor:.4f}" for column, floor in floors.items())
    return pick, f"{reached}, cheapest in {results.primary_cost}"


def _number(name: str, value: object, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high], or an error ``"<name> must be <what>, got <value>"``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise RanksearchError(f"{name} must be {what}, got {value!r}")
    return float(value)


def _floors(
    results: StudyResults, min_accuracy: float | None, max_accuracy_drop: float | None, min_fidelity: float | None
) -> dict[str, float]:
    """The floors given, validated, as ``{quality column: floor}`` (accuracy first)."""
    floors = {}
    if min_accuracy is not None:
        floors["accuracy"] = _number("min_accuracy", min_accuracy, "a finite number")
        _require_quality(results, "accuracy", "min_accuracy")
    elif max_accuracy_drop is not None:
        drop = _number("max_accuracy_drop", max_accuracy_drop, "a number >= 0", low=0.0)
        _require_quality(results, "accuracy", "max_accuracy_drop")
        floors["accuracy"] = results.dense_quality("accuracy") - drop
    if min_fidelity is not None:
        floors["fidelity"] = _number("min_fidelity", min_fidelity, "a number in [0, 1] (the dense model: 1.0)", 0, 1)
        _require_quality(results, "fidelity", "min_fidelity")
    return floors


def _require_quality(results: StudyResults, quality: str, option: str) -> None:
    """An error when the study measured no ``quality``, saying which floor it can take instead."""
    if quality in results.qualities and (quality == "fidelity" or math.isfinite(results.dense_quality(quality))):
        return
    if quality == "accuracy":
        raise RanksearchError(
            f"{option}: study {results.name!r} measured no accuracy (its batches carry no labels); its quality is "
            "fidelity, the agreement with the dense model's outputs: give a fidelity floor (min_fidelity, e.g. 0.95)"
        )
    raise RanksearchError(
        f"{option}: study {results.name!r} measured no fidelity (objectives {', '.join(results.objectives)}): "
        "give an accuracy floor (min_accuracy or max_accuracy_drop), or run a study with the objective 'fidelity'"
    )


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
