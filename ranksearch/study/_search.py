"""The Optuna edge: objectives, sampler, storage, warm starts, resume, and the Pareto front.

This is the only module that imports Optuna. A trial suggests, per searched layer, a method and a rank
fraction (a conditional space: the fraction only exists for the chosen method); the evaluator measures
the config; the objectives and every measurement are stored in the study, so the study can be resumed,
inspected (optuna-dashboard reads the same storage) and reported without this process.

Objective values are defined in :mod:`ranksearch.objectives`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
import sqlalchemy
from torch import nn

from .apply import apply_resolved
from .cache import FactorCache, weight_digest
from .config import DENSE, CompressionConfig
from .errors import RanksearchError
from .evaluator import Evaluation, Evaluator, EvaluatorSettings, Metric
from .latency import LatencySettings, LatencyTable
from .objectives import OBJECTIVES, check_objectives, check_sampler
from .report import Choice, ReportFiles, StudyResults, TrialRecord, choose, figures, write_report
from .space import LayerChoices, SearchSpace
from .storage import beside_storage, journal_file, storage_file

__all__ = ["RankSearch", "load_results", "make_sampler", "open_storage", "param_names", "results_of"]

STUDY_ATTR = "ranksearch"
WARM_START_FRACTIONS = (0.25, 0.5)
WARM_START_METHODS = ("tucker2", "svd")
HEARTBEAT_SECONDS = 60
ADDED_TO_IDENTITY = ("weights",)  # identity keys newer than some stored studies: checked only where stored
SQLITE_BUSY_SECONDS = 60
COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState[state] for state in ("COMPLETE", "FAIL", "RUNNING"))


def param_names(layer: str, method: str | None = None) -> str:
    """The Optuna parameter name of a layer's method choice, or of its rank fraction for ``method``."""
    return f"{layer}.method" if method is None else f"{layer}.{method}.rank_fraction"


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


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: a journal file, or an RDB storage (SQLite, PostgreSQL, MySQL...).

    File storages get their folder created. SQLite waits up to ``SQLITE_BUSY_SECONDS`` for a lock instead
    of failing at once, so several worker processes can share one file (``ranksearch run --workers N``).

    With ``heartbeat`` (seconds), a running trial records that it is alive that often; a trial silent for
    twice as long (its worker was killed) is marked failed when a worker next starts a trial. Journal
    files have no heartbeat: a killed worker's trial stays "running" there (it counts against the budget).
    """
    if "://" not in url:
        raise RanksearchError(
            f"storage {url!r} is not a storage URL (e.g. sqlite:///runs/study.db, journal:///runs/study.log, "
            "postgresql://user:password@host/database)"
        )
    if url.startswith("sqlite:") and storage_file(url) is None:
        raise RanksearchError(
            f"storage {url!r} is in memory: a study there is lost when the run ends and cannot be reported; "
            "give a file, e.g. sqlite:///runs/study.db (in Python, storage=None keeps a study in memory)"
        )
    path = storage_file(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RanksearchError(f"cannot create the folder for storage {url!r}: {error.strerror}") from None
    if journal_file(url) is not None:
        try:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        except OSError as error:
            raise RanksearchError(f"cannot open storage {url!r}: {error.strerror}") from None
    if url.startswith("journal:"):
        raise RanksearchError(f"storage {url!r}: a journal URL names a file, e.g. journal:///runs/study.log")
    engine = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if url.startswith("sqlite:") else None
    beat = {} if heartbeat is None else {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what crash recovery needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
    except ImportError as error:  # no driver for this database
        raise RanksearchError(
            f"cannot open storage {url!r}: {error} (PostgreSQL: pip install 'ranksearch[postgres]' and use "
            "postgresql+psycopg://...)"
        ) from None
    except Exception as error:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
        raise RanksearchError(f"cannot open storage {url!r}: {type(error).__name__}: {error}") from None
    if path is not None:
        _tune_sqlite(storage.engine)
    return storage


def _tune_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Make a SQLite study safe and quick to share between processes on one machine.

    - Every transaction starts with ``BEGIN IMMEDIATE`` (the write lock first). Python's sqlite3 driver
      otherwise reads outside any transaction and begins only at the first write, so two workers could
      both see a queued trial waiting and both run it (reproduced: 4 of 60 queued trials with 3
      processes; Optuna's ``SELECT ... FOR UPDATE`` is a no-op on SQLite).
    - WAL mode with ``synchronous=NORMAL``: a commit no longer waits for the disk (a trial's storage time
      fell from 340 to about 70 ms in a 30-trial profile) and a killed process still loses nothing
      committed. WAL needs every worker on one machine (not a network file system).
    """

    def on_connect(connection: sqlite3.Connection, _: object) -> None:
        connection.isolation_level = None  # the driver's own BEGIN off: ours below
        connection.execute("PRAGMA synchronous=NORMAL")
        try:  # kept in the file: a no-op once the database is in WAL mode
            connection.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:  # e.g. locked for longer than the busy timeout
            warnings.warn(f"SQLite study left in its rollback-journal mode: {error}", stacklevel=2)

    sqlalchemy.event.listen(engine, "connect", on_connect)
    sqlalchemy.event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections opened before the listeners reconnect with them


class RankSearch:
    """A multi-objective rank search over one model.

    Args:
        model: the trained model to compress (never modified).
        train_loader: training batches (BatchNorm recalibration and fine-tuning).
        val_loader: validation batches (the accuracy objective).
        objectives: two or more of ``accuracy``, ``macs``, ``params``, ``latency``.
        storage: an Optuna storage URL (``{study_name}`` is filled in); None keeps the study in memory.
        study_name: the study's name in the storage; an existing study is resumed.
        space: methods, rank grid and layer selection.
        evaluator: fine-tune and measurement settings.
        sampler: ``"tpe"`` (default), ``"nsga2"``, ``"nsga3"`` or ``"random"``.
        seed: seeds the sampler (the evaluator has its own seed).
        warm_start: kept-rank fractions of the uniform configs enqueued first, after the dense model.
        warm_start_configs: more configs to try first (e.g. from :mod:`ranksearch.heuristics`), each
            snapped to the nearest ranks on the search grid.
        metric: ``metric(logits, targets) -> float`` replacing top-1 accuracy (higher is better).
        cache: a shared factor cache.
        latency: how to measure latency; default for a ``latency`` objective: float32, batch 1, on the
            evaluator's device. Given without a latency objective, trials still record their predicted
            latency. The per-layer latency table lives in ``latency.table``, by default
            ``latency-table.json`` beside a SQLite storage (in memory otherwise).
        heartbeat: seconds between a running trial's "alive" marks in the storage; a trial whose worker
            was killed is marked failed once it has been silent for twice that (None: never).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable,
        *,
        objectives: Sequence[str] = ("accuracy", "macs"),
        storage: str | None = "sqlite:///runs/{study_name}.db",
        study_name: str = "ranksearch",
        space: SearchSpace | None = None,
        evaluator: EvaluatorSettings | None = None,
        sampler: str = "tpe",
        seed: int = 0,
        warm_start: Sequence[float] = WARM_START_FRACTIONS,
        warm_start_configs: Sequence[CompressionConfig] = (),
        metric: Metric | None = None,
        cache: FactorCache | None = None,
        latency: LatencySettings | None = None,
        heartbeat: int | None = HEARTBEAT_SECONDS,
    ) -> None:
        if heartbeat is not None and (isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1):
            raise RanksearchError(f"heartbeat must be an int >= 1 (seconds) or None, got {heartbeat!r}")
        self.heartbeat = heartbeat
        self.objectives = check_objectives(objectives)
        self.space = space or SearchSpace()
        self.layers: dict[str, LayerChoices] = self.space.layers(model)
        self.sampler_name = sampler
        sampler_obj = make_sampler(sampler, seed)
        if storage is not None:
            storage = storage.replace("{study_name}", study_name)
        self.storage_url = storage
        if latency is None and "latency" in self.objectives:
            latency = LatencySettings(device=(evaluator or EvaluatorSettings()).device)
        self.latency_settings = latency
        table = None if latency is None else LatencyTable(latency.table or _default_table(storage))
        self.evaluator = Evaluator(
            model, train_loader, val_loader, evaluator, metric=metric, cache=cache, latency=latency, latency_table=table
        )
        self.study = self._create_or_load(storage, study_name, sampler_obj)
        self._measured_configs: dict[str, tuple[int, tuple[float, ...], dict[str, object]]] | None = None
        self._budget: int | None = None
        if not self.study.trials:
            self._enqueue_warm_starts(warm_start)
            for config in warm_start_configs:
                self.study.enqueue_trial(self._params(self.space.snap(self.layers, config)), skip_if_exists=True)

    # --- study identity ----------------------------------------------------------------------
    def _identity(self) -> dict[str, object]:
        """What must not change when a study is resumed: trials measured otherwise are not comparable."""
        settings = asdict(self.evaluator.settings)
        for machine_only in ("device", "threads"):
            settings.pop(machine_only)
        identity: dict[str, object] = {
            "objectives": list(self.objectives),
            "layers": {name: list(layer.methods) for name, layer in self.layers.items()},
            "rank_fractions": list(self.space.rank_fractions),
            "rank_multiple": self.space.rank_multiple,
            "evaluator": settings,
            "dense_cost": {"macs": self.evaluator.dense.macs, "params": self.evaluator.dense.params},
            "weights": _weights_digest(self.evaluator.model),
        }
        if self.evaluator.latency is not None:  # latencies measured elsewhere (other hardware, dtype, batch) differ
            settings = asdict(self.latency_settings)
            for bookkeeping in ("table", "check_every"):
                settings.pop(bookkeeping)
            identity["latency"] = {**settings, "context": self.evaluator.latency.context}
        return identity

    def _create_or_load(
        self, storage: str | None, study_name: str, sampler: optuna.samplers.BaseSampler
    ) -> optuna.Study:
        backend = None if storage is None else open_storage(storage, self.heartbeat)
        directions = [OBJECTIVES[o] for o in self.objectives]
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study": we say so ourselves
        try:
            study = optuna.create_study(
                storage=backend, study_name=study_name, sampler=sampler, directions=directions, load_if_exists=True
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
        identity = self._identity()
        stored = study.user_attrs.get(STUDY_ATTR)
        if stored is None:
            if study.trials:
                raise RanksearchError(f"study {study_name!r} in {storage} exists but was not made by ranksearch")
            with warnings.catch_warnings():  # experimental in Optuna; lets optuna-dashboard name the objectives
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(self.objectives))
            study.set_user_attr(STUDY_ATTR, identity)
            study.set_user_attr("evaluator", asdict(self.evaluator.settings))
            study.set_user_attr("dense", asdict(self.evaluator.dense))
            study.set_user_attr("sampler", self.sampler_name)
            return study
        for key, value in identity.items():
            if key not in stored and key in ADDED_TO_IDENTITY:  # a study made before the key existed
                continue
            if key == "weights" and stored[key] != value:
                raise RanksearchError(
                    f"study {study_name!r} in {storage} was made with other weights of the model (a baseline trained "
                    "apart, e.g. on another machine, or another saved model): every worker must start from the "
                    "same trained model; copy the baseline file (runs/baselines/) or use [model] path"
                )
            if json.loads(json.dumps(stored.get(key))) != json.loads(json.dumps(value)):
                raise RanksearchError(
                    f"study {study_name!r} in {storage} exists with different {key}: stored {stored.get(key)}, "
                    f"asked {value}; use another study name (or storage) for a different search"
                )
        return study

    def _enqueue_warm_starts(self, fractions: Sequence[float]) -> None:
        self.study.enqueue_trial(self._params({n: (DENSE, None) for n in self.layers}), skip_if_exists=True)
        for method in WARM_START_METHODS:
            if not any(method in layer.methods for layer in self.layers.values()):
                continue
            for fraction in fractions:
                picks = self.space.uniform_picks(self.layers, (method, "svd"), fraction)
                self.study.enqueue_trial(self._params(picks), skip_if_exists=True)

    def _params(self, picks: Mapping[str, tuple[str, float | None]]) -> dict[str, object]:
        params: dict[str, object] = {}
        for name, (method, fraction) in picks.items():
            layer = self.layers[name]
            if method not in layer.methods:  # e.g. the dense warm start where a layer must be compressed
                method, fraction = layer.methods[0], max(layer.fractions)
            params[param_names(name)] = method
            if method != DENSE:
                params[param_names(name, method)] = fraction
        return params

    # --- trials -------------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> CompressionConfig:
        """The config a trial proposes: per layer a method, and a rank fraction for that method."""
        picks = {}
        for name, layer in self.layers.items():
            method = trial.suggest_categorical(param_names(name), layer.methods)
            fraction = (
                None if method == DENSE else trial.suggest_categorical(param_names(name, method), layer.fractions)
            )
            picks[name] = (method, fraction)
        return self.space.to_config(self.layers, picks)

    def _objective(self, trial: optuna.Trial) -> tuple[float, ...]:
        self._claim_slot(trial)
        config = self.suggest(trial)
        key = config.to_json(indent=None)
        earlier = self._measured().get(key)
        if earlier is not None:  # samplers do propose a config twice: reuse its measurements
            number, values, attrs = earlier
            for name, value in attrs.items():
                trial.set_user_attr(name, value)
            trial.set_user_attr("duplicate_of", number)
            return values
        check = self.latency_settings is not None and self.latency_settings.check_every > 0
        measure = check and trial.number % self.latency_settings.check_every == 0
        try:
            result = self.evaluator.evaluate(config, measure_latency=measure)
        except KeyboardInterrupt:  # Optuna marks the trial failed; say why, so that it is run again
            trial.set_user_attr("interrupted", True)
            raise
        attrs = {name: _jsonable(value) for name, value in result.attributes().items()}
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        if result.failure is not None:
            raise TrialFailed(result.failure)
        values = tuple(_objective_value(result, name) for name in self.objectives)
        self._measured()[key] = (trial.number, values, attrs)
        return values

    def _measured(self) -> dict[str, tuple[int, tuple[float, ...], dict[str, object]]]:
        """Config JSON -> (trial, values, attributes) of its first completed evaluation.

        Read from the storage once, then kept up to date by this process (the evaluator is
        deterministic, so a config measured once need not be measured again).
        """
        if self._measured_configs is None:
            self._measured_configs = {}
            for t in self.completed_trials():
                if "duplicate_of" not in t.user_attrs and "config" in t.user_attrs:
                    key = CompressionConfig.from_dict(t.user_attrs["config"]).to_json(indent=None)
                    self._measured_configs.setdefault(key, (t.number, tuple(t.values), dict(t.user_attrs)))
        return self._measured_configs

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
        if budget is not None:
            _fail_stale_trials(self.study)  # a killed worker's trial would hold a slot of the budget
        if n_trials == 0 or (budget is not None and self._live_trials() >= budget):
            return
        self._budget = budget
        progress = [_Progress(self, n_trials, budget, label)] if show_progress else []
        stop = [self._stop_at_budget] if budget is not None else []
        verbosity = optuna.logging.get_verbosity()
        if show_progress:  # our progress line replaces Optuna's per-trial log lines (failures included)
            optuna.logging.set_verbosity(optuna.logging.ERROR)
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
            self._budget = None

    def _live_trials(self) -> int:
        """Trials that count against a budget: finished trials, failed evaluations and running trials."""
        return sum(map(_has_result, self.study.get_trials(deepcopy=False, states=(COMPLETE, FAIL, RUNNING))))

    def _stop_at_budget(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._budget is not None and self._live_trials() >= self._budget:
            study.stop()

    def _claim_slot(self, trial: optuna.Trial) -> None:
        """Prune ``trial`` if the budget was spent by trials created before it (another worker won the race)."""
        if self._budget is None:
            return
        mine = (trial.number, trial._trial_id)
        trials = self.study.get_trials(deepcopy=False, states=(COMPLETE, FAIL, RUNNING))
        earlier = sum(_has_result(t) and (t.number, t._trial_id) < mine for t in trials)
        if earlier >= self._budget:
            trial.set_user_attr("over_budget", True)
            self.study.stop()
            raise optuna.TrialPruned(f"the budget of {self._budget} trials is spent")

    def remaining(self, budget: int) -> int:
        """Trials still to run for a total ``budget``: finished trials and failed evaluations count; queued,
        running, interrupted and killed ones do not (an interrupted trial is run again)."""
        return max(0, budget - sum(map(_has_result, self.study.get_trials(deepcopy=False, states=(COMPLETE, FAIL)))))

    # --- results ------------------------------------------------------------------------------
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
        """The trial a rule picks (``trial=``, ``max_costs=``, ``min_accuracy=``, ``max_accuracy_drop=``,
        ``knee=``); see :func:`ranksearch.report.choose`.
        """
        return choose(self.results(), **rule)

    def measure_front_latency(self) -> dict[int, float]:
        """Time the whole compressed model of every Pareto trial not timed yet; returns {trial: seconds}.

        The measurements are kept in the study (user attribute ``latency_measured``) so the report can
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
            model = apply_resolved(self.evaluator.model, resolved, cache=self.evaluator.cache)
            new[str(int(row["trial"]))] = self.evaluator.latency.measure_model(model)
        if new:
            self.study.set_user_attr("latency_measured", {**self.study.user_attrs.get("latency_measured", {}), **new})
        return {int(trial): seconds for trial, seconds in new.items()}

    def config(self, trial_number: int) -> CompressionConfig:
        """The CompressionConfig a trial evaluated."""
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        if trial_number not in trials:
            raise RanksearchError(f"no trial {trial_number} in study {self.study.study_name!r} ({len(trials)} trials)")
        return CompressionConfig.from_dict(trials[trial_number].user_attrs["config"])


def _has_result(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses up budget: it is running, finished, or failed with a reason (a failed evaluation).

    A trial whose worker was interrupted (Ctrl-C) or killed also ends "failed", but without a reason: it
    does not count, and the study runs another in its place.
    """
    return trial.state != FAIL or "failure" in trial.user_attrs


def _fail_stale_trials(study: optuna.Study) -> None:
    """Mark failed the running trials whose heartbeat stopped (no-op for storages without heartbeats)."""
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class TrialFailed(Exception):
    """A trial whose evaluation failed (the reason is in its ``failure`` user attribute)."""


def _objective_value(result: Evaluation, name: str) -> float:
    values = {"accuracy": result.accuracy, "macs": result.macs_ratio, "params": result.params_ratio}
    return result.latency_ratio if name == "latency" else values[name]


def _weights_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, values): the model the trials start from."""
    digests = [f"{name}:{weight_digest(tensor)}" for name, tensor in model.state_dict().items()]
    return hashlib.blake2b("\n".join(digests).encode(), digest_size=12).hexdigest()


def _default_table(storage: str | None) -> Path | None:
    """``latency-table.json`` beside a SQLite storage file; None (in memory) for other storages."""
    return None if storage_file(storage) is None else beside_storage(storage, "latency-table.json")


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def results_of(study: optuna.Study, storage: str | None = None) -> StudyResults:
    """A ranksearch study's finished trials and settings as plain :class:`StudyResults`."""
    identity = study.user_attrs.get(STUDY_ATTR)
    if identity is None:
        raise RanksearchError(f"study {study.study_name!r} in {storage} was not made by ranksearch")
    finished = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.FAIL: "fail"}
    timed = study.user_attrs.get("latency_measured", {})  # Pareto points timed after the run
    records = []
    for t in study.get_trials(deepcopy=False, states=tuple(finished)):
        attrs = dict(t.user_attrs)
        original = str(attrs.get("duplicate_of", t.number))
        if attrs.get("latency_measured_seconds") is None and original in timed:
            attrs["latency_measured_seconds"] = timed[original]
        values = tuple(t.values) if t.state == optuna.trial.TrialState.COMPLETE else None
        records.append(TrialRecord(t.number, finished[t.state], values, dict(t.params), attrs))
    settings = {
        "latency": identity.get("latency"),
        "sampler": study.user_attrs.get("sampler"),
        "evaluator": study.user_attrs.get("evaluator"),
        "space": {
            "rank_fractions": identity.get("rank_fractions"),
            "rank_multiple": identity.get("rank_multiple"),
            "layers": identity.get("layers"),
        },
    }
    return StudyResults.from_records(
        records,
        name=study.study_name,
        storage=storage,
        objectives=identity["objectives"],
        directions=[d.name.lower() for d in study.directions],
        layers=list(identity["layers"]),
        dense=study.user_attrs.get("dense", {}),
        settings=settings,
    )


def load_results(storage: str, study_name: str) -> StudyResults:
    """:func:`results_of` for a study in a storage, without the model or data (what ``ranksearch report`` reads)."""
    path = storage_file(storage)
    if path is not None and not path.is_file():
        raise RanksearchError(f"storage {storage!r}: the file {str(path)!r} does not exist (no study run there yet?)")
    backend = open_storage(storage)
    names = optuna.study.get_all_study_names(storage=backend)
    if study_name not in names:
        available = ", ".join(repr(n) for n in names) or "none"
        raise RanksearchError(f"no study {study_name!r} in {storage}; studies there: {available}")
    return results_of(optuna.load_study(study_name=study_name, storage=backend), storage)


class _Progress:
    """Prints one line per finished trial: progress, best so far, Pareto size, ETA.

    With a budget the count is the study's (every worker's finished trials, out of the budget) and the
    ETA comes from the study's pace since this process started; otherwise it counts this call's trials.
    """

    def __init__(self, search: RankSearch, n_trials: int | None, budget: int | None = None, label: str = "") -> None:
        self.search, self.n_trials, self.budget = search, n_trials, budget
        self.prefix = f"{label} " if label else ""
        self.start, self.done = time.perf_counter(), 0
        self.finished_at_start = self._finished() if budget is not None else 0

    def _finished(self) -> int:
        return sum(map(_has_result, self.search.study.get_trials(deepcopy=False, states=(COMPLETE, FAIL))))

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("over_budget"):
            return
        self.done += 1
        elapsed = time.perf_counter() - self.start
        if self.budget is not None:
            done, total = self._finished(), self.budget
            pace = elapsed / max(1, done - self.finished_at_start)
        else:
            done, total, pace = self.done, self.n_trials, elapsed / self.done
        eta = f" | ETA {_duration(pace * max(0, total - done))}" if total else ""
        if trial.state == optuna.trial.TrialState.COMPLETE:
            now = " ".join(f"{o}={v:.4g}" for o, v in zip(self.search.objectives, trial.values, strict=True))
        else:
            now = f"{trial.state.name.lower()}: {trial.user_attrs.get('failure', '')}"[:80]
        front = study.best_trials  # the best value of each objective is always on the front
        best = []
        for i, (name, direction) in enumerate(zip(self.search.objectives, study.directions, strict=True)):
            pick = max if direction == optuna.study.StudyDirection.MAXIMIZE else min
            if front:
                best.append(f"{name}={pick(t.values[i] for t in front):.4g}")
        pareto = sum("duplicate_of" not in t.user_attrs for t in front)
        print(
            f"{self.prefix}[{done}{f'/{total}' if total else ''}] trial {trial.number}: {now} | best {' '.join(best)} "
            f"| pareto {pareto} | {elapsed / self.done:.1f} s/trial{eta}",
            file=sys.stdout,
            flush=True,
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
