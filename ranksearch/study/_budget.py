"""A trial budget shared exactly by every process that runs one study.

The budget counts trials that used up an evaluation: finished, failed with a reason (a failed
evaluation), and running. A trial interrupted by Ctrl-C, or whose worker was killed (failed by the
heartbeat), ends failed without a reason: it does not count, and the study runs another in its place.
Two workers that both start a trial for the last slot are told apart by trial number (Optuna numbers
a study's trials uniquely, in creation order): the later one is pruned before it evaluates anything.
"""

from __future__ import annotations

import warnings

import optuna

from ..record import INTERRUPTED, OVER_BUDGET

__all__ = ["TrialBudget", "counts_against_budget", "fail_stale_trials", "finished_trials"]

COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState[state] for state in ("COMPLETE", "FAIL", "RUNNING"))


def counts_against_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses up budget: it is running, finished, or failed with a reason (a failed evaluation),
    and not interrupted. Every record stores ``failure`` (None when the evaluation went well), so a trial that
    Ctrl-C stopped after its record was stored is told apart by its ``interrupted`` mark alone."""
    attrs = trial.user_attrs
    return trial.state != FAIL or (attrs.get("failure") is not None and not attrs.get(INTERRUPTED))


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark failed the running trials whose heartbeat stopped (no-op for storages without heartbeats)."""
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def finished_trials(study: optuna.Study) -> int:
    """Finished trials and failed evaluations (not queued, running, interrupted or killed ones)."""
    return sum(map(counts_against_budget, study.get_trials(deepcopy=False, states=(COMPLETE, FAIL))))


class TrialBudget:
    """The study's total of ``budget`` trials, checked before each trial starts and after each ends."""

    def __init__(self, study: optuna.Study, budget: int) -> None:
        self.study, self.budget = study, budget

    def live_trials(self) -> int:
        """Trials that count against the budget: finished trials, failed evaluations and running trials."""
        trials = self.study.get_trials(deepcopy=False, states=(COMPLETE, FAIL, RUNNING))
        return sum(map(counts_against_budget, trials))

    def spent(self) -> bool:
        return self.live_trials() >= self.budget

    def stop_when_spent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """An Optuna callback: stop the study once the budget is spent."""
        if self.spent():
            study.stop()

    def claim_slot(self, trial: optuna.Trial) -> None:
        """Prune ``trial`` if trials created before it spent the budget (another worker won the race)."""
        trials = self.study.get_trials(deepcopy=False, states=(COMPLETE, FAIL, RUNNING))
        earlier = sum(counts_against_budget(t) and t.number < trial.number for t in trials)
        if earlier >= self.budget:
            trial.set_user_attr(OVER_BUDGET, True)
            self.study.stop()
            raise optuna.TrialPruned(f"the budget of {self.budget} trials is spent")
