"""A finished (or running) study as plain data: the trials table, the Pareto front and its hypervolume.

:class:`StudyResults` is what every report, figure and export works from. ``ranksearch.study`` builds
it from an Optuna study (the only place that reads Optuna); everything here is pandas and numpy, so
results can also be built from any list of trial records (tests, benchmarks, other tools).

Objective values: the qualities ``accuracy`` and ``fidelity`` are maximized; cost objectives (``macs``,
``params``, ``latency``) are minimized fractions of the dense model's, so the dense model sits at 1.0 on
every cost axis.

The quality a report ranks by (:attr:`StudyResults.quality`) is ``accuracy`` when it is an objective, else
``fidelity`` (a label-free study, or one that asked for fidelity alone). The other quality is shown beside it
wherever the study measured it (:attr:`StudyResults.qualities`): a study with both objectives ranks by
accuracy and shows fidelity; a fidelity study with labels ranks by fidelity and shows accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import RanksearchError
from ..objectives import QUALITY_OBJECTIVES
from ..record import DENSE, TrialRecord
from ._latency_check import fit_latency_scale, latency_check_frame, trusted_scale
from ._pareto import hypervolume, hypervolume_history, pareto_mask, to_minimization
from ._targets import best_rows, sensitivity_frame

if TYPE_CHECKING:
    from ..config import CompressionConfig

__all__ = ["StudyResults", "TrialRecord", "config_summary", "headline_quality", "layer_columns", "trials_table"]

MEASUREMENTS = ("accuracy_zero_shot", "accuracy_recalibrated", "accuracy_finetuned")
LATENCY_COLUMNS = ("latency_ratio", "latency_reduction", "latency_ms", "latency_measured_ms", "latency_reference_ms")
MEMORY_COLUMNS = ("memory_ratio", "memory_reduction", "memory_mb")


def headline_quality(objectives: Sequence[str]) -> str:
    """The quality a study is ranked by: ``accuracy`` when it is an objective, else ``fidelity``."""
    return "accuracy" if "accuracy" in objectives or "fidelity" not in objectives else "fidelity"


def _shown_qualities(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[str]:
    """The qualities the trials table shows besides the objectives: ``accuracy`` always (NaN without labels),
    ``fidelity`` when a trial stored it."""
    return [
        q for q in QUALITY_OBJECTIVES if q not in objectives and (q == "accuracy" or any(q in r.attrs for r in records))
    ]


def config_summary(config: Mapping[str, object]) -> str:
    """``"dense:12 svd:3 tucker2:5"``: how many layers each method got, from a config's JSON dict."""
    counts: dict[str, int] = {}
    for spec in config.get("layers", {}).values():
        counts[spec["method"]] = counts.get(spec["method"], 0) + 1
    return " ".join(f"{m}:{n}" for m, n in sorted(counts.items()))


def layer_columns(layer: str) -> tuple[str, str, str]:
    """The trials-table columns of one layer: its method, rank and kept-rank fraction."""
    return f"method:{layer}", f"rank:{layer}", f"fraction:{layer}"


def _rank_text(rank: object) -> str | None:
    if rank is None:
        return None
    return "x".join(str(r) for r in rank) if isinstance(rank, (list, tuple)) else str(rank)


def trials_table(
    records: Sequence[TrialRecord], objectives: Sequence[str], directions: Sequence[str], layers: Sequence[str]
) -> pd.DataFrame:
    """One row per trial: objectives, the other measured quality, measurements, ratios, ``is_pareto`` and
    per-layer method/rank/fraction.

    ``is_pareto`` is computed over the objectives and directions among completed trials; a duplicate
    (a config measured by an earlier trial, ``duplicate_of`` set) shares its original's flag. Columns
    ``macs_ratio``/``params_ratio`` are fractions of the dense model; ``macs_reduction``/``params_reduction``
    their inverses ("4.0x fewer"); ``macs_count``/``params_count`` absolute MACs (multiply-accumulates,
    FLOPs = 2 x MACs) and parameters; with latency settings, ``latency_ms`` (predicted from the latency
    table), ``latency_ratio``, ``latency_reduction``, ``latency_measured_ms`` (the whole model timed,
    on sampled and Pareto trials) and ``latency_reference_ms`` (the dense model timed interleaved with
    it); with memory settings, ``memory_ratio``, ``memory_reduction`` and ``memory_mb`` (weights plus peak
    activations, MiB), ``data_aware_layers`` (how many layers use a data-aware method). A
    quality that is not an objective follows the objectives: ``accuracy``
    always (NaN without labels), ``fidelity`` when trials stored it. Rows are in trial order.
    """
    shown = _shown_qualities(records, objectives)
    rows = [{**_trial_row(record, objectives, shown), **_layer_cells(record, layers)} for record in records]
    columns = ["trial", *objectives, *shown, "state", *MEASUREMENTS]
    for cost in ("macs", "params"):
        columns += [f"{cost}_ratio", f"{cost}_reduction", f"{cost}_count"]
    columns += [*LATENCY_COLUMNS, *MEMORY_COLUMNS]
    columns += ["finetune_skipped", "failure", "seconds", "methods", "data_aware_layers", "duplicate_of"]
    columns += [c for layer in layers for c in layer_columns(layer)]
    frame = pd.DataFrame(rows, columns=columns)
    numeric = ("macs_ratio", "params_ratio", "macs_reduction", "params_reduction", *LATENCY_COLUMNS, *MEMORY_COLUMNS)
    for column in ("duplicate_of", *MEASUREMENTS, *numeric, *objectives, *shown):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    complete = (frame["state"] == "complete").to_numpy() if len(frame) else np.zeros(0, dtype=bool)
    mask = np.zeros(len(frame), dtype=bool)
    if complete.any():
        mask[complete] = pareto_mask(frame.loc[complete, list(objectives)].to_numpy(), directions)
    frame["is_pareto"] = mask
    return frame.reset_index(drop=True)


def _inverse(ratio: float | None) -> float | None:
    return 1 / ratio if ratio else None


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _trial_row(record: TrialRecord, objectives: Sequence[str], shown: Sequence[str]) -> dict[str, object]:
    """A trial's objectives, the ``shown`` qualities and measurements (stored NaN accuracies come back as None)."""
    m = record.measurements
    values = record.values if record.values is not None else (math.nan,) * len(objectives)
    row: dict[str, object] = {"trial": record.number, **dict(zip(objectives, values, strict=True))}
    row.update({quality: getattr(m, quality) for quality in shown})
    row["state"] = record.state
    for key in MEASUREMENTS:
        row[key] = getattr(m, key) if key in record.attrs else None
    for cost, count, ratio in (("macs", m.macs, m.macs_ratio), ("params", m.params, m.params_ratio)):
        stored = f"{cost}_ratio" in record.attrs
        row[f"{cost}_ratio"] = ratio if stored else None
        row[f"{cost}_reduction"] = _inverse(ratio) if stored else None
        row[f"{cost}_count"] = count if cost in record.attrs else None
    row["latency_ratio"], row["latency_reduction"] = m.latency_ratio, _inverse(m.latency_ratio)
    row["latency_ms"] = _milliseconds(m.latency_seconds)
    row["latency_measured_ms"] = _milliseconds(m.latency_measured_seconds)
    row["latency_reference_ms"] = _milliseconds(m.latency_reference_seconds)
    row["memory_ratio"], row["memory_reduction"] = m.memory_ratio, _inverse(m.memory_ratio)
    row["memory_mb"] = None if m.memory_bytes is None else m.memory_bytes / 2**20
    row["finetune_skipped"], row["failure"] = m.finetune_skipped, m.failure
    row["seconds"] = m.seconds.get("total") if m.seconds else None
    row["methods"] = config_summary(record.config)
    row["data_aware_layers"] = len(m.data_aware_layers or ())
    row["duplicate_of"] = record.duplicate_of
    return row


def _layer_cells(record: TrialRecord, layers: Sequence[str]) -> dict[str, object]:
    """Per searched layer: its method, rank (``"16x8"`` for a tuple) and kept-rank fraction."""
    specs = record.config.get("layers", {})
    cells: dict[str, object] = {}
    for layer in layers:
        method_col, rank_col, fraction_col = layer_columns(layer)
        spec = specs.get(layer, {"method": DENSE, "rank": None})
        cells[method_col] = spec["method"]
        cells[rank_col] = _rank_text(spec.get("rank"))
        cells[fraction_col] = record.fraction(layer, spec["method"])
    return cells


@dataclass(frozen=True)
class StudyResults:
    """Everything a report needs about one study, as plain data.

    Attributes:
        name: the study's name.
        storage: its storage URL (None for an in-memory study).
        objectives: objective names in the study's order; the qualities (``"accuracy"``, ``"fidelity"``)
            are maximized, the rest are costs as fractions of the dense model.
        directions: ``"maximize"``/``"minimize"`` per objective.
        trials: :func:`trials_table` of every finished trial.
        layers: the searched layers, in model order.
        dense: the dense model as measured by the evaluator: ``accuracy``, ``macs``, ``params``, ``input_shape``.
        settings: how the study was run (sampler, evaluator settings, search space), for the report.
        configs: trial number -> the config's JSON dict (the exact config each trial evaluated).
        reference_accuracy: the quality coordinate (accuracy and fidelity alike, both in [0, 1]) of the
            hypervolume reference point (its cost coordinates are the dense model's costs, 1.0).
    """

    name: str
    storage: str | None
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    trials: pd.DataFrame
    layers: tuple[str, ...]
    dense: Mapping[str, object]
    settings: Mapping[str, object] = field(default_factory=dict)
    configs: Mapping[int, Mapping[str, object]] = field(default_factory=dict)
    reference_accuracy: float = 0.0

    @classmethod
    def from_records(
        cls,
        records: Sequence[TrialRecord],
        *,
        name: str,
        objectives: Sequence[str],
        layers: Sequence[str],
        dense: Mapping[str, object],
        storage: str | None = None,
        directions: Sequence[str] | None = None,
        settings: Mapping[str, object] | None = None,
        reference_accuracy: float = 0.0,
    ) -> StudyResults:
        """Results from trial records (directions default to maximize the qualities, minimize the rest)."""
        objectives = tuple(objectives)
        directions = tuple(directions or ("maximize" if o in QUALITY_OBJECTIVES else "minimize" for o in objectives))
        configs = {r.number: r.attrs["config"] for r in records if r.attrs.get("config")}
        table = trials_table(records, objectives, directions, layers)
        return cls(
            name, storage, objectives, directions, table, tuple(layers), dict(dense), dict(settings or {}),
            configs, reference_accuracy,
        )  # fmt: skip

    # --- views ---------------------------------------------------------------------------------
    @property
    def quality(self) -> str:
        """The quality the study is ranked by: ``accuracy`` when it is an objective, else ``fidelity``."""
        return headline_quality(self.objectives)

    @property
    def qualities(self) -> tuple[str, ...]:
        """:attr:`quality` first, then the other quality where a completed trial measured it."""
        frame = self.completed()
        others = [q for q in QUALITY_OBJECTIVES if q != self.quality and q in frame.columns and frame[q].notna().any()]
        return (self.quality, *others)

    def dense_quality(self, quality: str | None = None) -> float:
        """The dense model's ``quality`` (default :attr:`quality`): its accuracy (NaN when not measured), or its
        fidelity, 1.0 by definition."""
        quality = quality or self.quality
        if quality == "fidelity":
            return 1.0
        value = self.dense.get("accuracy")
        return math.nan if value is None else float(value)

    @property
    def costs(self) -> tuple[str, ...]:
        """The cost objectives (every objective but the qualities)."""
        return tuple(o for o in self.objectives if o not in QUALITY_OBJECTIVES)

    @property
    def primary_cost(self) -> str:
        """The cost that orders tables and the knee: ``macs`` when searched, else the first cost."""
        return "macs" if "macs" in self.costs else self.costs[0]

    def completed(self) -> pd.DataFrame:
        """Completed trials, each config once (duplicates dropped), in trial order."""
        frame = self.trials
        return frame[(frame["state"] == "complete") & frame["duplicate_of"].isna()]

    def pareto(self) -> pd.DataFrame:
        """The Pareto-optimal trials (each config once), cheapest first."""
        frame = self.completed()
        front = frame[frame["is_pareto"]]
        return front.sort_values([self.primary_cost, "trial"]).reset_index(drop=True)

    def config(self, trial: int) -> CompressionConfig:
        """The config a trial evaluated; a clear error for a trial that does not exist or has none."""
        from ..config import CompressionConfig  # torch: only when a config is asked for

        if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)):
            raise RanksearchError(f"a trial number must be an int, got {trial!r}")
        trial = int(trial)
        if trial not in self.configs:
            numbers = sorted(self.configs)
            span = f"trials {numbers[0]}..{numbers[-1]}" if numbers else "no trials with a config"
            raise RanksearchError(f"study {self.name!r} has no trial {trial} with a config ({span})")
        return CompressionConfig.from_dict(self.configs[trial])

    def row(self, trial: int) -> pd.Series:
        """The trials-table row of one trial."""
        rows = self.trials[self.trials["trial"] == trial]
        if rows.empty:
            raise RanksearchError(f"study {self.name!r} has no finished trial {trial}")
        return rows.iloc[0]

    def latency_check(self) -> pd.DataFrame:
        """Trials whose whole model was timed, predicted against measured as ratios to the dense model:
        ``trial``, ``predicted_ms``, ``measured_ms``, ``reference_ms`` (the dense model timed next to it),
        ``predicted_ratio``, ``measured_ratio``, ``error`` (predicted / measured ratio - 1),
        ``corrected_ratio`` and ``corrected_error`` (with the per-model scale fitted on the other timed
        trials, see :attr:`latency_scale`) and ``is_pareto``; empty without latency measurements."""
        return self._latency_check.copy()

    @cached_property
    def _latency_check(self) -> pd.DataFrame:  # computed once: the card, the figure, targets and caps need it
        return latency_check_frame(self.completed(), self.dense.get("latency_seconds"))

    @property
    def latency_scale(self) -> float:
        """The per-model correction of predicted latency changes, fitted on every timed trial:
        ``1 + latency_scale * (latency_ratio - 1)`` is the corrected prediction (1.0 until enough trials were timed)."""
        check = self._latency_check
        return fit_latency_scale(check["predicted_ratio"].to_numpy(), check["measured_ratio"].to_numpy())

    def corrected_latency(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (trials-table rows) with ``latency_ratio`` corrected by :func:`trusted_scale`: what latency
        targets and caps compare (unchanged while the study's timed checks do not support a correction)."""
        scale = trusted_scale(self._latency_check)
        return frame if scale == 1.0 else frame.assign(latency_ratio=1 + scale * (frame["latency_ratio"] - 1))

    def best_per_target(self, targets: Mapping[str, Sequence[float]] | None = None) -> pd.DataFrame:
        """The best completed trial (highest :attr:`quality`) within each budget target: what to ship at each budget.

        ``targets`` maps a cost (``macs``, ``params``, ``latency``, ``memory``) to fractions of the dense model,
        e.g. ``{"macs": [0.1, 0.25]}``; by default the targets the study was run with (``settings["targets"]``).
        One row per (cost, target): ``cost``, ``target``, ``trial``, the :attr:`qualities` (``accuracy``
        and/or ``fidelity``), ``value`` (the trial's cost of that kind), ``macs``, ``params`` (and
        ``latency``, ``memory`` when recorded) as fractions of dense, and
        ``methods``. Ties go to the cheaper trial in that cost, then the lower number; ``trial`` is missing
        (``<NA>``) where no trial meets the target. With latency targets, latencies are corrected by the
        study's timed checks where they support it (:meth:`corrected_latency`). An unknown cost kind or a
        fraction outside (0, 1) raises :class:`RanksearchError`.
        """
        chosen = self.settings.get("targets") if targets is None else targets
        frame = self.completed()
        if isinstance(chosen, Mapping) and "latency" in chosen:
            frame = self.corrected_latency(frame)
        return best_rows(frame, chosen or {}, self.qualities)

    def sensitivity(self) -> pd.DataFrame:
        """The per-layer sensitivity curves the study measured (``allocate`` strategy), one row per point:
        ``layer``, ``method``, ``fraction``, ``cost`` (the layer's, as a fraction of its dense cost),
        ``loss``, ``metric``, ``measured`` (False where interpolated) and ``loss_increase`` over the dense
        model; empty when the study stored no curves."""
        return sensitivity_frame(self.settings.get("sensitivity"))

    # --- hypervolume -----------------------------------------------------------------------------
    def reference_point(self) -> dict[str, float]:
        """The hypervolume reference: ``reference_accuracy`` per quality and the dense model's cost (1.0) per cost."""
        return {o: (self.reference_accuracy if o in QUALITY_OBJECTIVES else 1.0) for o in self.objectives}

    def _minimized(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        points = to_minimization(frame[list(self.objectives)].to_numpy(dtype=float), self.directions)
        reference = to_minimization(np.array([[self.reference_point()[o] for o in self.objectives]]), self.directions)[
            0
        ]
        return points, reference

    def hypervolume(self) -> float:
        """Volume the front dominates up to :meth:`reference_point` (objectives as they are stored).

        With the quality in [0, 1] and costs as fractions of dense, the largest possible value is
        ``dense quality - reference_accuracy`` only if a config kept the dense quality at zero cost.
        """
        frame = self.completed()
        if frame.empty:
            return 0.0
        return hypervolume(*self._minimized(frame))

    def hypervolume_history(self) -> pd.DataFrame:
        """``trial``, ``hypervolume``: the front's hypervolume after each finished trial, in trial order."""
        return self._history.copy()

    @cached_property
    def _history(self) -> pd.DataFrame:  # computed once: the figure and the CSV both need it
        frame = self.trials.sort_values("trial")
        points, reference = self._minimized(frame)
        points[(frame["state"] != "complete").to_numpy()] = np.nan
        return pd.DataFrame({"trial": frame["trial"].to_numpy(), "hypervolume": hypervolume_history(points, reference)})
