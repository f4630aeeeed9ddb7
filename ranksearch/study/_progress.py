"""The progress line printed after each finished trial: count, objectives, best so far, Pareto size, ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import optuna

from ..record import DUPLICATE_OF, OVER_BUDGET
from ._budget import finished_trials

__all__ = ["Progress"]


class Progress:
    """An Optuna callback that prints one line per finished trial.

    With a budget the count is the study's (every worker's finished trials, out of the budget) and the
    ETA comes from the study's pace since this process started; otherwise it counts this call's trials.
    """

    def __init__(
        self,
        study: optuna.Study,
        objectives: Sequence[str],
        n_trials: int | None,
        budget: int | None = None,
        label: str = "",
    ) -> None:
        self.study, self.objectives, self.n_trials, self.budget = study, tuple(objectives), n_trials, budget
        self.prefix = f"{label} " if label else ""
        self.start, self.done = time.perf_counter(), 0
        self.finished_at_start = finished_trials(study) if budget is not None else 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get(OVER_BUDGET):
            return
        self.done += 1
        elapsed = time.perf_counter() - self.start
        if self.budget is not None:
            done, total = finished_trials(self.study), self.budget
            pace = elapsed / max(1, done - self.finished_at_start)
        else:
            done, total, pace = self.done, self.n_trials, elapsed / self.done
        eta = f" | ETA {_duration(pace * max(0, total - done))}" if total else ""
        front = study.best_trials  # the best value of each objective is always on the front
        pareto = sum(DUPLICATE_OF not in t.user_attrs for t in front)
        print(
            f"{self.prefix}[{done}{f'/{total}' if total else ''}] trial {trial.number}: {self._now(trial)} | best "
            f"{self._best(study, front)} | pareto {pareto} | {elapsed / self.done:.1f} s/trial{eta}",
            file=sys.stdout,
            flush=True,
        )

    def _now(self, trial: optuna.trial.FrozenTrial) -> str:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            return " ".join(f"{o}={v:.4g}" for o, v in zip(self.objectives, trial.values, strict=True))
        return f"{trial.state.name.lower()}: {trial.user_attrs.get('failure', '')}"[:80]

    def _best(self, study: optuna.Study, front: list[optuna.trial.FrozenTrial]) -> str:
        best = []
        for i, (name, direction) in enumerate(zip(self.objectives, study.directions, strict=True)):
            pick = max if direction == optuna.study.StudyDirection.MAXIMIZE else min
            if front:
                best.append(f"{name}={pick(t.values[i] for t in front):.4g}")
        return " ".join(best)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
