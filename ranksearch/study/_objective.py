"""The Optuna objective: a trial's config is suggested, measured once, and stored as a trial record."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Protocol

import optuna

from ..config import CompressionConfig
from ..evaluator import Evaluator
from ..latency import LatencySettings
from ..record import CONFIG, DENSE, DUPLICATE_OF, INTERRUPTED, Measurements, param_name
from ..space import LayerChoices, SearchSpace
from ._budget import TrialBudget

__all__ = ["TrialFailed", "TrialObjective"]

Measured = tuple[int, tuple[float, ...], dict[str, object]]
MEASURED_ATTRS = frozenset({CONFIG, *(f.name for f in fields(Measurements))})
"""What a repeated config copies from its first measurement (not how that trial was proposed)."""


class Proposer(Protocol):
    """Proposes a trial's config by other means than per-layer parameters (see ``_allocate``); ``seen``
    tells it which configs were measured already."""

    seen: Callable[[CompressionConfig], bool]

    def suggest(self, trial: optuna.Trial) -> CompressionConfig: ...


class TrialFailed(Exception):
    """A trial whose evaluation failed (the reason is in its ``failure`` user attribute)."""


class TrialObjective:
    """Suggest a config per trial (a method per layer, a rank fraction for that method), evaluate it, and
    store its measurements; a config measured before is not evaluated again (the evaluator is
    deterministic): the trial copies the earlier measurements and records ``duplicate_of``.
    """

    def __init__(
        self,
        study: optuna.Study,
        evaluator: Evaluator,
        space: SearchSpace,
        layers: Mapping[str, LayerChoices],
        objectives: Sequence[str],
        latency: LatencySettings | None,
        proposer: Proposer | None = None,
    ) -> None:
        self.study, self.evaluator, self.space, self.layers = study, evaluator, space, layers
        self.objectives, self.latency = tuple(objectives), latency
        self.proposer = proposer
        if proposer is not None:  # new trials should propose new configs, not repeat measured ones
            proposer.seen = self._seen
        self.budget: TrialBudget | None = None
        self._measured_configs: dict[str, Measured] | None = None
        self._others: set[str] | None = None  # configs of other trials, complete or running (this trial's read)

    def suggest(self, trial: optuna.Trial) -> CompressionConfig:
        """The config a trial proposes: the proposer's (the ``allocate`` strategy), or per layer a method and
        a grid fraction for that method (``per-layer``)."""
        if self.proposer is not None:
            return self.proposer.suggest(trial)
        picks = {}
        for name, layer in self.layers.items():
            method = trial.suggest_categorical(param_name(name), layer.methods)
            fraction = None if method == DENSE else trial.suggest_categorical(param_name(name, method), layer.fractions)
            picks[name] = (method, fraction)
        return self.space.to_config(self.layers, picks)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._measure(trial)
        except KeyboardInterrupt:  # wherever Ctrl-C lands (suggesting, evaluating, storing the record)
            self._mark_interrupted(trial)
            raise

    @staticmethod
    def _mark_interrupted(trial: optuna.Trial) -> None:
        """Say why the trial failed, so that it is run again; Optuna marks it failed either way."""
        with contextlib.suppress(Exception):  # the storage write Ctrl-C cut short may have left it unusable:
            trial.set_user_attr(INTERRUPTED, True)  # failed without a reason, it does not count either

    def _measure(self, trial: optuna.Trial) -> tuple[float, ...]:
        if self.budget is not None:
            self.budget.claim_slot(trial)
        self._others = None
        config = self.suggest(trial)  # the sensitivity pass may run here
        trial.set_user_attr(CONFIG, config.to_dict())  # now, so that other workers see it is being measured
        key = config.to_json(indent=None)
        earlier = self._measured().get(key)
        if earlier is not None:  # samplers do propose a config twice: reuse its measurements
            number, values, attrs = earlier
            for name, value in attrs.items():
                trial.set_user_attr(name, value)
            trial.set_user_attr(DUPLICATE_OF, number)
            return values
        result = self.evaluator.evaluate(config, measure_latency=self._times_whole_model(trial))
        attrs = result.attributes()
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        if result.failure is not None:
            raise TrialFailed(result.failure)
        values = tuple(result.objective(name) for name in self.objectives)
        self._measured()[key] = (trial.number, values, attrs)
        return values

    def _times_whole_model(self, trial: optuna.Trial) -> bool:
        """Every ``check_every``-th trial also times the whole compressed model (a check of the prediction)."""
        return (
            self.latency is not None and self.latency.check_every > 0 and trial.number % self.latency.check_every == 0
        )

    def _seen(self, config: CompressionConfig) -> bool:
        """Whether ``config`` was measured, or is being measured by another worker (read from the storage)."""
        key = config.to_json(indent=None)
        if key in self._measured():
            return True
        if self._others is None:  # read once per trial: the proposer asks about several candidates
            states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
            self._others = {
                CompressionConfig.from_dict(t.user_attrs[CONFIG]).to_json(indent=None)
                for t in self.study.get_trials(deepcopy=False, states=states)
                if CONFIG in t.user_attrs
            }
        return key in self._others

    def _measured(self) -> dict[str, Measured]:
        """Config JSON -> (trial, values, attributes) of its first completed evaluation.

        Read from the storage once, then kept up to date by this process.
        """
        if self._measured_configs is None:
            self._measured_configs = {}
            for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                if DUPLICATE_OF not in t.user_attrs and CONFIG in t.user_attrs:
                    key = CompressionConfig.from_dict(t.user_attrs[CONFIG]).to_json(indent=None)
                    attrs = {k: v for k, v in t.user_attrs.items() if k in MEASURED_ATTRS}
                    self._measured_configs.setdefault(key, (t.number, tuple(t.values), attrs))
        return self._measured_configs
