"""The trial record: what a study stores for each trial, under which names, and how it is read back.

One module owns the schema, so adding a measurement is one edit (a field of :class:`Measurements`):
the evaluator fills it, the study stores it, the report and benchmarks read it, all through this
module. No Optuna and no torch here.

A trial stores:

- parameters (the sampler's choices): with the ``per-layer`` strategy :func:`param_name`
  ``"<layer>.method"`` -> method, and ``"<layer>.<method>.rank_fraction"`` -> grid fraction (of the rank
  or of the layer's dense cost, as the space's grid says; only for the chosen, non-dense method); with the
  ``allocate`` strategy the knobs (``budget`` or ``target`` and ``slack``, ``preference.<method>``,
  ``depth_tilt``) and, as user attributes, the per-layer ``fractions`` and ``screened`` / ``proxy_loss``;
- user attributes: ``config`` (the exact :class:`~ranksearch.config.CompressionConfig` as its JSON
  dict), every field of :class:`Measurements` (JSON-ready: non-finite floats stored as null), and the
  markers ``duplicate_of`` (a config measured by an earlier trial, whose measurements were copied),
  ``interrupted`` (Ctrl-C: the trial does not count and is run again) and ``over_budget`` (a worker
  lost the race for the last slot of a shared budget; the trial is pruned unevaluated).

The study stores its settings as study attributes (:data:`IDENTITY_ATTR` and the others below) and
the schema version (:data:`SCHEMA_ATTR`). Studies written before the version existed are version 0:
same names, read the same way; a study from a newer version is refused with a clear message.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import RanksearchError

__all__ = [
    "CONFIG",
    "DENSE",
    "DUPLICATE_OF",
    "FIXED_CONFIG",
    "FRACTIONS",
    "INTERRUPTED",
    "ONE_SHOT",
    "OVER_BUDGET",
    "PROXY_LOSS",
    "SCHEMA_VERSION",
    "SCREENED",
    "SCREEN_CHECK_ATTR",
    "SENSITIVITY_ATTR",
    "STORED_WHEN_MEASURED",
    "UNIFORM_START",
    "UNIFORM_START_CHECK_ATTR",
    "Measurements",
    "TrialRecord",
    "check_schema",
    "jsonable",
    "param_name",
    "parse_param_name",
    "trial_attributes",
]

DENSE = "dense"
"""The method name of a layer kept as it is."""

SCHEMA_VERSION = 1
"""Version of the names below; bump it (and teach :func:`check_schema` the old one) when they change."""

# --- study attributes ------------------------------------------------------------------------------
IDENTITY_ATTR = "ranksearch"  # what must not change on resume: objectives, layers, space, evaluator, weights...
SCHEMA_ATTR = "ranksearch_schema"  # SCHEMA_VERSION of the writer (absent: version 0)
EVALUATOR_ATTR = "evaluator"  # EvaluatorSettings as a dict, for the report
DENSE_ATTR = "dense"  # the dense model's DenseMeasurement as a dict
SAMPLER_ATTR = "sampler"  # the sampler's name
FRONT_LATENCY_ATTR = "latency_measured"
"""{trial number (str): [seconds, dense reference seconds]} for Pareto configs timed after the run (studies
stored before the reference existed keep plain seconds)."""
SENSITIVITY_ATTR = "sensitivity"  # the per-layer sensitivity curves (Sensitivity.to_dict()), measured once
SCREEN_CHECK_ATTR = "screen_check"
"""{"asked", "screen", "proxy_seconds", "trial_seconds"} of a new ``allocate`` study: the candidates each trial
screens, as many as cost at most half a full evaluation (a resumed study screens as stored)."""
UNIFORM_START_CHECK_ATTR = "uniform_start_check"
"""{"ran": bool, "check_seconds": its estimated cost, "trial_seconds": a full evaluation's estimated cost} of a
new ``allocate`` study: whether the uniform starts were looked for (only where that costs less than one trial)."""

# --- trial attributes besides the measurements -----------------------------------------------------
CONFIG = "config"
DUPLICATE_OF = "duplicate_of"
INTERRUPTED = "interrupted"
OVER_BUDGET = "over_budget"
FIXED_CONFIG = "fixed_config"  # set on an enqueued trial: evaluate exactly this config (a warm start)
ONE_SHOT = "one_shot"  # set on an enqueued trial: the plain allocation of its knobs, not screened
UNIFORM_START = "uniform_start"  # set on an enqueued fixed config: the proxy's best uniform config at a target,
# queued after the sensitivity pass (after the one-shot allocations)
FRACTIONS = "fractions"  # {layer: grid fraction} of an allocated config (its params are knobs)
SCREENED = "screened"  # candidates the proxy scored for this trial (1: none screened)
PROXY_LOSS = "proxy_loss"  # the proxy loss of the evaluated config (the screening's first fidelity)

STORED_WHEN_MEASURED = frozenset(
    {
        "fidelity",
        "data_aware_layers",
        "latency_reference_seconds",
        "memory_bytes",
        "memory_activations_bytes",
        "memory_ratio",
    }
)
"""Measurements only some studies take: a trial stores them only when measured (read back as None)."""

_METHOD_SUFFIX = ".method"
_FRACTION_SUFFIX = ".rank_fraction"


def param_name(layer: str, method: str | None = None) -> str:
    """The parameter name of a layer's method choice, or of its rank fraction under ``method``."""
    return f"{layer}{_METHOD_SUFFIX}" if method is None else f"{layer}.{method}{_FRACTION_SUFFIX}"


def parse_param_name(name: str) -> tuple[str, str | None]:
    """``(layer, None)`` for a method parameter, ``(layer, method)`` for a rank-fraction parameter.

    Layer names may contain dots (``"layer1.0.conv1"``); method names do not.
    """
    if name.endswith(_FRACTION_SUFFIX):
        layer, _, method = name[: -len(_FRACTION_SUFFIX)].rpartition(".")
        if layer and method:
            return layer, method
    elif name.endswith(_METHOD_SUFFIX) and len(name) > len(_METHOD_SUFFIX):
        return name[: -len(_METHOD_SUFFIX)], None
    raise RanksearchError(
        f"{name!r} is not a ranksearch parameter name ('<layer>.method' or '<layer>.<m>.rank_fraction')"
    )


def jsonable(value: object) -> object:
    """``value`` with non-finite floats as None and tuples as lists (what JSON storages keep)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@dataclass
class Measurements:
    """Everything measured for one config: the trial's stored attributes (besides the config).

    Counts are absolute: ``macs`` are multiply-accumulates of one forward at the evaluator's input
    shape (FLOPs = 2 x MACs), ``params`` parameters; ``*_ratio`` are fractions of the dense model.
    Accuracies are on the fixed validation subset: ``accuracy_zero_shot`` right after decomposition,
    ``accuracy_recalibrated`` after BatchNorm recalibration (None without BatchNorm),
    ``accuracy_finetuned`` after the brief fine-tune (None when skipped, ``finetune_skipped`` says why);
    ``accuracy`` is the last of these (NaN, and the others None or NaN, when the batches carry no
    labels). ``fidelity`` is the agreement of the last model's outputs with the dense model's (in [0, 1];
    None when not measured: it is when the study asks for it, or the batches carry no labels). Latencies
    are in seconds: ``latency_seconds`` predicted from the latency table, ``latency_measured_seconds``
    the whole model timed (sampled trials only) and ``latency_reference_seconds`` the dense model timed
    interleaved with it (the measured ratio is their quotient). ``memory_bytes`` is weights plus peak
    activations (``memory_activations_bytes``) at the deployment batch and dtype, ``memory_ratio`` its
    fraction of the dense model's (None when memory is not measured).
    ``failure`` is why the evaluation failed (None if it did not); ``layer_errors`` the relative weight
    error per compressed layer; ``seconds`` wall times per stage (``decompose``, ``cost``,
    ``recalibrate``, ``finetune``, ``evaluate``, ``total``). ``data_aware_layers`` names the layers whose
    method is data-aware (their factors depend on the calibration data; None when there are none).
    """

    macs: int = 0
    params: int = 0
    macs_ratio: float = 1.0
    params_ratio: float = 1.0
    accuracy: float = float("nan")
    accuracy_zero_shot: float = float("nan")
    accuracy_recalibrated: float | None = None
    accuracy_finetuned: float | None = None
    fidelity: float | None = None
    latency_seconds: float | None = None
    latency_ratio: float | None = None
    latency_measured_seconds: float | None = None
    latency_reference_seconds: float | None = None
    memory_bytes: int | None = None
    memory_activations_bytes: int | None = None
    memory_ratio: float | None = None
    finetune_skipped: str | None = None
    failure: str | None = None
    layer_errors: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    data_aware_layers: list[str] | None = None

    def to_attrs(self) -> dict[str, Any]:
        """The measured fields as JSON-ready attributes (deep copies; NaN/inf stored as None). Fields of
        :data:`STORED_WHEN_MEASURED` are left out while None, so studies that do not measure them store
        what they stored before the fields existed."""
        return {
            f.name: jsonable(copy.deepcopy(getattr(self, f.name)))
            for f in fields(Measurements)
            if not (f.name in STORED_WHEN_MEASURED and getattr(self, f.name) is None)
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, object]) -> Measurements:
        """The measurements stored in a trial's attributes; missing fields take their defaults, and a
        float stored as None (it was not finite) reads back as NaN where NaN is the default."""
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name not in attrs:
                continue
            value = attrs[f.name]
            if value is None and isinstance(f.default, float):
                value = math.nan
            values[f.name] = value
        return cls(**values)

    def objective(self, name: str) -> float:
        """The value of objective ``name`` (see :mod:`ranksearch.objectives`) for these measurements."""
        values = {
            "accuracy": self.accuracy,
            "macs": self.macs_ratio,
            "params": self.params_ratio,
            "latency": self.latency_ratio,
            "memory": self.memory_ratio,
            "fidelity": self.fidelity,
        }
        if name not in values:
            raise RanksearchError(f"unknown objective {name!r}; known: {', '.join(values)}")
        if name == "accuracy" and math.isnan(self.accuracy) and self.fidelity is not None:
            raise RanksearchError(
                "the objective 'accuracy' was not measured: the batches carry no labels; use the objective 'fidelity'"
            )
        if name == "fidelity" and self.fidelity is None:
            raise RanksearchError(
                "the objective 'fidelity' was not measured: the evaluator measures it when its objectives name it "
                "(Evaluator(..., objectives=...)) or when the batches carry no labels"
            )
        if name == "memory" and self.memory_ratio is None:
            raise RanksearchError(
                "the objective 'memory' was not measured: the evaluator measures it when given memory settings "
                "(Evaluator(..., memory=MemorySettings()); a study does when memory is an objective or a target)"
            )
        return values[name]


def trial_attributes(config: Mapping[str, object], measurements: Measurements) -> dict[str, object]:
    """The user attributes a measured trial stores: its config's JSON dict and its measurements."""
    return {CONFIG: jsonable(dict(config)), **measurements.to_attrs()}


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial as stored: plain data, with typed views of the stored attributes.

    Attributes:
        number: the trial number in its study.
        state: ``"complete"`` or ``"fail"``.
        values: objective values in the study's objective order (None for failed trials).
        params: the sampler's choices, named by :func:`param_name`.
        attrs: the stored attributes (see the module docstring).
    """

    number: int
    state: str
    values: tuple[float, ...] | None
    params: Mapping[str, object] = field(default_factory=dict)
    attrs: Mapping[str, object] = field(default_factory=dict)

    @property
    def measurements(self) -> Measurements:
        return Measurements.from_attrs(self.attrs)

    @property
    def config(self) -> Mapping[str, object]:
        """The evaluated config's JSON dict (empty if the trial stored none)."""
        return self.attrs.get(CONFIG) or {}

    @property
    def duplicate_of(self) -> int | None:
        """The earlier trial that measured the same config, or None."""
        original = self.attrs.get(DUPLICATE_OF)
        return None if original is None else int(original)

    def fraction(self, layer: str, method: str) -> float | None:
        """The grid fraction chosen for ``layer`` under ``method`` (1.0 for dense): the sampler's parameter,
        or for an allocated config the fraction it recorded."""
        if method == DENSE:
            return 1.0
        chosen = self.params.get(param_name(layer, method))
        return chosen if chosen is not None else (self.attrs.get(FRACTIONS) or {}).get(layer)


def check_schema(version: object, where: str) -> int:
    """The schema version of a stored study (absent: 0), or a clear error for one this code cannot read."""
    if version is None:
        return 0
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RanksearchError(f"{where}: the stored schema version {version!r} is not a version number")
    if version > SCHEMA_VERSION:
        raise RanksearchError(
            f"{where} was written by a newer ranksearch (trial-record schema {version}; this version reads up to "
            f"{SCHEMA_VERSION}): upgrade ranksearch to read it"
        )
    return version
