"""RankSearch: a multi-objective rank search over one model, stored in an Optuna study."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
from torch import nn

from ..adapters import BatchAdapter
from ..cache import FactorCache
from ..calibration import Calibration
from ..config import CompressionConfig
from ..errors import RanksearchError
from ..evaluator import Evaluator, EvaluatorSettings, Loss, Metric
from ..export import ExportedModel, export_config
from ..latency import LatencySettings, LatencyTable
from ..memory import MemorySettings
from ..objectives import (
    DEFAULT_OBJECTIVES,
    DEFAULT_SAMPLER,
    DEFAULT_SCREEN,
    DEFAULT_STORAGE,
    DEFAULT_STRATEGY,
    HEARTBEAT_SECONDS,
    ONE_SHOT_BUDGETS,
    WARM_START_FRACTIONS,
    check_objectives,
    check_sampler,
    check_strategy,
    check_targets,
)
from ..record import CONFIG, DENSE, FIXED_CONFIG, FRONT_LATENCY_ATTR, ONE_SHOT, param_name
from ..report import Choice, ReportFiles, StudyResults, choose, figures, write_report
from ..screening import ProxySettings
from ..space import LayerChoices, SearchSpace
from ..storage import beside_storage
from ._allocate import KNOB_BUDGET_CAP, AllocatingProposer
from ._budget import TrialBudget, fail_stale_trials, finished_trials
from ._identity import create_or_load, study_identity
from ._objective import TrialFailed, TrialObjective
from ._progress import Progress
from ._results import results_of
from ._sampler import make_sampler
from ._settings import checked_space, deployment_settings
from ._storage import default_latency_table

__all__ = ["WARM_START_METHODS", "RankSearch"]

WARM_START_METHODS = ("tucker2", "svd")


class RankSearch:
    """A multi-objective rank search over one model.

    Args:
        model: the trained model to compress (never modified).
        train_loader: training batches (BatchNorm recalibration and fine-tuning).
        val_loader: validation batches (the accuracy and fidelity objectives). Batches may be ``(inputs,
            targets)``, tuples, lone tensors (no labels) or dicts (Hugging Face: ``labels`` is the target).
        objectives: two or more of ``accuracy``, ``fidelity``, ``macs``, ``params``, ``latency``, with
            ``accuracy`` or ``fidelity`` among them (``fidelity``: agreement with the dense model's outputs,
            what a study without labels measures).
        storage: an Optuna storage URL (``{study_name}`` is filled in); None keeps the study in memory.
        study_name: the study's name in the storage; an existing study is resumed.
        space: methods, rank grid and layer selection.
        evaluator: fine-tune and measurement settings.
        sampler: ``"tpe"`` (default), ``"nsga2"``, ``"nsga3"``, ``"gp"`` or ``"random"``.
        seed: seeds the sampler (the evaluator has its own seed).
        strategy: ``"allocate"`` (default: per-layer sensitivity curves measured once, trials search a
            budget, method preferences and a depth tilt that an allocation turns into a config, screened by
            a proxy) or ``"per-layer"`` (the sampler picks every layer's method and grid level).
        targets: budgets the search aims at, ``{"macs": [0.1, 0.25, 0.5]}`` (also ``params``, ``latency``;
            fractions of dense): ``allocate`` trials are spent at and just under them, and the report shows
            the best trial per target. None: a free budget.
        screen: candidates the proxy scores per ``allocate`` trial, at most (a new study screens only as many as cost
            at most half a full evaluation: ``screen_check`` in its attributes); the best earns the fine-tune.
        proxy: how the proxy (sensitivity curves, screening) is measured.
        warm_start: with ``per-layer``: grid fractions of the uniform configs enqueued first, after the
            dense model. With ``allocate`` the study starts instead with the one-shot allocation at each
            target (or at 10/25/50% MACs); once the sensitivity pass is measured, the uniform config (one
            method, one kept-rank fraction) the proxy ranks best at each target is queued too.
        warm_start_configs: more configs to try first (e.g. from :mod:`ranksearch.heuristics`), each
            snapped to the nearest ranks on the search grid (with ``allocate``: evaluated as they are).
        metric: ``metric(logits, targets) -> float`` replacing top-1 accuracy (higher is better).
        loss_fn: the brief fine-tune's loss ``loss_fn(outputs, targets)`` (default: cross-entropy).
        adapter: how batches become model inputs and targets, and outputs the tensor metrics use
            (:class:`~ranksearch.adapters.BatchAdapter`; the default understands tensors, tuples, dicts and
            ``ModelOutput``s).
        cache: a shared factor cache.
        latency: how to measure latency; default for a ``latency`` objective: float32, batch 1, on the
            evaluator's device. Given without a latency objective, trials still record their predicted
            latency. The per-layer latency table lives in ``latency.table``, by default
            ``latency-table.json`` beside a SQLite storage (in memory otherwise).
        memory: where and at what batch the ``memory`` objective or target is counted; default: the latency
            settings' device, dtype and batch when given, else float32, batch 1 on the evaluator's device.
        heartbeat: seconds between a running trial's "alive" marks in the storage; a trial whose worker
            was killed is marked failed once it has been silent for twice that (None: never).
        calibration: input statistics for data-aware methods in the space (:func:`ranksearch.calibrate`);
            by default gathered from ``evaluator.calibration_batches`` training batches.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable,
        *,
        objectives: Sequence[str] = DEFAULT_OBJECTIVES,
        storage: str | None = DEFAULT_STORAGE,
        study_name: str = "ranksearch",
        space: SearchSpace | None = None,
        evaluator: EvaluatorSettings | None = None,
        sampler: str = DEFAULT_SAMPLER,
        seed: int = 0,
        warm_start: Sequence[float] = WARM_START_FRACTIONS,
        warm_start_configs: Sequence[CompressionConfig] = (),
        strategy: str = DEFAULT_STRATEGY,
        targets: Mapping[str, Sequence[float]] | None = None,
        screen: int = DEFAULT_SCREEN,
        proxy: ProxySettings | None = None,
        metric: Metric | None = None,
        loss_fn: Loss | None = None,
        adapter: BatchAdapter | None = None,
        cache: FactorCache | None = None,
        latency: LatencySettings | None = None,
        heartbeat: int | None = HEARTBEAT_SECONDS,
        calibration: Calibration | None = None,
        memory: MemorySettings | None = None,
    ) -> None:
        if heartbeat is not None and (isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1):
            raise RanksearchError(f"heartbeat must be an int >= 1 (seconds) or None, got {heartbeat!r}")
        self.heartbeat = heartbeat
        self.objectives = check_objectives(objectives)
        self.strategy, self.targets = check_strategy(strategy), check_targets(targets)
        if isinstance(screen, bool) or not isinstance(screen, int) or screen < 1:
            raise RanksearchError(f"screen must be an int >= 1 (candidates per trial), got {screen!r}")
        self.space = checked_space(space or SearchSpace(), evaluator, calibration)
        self.sampler_name = check_sampler(sampler)  # before the evaluator's work, as every check here
        self.storage_url = None if storage is None else storage.replace("{study_name}", study_name)
        latency, memory = deployment_settings(self.objectives, self.targets, latency, memory, evaluator)
        self.latency_settings = latency
        table = None if latency is None else LatencyTable(latency.table or default_latency_table(self.storage_url))
        self.train_loader = train_loader
        self.evaluator = Evaluator(
            model, train_loader, val_loader, evaluator, metric=metric, loss_fn=loss_fn, adapter=adapter, cache=cache,
            latency=latency, latency_table=table, objectives=self.objectives, calibration=calibration, memory=memory,
        )  # fmt: skip
        # the evaluator's copy: attention unpacked into Linear projections, so they are searchable layers
        self.layers: dict[str, LayerChoices] = self.space.layers(self.evaluator.model, self.evaluator.example_input)
        search = {"screen": screen, "proxy": _screening(proxy)} if strategy == "allocate" else {}
        self.study = self._open_study(study_name, sampler, seed, heartbeat, latency, search)
        self.proposer = None
        if self.strategy == "allocate":
            self.proposer = AllocatingProposer(
                self.study, self.evaluator, self.layers, self.targets, screen=screen, proxy=proxy, seed=seed
            )
        self._objective = TrialObjective(
            self.study, self.evaluator, self.space, self.layers, self.objectives, latency, self.proposer
        )
        if not self.study.trials:
            self._enqueue_warm_starts(warm_start, warm_start_configs)

    def _open_study(
        self,
        study_name: str,
        sampler: str,
        seed: int,
        heartbeat: int | None,
        latency: LatencySettings | None,
        search: Mapping[str, object],
    ) -> optuna.Study:
        """Create the study, or resume it after checking that it was made with the same settings."""
        identity = study_identity(self.objectives, self.layers, self.space, self.evaluator, latency)
        identity.update(strategy=self.strategy, targets={k: list(v) for k, v in self.targets.items()}, **search)
        return create_or_load(
            self.storage_url,
            study_name,
            make_sampler(sampler, seed),
            identity,
            evaluator=self.evaluator,
            sampler_name=sampler,
            heartbeat=heartbeat,
        )

    # --- warm starts ---------------------------------------------------------------------------
    def _enqueue_warm_starts(self, fractions: Sequence[float], configs: Sequence[CompressionConfig]) -> None:
        """Queue the first trials. ``per-layer``: the dense model, uniform configs at ``fractions`` (Tucker-2
        where a layer has it, else SVD), then ``configs`` snapped to the grid. ``allocate``: the one-shot
        allocation at each target, then ``configs`` as they are (the uniform starts are queued after the
        sensitivity pass, see ``_allocate``)."""
        if self.proposer is not None:
            proposer = self.proposer
            for budget in proposer.one_shot_budgets(ONE_SHOT_BUDGETS):
                self.study.enqueue_trial(proposer.knob_params(budget), user_attrs={ONE_SHOT: True})
            budgets = proposer.one_shot_budgets(ONE_SHOT_BUDGETS) or (KNOB_BUDGET_CAP,)
            for config in configs:  # evaluated as given; the knobs are only the trial's (neutral) parameters
                params = proposer.knob_params(budgets[0])
                self.study.enqueue_trial(params, user_attrs={FIXED_CONFIG: config.to_dict()})
            return
        self.study.enqueue_trial(self._params({n: (DENSE, None) for n in self.layers}), skip_if_exists=True)
        for method in WARM_START_METHODS:
            if not any(method in layer.methods for layer in self.layers.values()):
                continue
            for fraction in fractions:
                picks = self.space.uniform_picks(self.layers, (method, "svd"), fraction)
                self.study.enqueue_trial(self._params(picks), skip_if_exists=True)
        for config in configs:
            self.study.enqueue_trial(self._params(self.space.snap(self.layers, config)), skip_if_exists=True)

    def prepare(self, log: Callable[[str], None] = print) -> None:
        """Measure (or load from the study) what the strategy needs before its trials: the ``allocate``
        strategy's sensitivity curves. :meth:`optimize` calls it; call it first to prepare once for workers."""
        if self.proposer is not None:
            self.proposer.log = log
            self.proposer.prepare()

    def _params(self, picks: Mapping[str, tuple[str, float | None]]) -> dict[str, object]:
        params: dict[str, object] = {}
        for name, (method, fraction) in picks.items():
            layer = self.layers[name]
            if method not in layer.methods:  # e.g. the dense warm start where a layer must be compressed
                method, fraction = layer.methods[0], max(layer.fractions)
            params[param_name(name)] = method
            if method != DENSE:
                params[param_name(name, method)] = fraction
        return params

    # --- trials --------------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> CompressionConfig:
        """The config a trial proposes: per layer a method, and a rank fraction for that method."""
        return self._objective.suggest(trial)

    def optimize(
        self,
        n_trials: int | None = None,
        timeout: float | None = None,
        *,
        budget: int | None = None,
        show_progress: bool = True,
        callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
        label: str = "",
    ) -> None:
        """Run trials until ``n_trials`` more have run, ``timeout`` seconds have passed, or the study holds
        ``budget`` trials; failed trials are recorded and skipped.

        ``budget`` is the study's total (finished, failed and running trials, any worker's), shared by every
        process that runs the same study with the same budget: the total comes out exact. A worker that
        loses the race for the last slot marks its new trial pruned (user attribute ``over_budget``) before
        evaluating anything, and stops. ``label`` prefixes the progress lines (e.g. ``"worker 2"``).
        """
        for name, value in (("n_trials", n_trials), ("budget", budget)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise RanksearchError(f"{name} must be an int >= 0, got {value!r}")
        if timeout is not None and not timeout > 0:
            raise RanksearchError(f"timeout must be > 0 seconds, got {timeout!r}")
        shared = None if budget is None else TrialBudget(self.study, budget)
        if shared is not None:
            fail_stale_trials(self.study)  # a killed worker's trial would hold a slot of the budget
        if n_trials == 0 or (shared is not None and shared.spent()):
            return
        self.prepare(log=print if show_progress else (lambda _: None))
        progress = [Progress(self.study, self.objectives, n_trials, budget, label)] if show_progress else []
        stop = [shared.stop_when_spent] if shared is not None else []
        verbosity = optuna.logging.get_verbosity()
        if show_progress:  # our progress line replaces Optuna's per-trial log lines (failures included)
            optuna.logging.set_verbosity(optuna.logging.ERROR)
        self._objective.budget = shared
        try:
            self.study.optimize(
                self._objective,
                n_trials=n_trials,
                timeout=timeout,
                catch=(TrialFailed,),
                callbacks=[*stop, *progress, *callbacks],
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
            self._objective.budget = None

    def remaining(self, budget: int) -> int:
        """Trials still to run for a total ``budget``: finished trials and failed evaluations count; queued,
        running, interrupted and killed ones do not (an interrupted trial is run again)."""
        return max(0, budget - finished_trials(self.study))

    # --- results -------------------------------------------------------------------------------
    def completed_trials(self) -> list[optuna.trial.FrozenTrial]:
        """Trials that finished with values, in order."""
        return self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    def results(self) -> StudyResults:
        """The study's finished trials, front and settings as plain data (what reports are made from)."""
        return results_of(self.study, self.storage_url)

    def trials_dataframe(self) -> pd.DataFrame:
        """One row per finished trial: objectives, measurements, ``is_pareto``, per-layer method/rank/fraction."""
        return self.results().trials

    def pareto_front(self) -> pd.DataFrame:
        """The Pareto-optimal trials (non-dominated over the study's objectives, each config once), cheapest first."""
        return self.results().pareto()

    def figures(self) -> dict[str, go.Figure]:
        """The study's plotly figures by name (see :func:`ranksearch.report.figures`)."""
        return figures(self.results())

    def report(self, folder: str | Path, **options: object) -> ReportFiles:
        """Write tables, the HTML dashboard (and images if asked) to ``folder``; see :func:`write_report`."""
        return write_report(self.results(), folder, **options)

    def choose(self, **rule: object) -> Choice:
        """The trial a rule picks (``trial=``, ``max_costs=``, ``min_accuracy=``, ``min_fidelity=``,
        ``max_accuracy_drop=``, ``knee=``); see :func:`ranksearch.report.choose`.
        """
        return choose(self.results(), **rule)

    def export(
        self,
        folder: str | Path | None = None,
        *,
        epochs: int = 0,
        lr: float = 0.01,
        onnx: bool = False,
        builtin: Mapping[str, object] | None = None,
        log: Callable[[str], None] = print,
        **rule: object,
    ) -> ExportedModel:
        """Rebuild the trial a rule picks (the rules of :meth:`choose`), check it matches what the study
        recorded, optionally fine-tune it ``epochs`` more epochs on the training loader, and save its
        config and compressed model (and ``model.onnx`` with ``onnx=True``) to ``folder``.

        ``folder`` defaults to ``trial-<N>`` in the report folder beside a file storage. ``builtin``
        (``{"name", "options"}`` of a built-in model) lets :func:`ranksearch.load` rebuild the model alone.
        """
        results = self.results()
        choice = choose(results, **rule)
        log(f"chosen: {choice.rule}")
        if choice.note:
            log(f"note: {choice.note}")
        if folder is None:
            if self.storage_url is None:
                raise RanksearchError("an in-memory study has no report folder: give export a folder")
            folder = beside_storage(self.storage_url, results.name) / f"trial-{choice.trial}"
        provenance = {"study": results.name, "storage": self.storage_url, "trial": choice.trial, "rule": choice.rule}
        return export_config(
            self.evaluator,
            results.config(choice.trial),
            folder,
            recorded=choice.row,
            train_loader=self.train_loader,
            epochs=epochs,
            lr=lr,
            onnx=onnx,
            builtin=builtin,
            metadata=provenance,
            log=log,
        )

    def measure_front_latency(self) -> dict[int, float]:
        """Time the whole compressed model of every Pareto trial not timed yet; returns {trial: seconds}.

        Each is timed interleaved with the dense model (the reference its measured ratio is taken against).
        The measurements are kept in the study (study attribute ``latency_measured``) so the report can
        compare them with the predicted latencies.
        """
        if self.evaluator.latency is None:
            raise RanksearchError("this search measures no latency: give it latency settings (or a latency objective)")
        results = self.results()
        new: dict[str, float] = {}
        for _, row in results.pareto().iterrows():
            if pd.notna(row["latency_measured_ms"]):
                continue
            resolved = results.config(int(row["trial"])).resolve(self.evaluator.model)
            model = self.evaluator.compress(resolved)
            new[str(int(row["trial"]))] = list(self.evaluator.latency.measure_against_dense(model))
        if new:
            timed = self.study.user_attrs.get(FRONT_LATENCY_ATTR, {})
            self.study.set_user_attr(FRONT_LATENCY_ATTR, {**timed, **new})
        return {int(trial): seconds for trial, (seconds, _) in new.items()}

    def config(self, trial_number: int) -> CompressionConfig:
        """The CompressionConfig a trial evaluated."""
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        if trial_number not in trials:
            raise RanksearchError(f"no trial {trial_number} in study {self.study.study_name!r} ({len(trials)} trials)")
        return CompressionConfig.from_dict(trials[trial_number].user_attrs[CONFIG])


def _screening(proxy: ProxySettings | None) -> dict[str, int]:
    """The proxy settings a study's identity holds: the screening's. The sensitivity pass's are left out, as its
    curves are stored in the study and a resumed study reuses them."""
    settings = asdict(proxy or ProxySettings())
    return {k: v for k, v in settings.items() if not k.startswith("sensitivity_")}
