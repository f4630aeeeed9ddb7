"""Study identity: what a study was made with, stored once and checked on every resume.

Trials measured with other objectives, layers, rank grid, evaluator settings, dense model or latency
hardware are not comparable, so a study asked to continue with any of these changed is refused.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import optuna
from torch import nn

from .._evaluator_settings import ADDED_SETTINGS
from ..cache import weight_digest
from ..errors import RanksearchError
from ..evaluator import Evaluator
from ..latency import LatencySettings
from ..objectives import OBJECTIVES
from ..record import DENSE_ATTR, EVALUATOR_ATTR, IDENTITY_ATTR, SAMPLER_ATTR, SCHEMA_ATTR, SCHEMA_VERSION, check_schema
from ..space import LayerChoices, SearchSpace
from ._storage import open_storage

__all__ = ["create_or_load", "study_identity", "weights_digest"]

ADDED_TO_IDENTITY = ("weights",)  # identity keys newer than some stored studies: checked only where stored
BEFORE_KEYS_EXISTED = {"grid": "rank", "strategy": "per-layer", "targets": {}}
"""What a study stored before these identity keys existed was made with (so it resumes as what it was)."""
EVALUATOR_BEFORE_KEYS_EXISTED = {
    "distill": 0.0,
    "distill_temperature": 4.0,
    "fidelity": "auto",
    "metric": None,
    "loss": None,
    "batch": None,
    "output": None,
}
UPGRADE_HINTS = {
    "grid": ', or continue this one on its grid: [space] grid = "rank" (the default before the cost grid)',
    "strategy": ', or continue this one as it was made: [study] strategy = "per-layer" (the default before "allocate")',
}


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, values): the model the trials start from."""
    digests = [f"{name}:{weight_digest(tensor)}" for name, tensor in model.state_dict().items()]
    return hashlib.blake2b("\n".join(digests).encode(), digest_size=12).hexdigest()


def study_identity(
    objectives: Sequence[str],
    layers: Mapping[str, LayerChoices],
    space: SearchSpace,
    evaluator: Evaluator,
    latency: LatencySettings | None,
) -> dict[str, object]:
    """What must not change when a study is resumed (machine-only settings such as threads excluded)."""
    settings = {**asdict(evaluator.settings), "distill": evaluator.distill}  # the weight in use (None: a default)
    for machine_only in ("device", "threads"):
        settings.pop(machine_only)
    for added, default in ADDED_SETTINGS.items():
        if settings.get(added) == default:
            settings.pop(added)
    identity: dict[str, object] = {
        "objectives": list(objectives),
        "layers": {name: list(layer.methods) for name, layer in layers.items()},
        "grid": space.grid,
        "rank_fractions": list(space.rank_fractions),
        "rank_multiple": space.rank_multiple,
        "evaluator": settings,
        "dense_cost": {"macs": evaluator.dense.macs, "params": evaluator.dense.params},
        "weights": weights_digest(evaluator.model),
    }
    if space.grid == "cost":
        identity["cost_fractions"] = list(space.cost_fractions)
    if evaluator.latency is not None and latency is not None:  # latencies measured elsewhere differ
        timing = asdict(latency)
        for bookkeeping in ("table", "check_every"):
            timing.pop(bookkeeping)
        for added, default in (("runtime", "torch"), ("channels_last", False)):  # added later, at their defaults:
            if timing.get(added) == default:  # studies stored before keep their identity
                timing.pop(added)
        identity["latency"] = {**timing, "context": evaluator.latency.context}
    if evaluator.memory is not None:  # bytes traced on a CPU differ from a CUDA allocator's
        identity["memory"] = asdict(evaluator.memory.settings)
    return identity


def create_or_load(
    storage: str | None,
    study_name: str,
    sampler: optuna.samplers.BaseSampler,
    identity: Mapping[str, object],
    *,
    evaluator: Evaluator,
    sampler_name: str,
    heartbeat: int | None,
) -> optuna.Study:
    """Open the study ``study_name`` (resuming it if it exists, after checking its identity) or create it."""
    backend = None if storage is None else open_storage(storage, heartbeat)
    directions = [OBJECTIVES[o] for o in identity["objectives"]]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study": we say so ourselves
    try:
        study = optuna.create_study(
            storage=backend, study_name=study_name, sampler=sampler, directions=directions, load_if_exists=True
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is not None:
        check_schema(study.user_attrs.get(SCHEMA_ATTR), f"study {study_name!r} in {storage}")
        _check_identity(stored, identity, f"study {study_name!r} in {storage}")
        return study
    if study.trials:
        raise RanksearchError(f"study {study_name!r} in {storage} exists but was not made by ranksearch")
    with warnings.catch_warnings():  # experimental in Optuna; lets optuna-dashboard name the objectives
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(identity["objectives"]))
    study.set_user_attr(IDENTITY_ATTR, dict(identity))
    study.set_user_attr(EVALUATOR_ATTR, asdict(evaluator.settings))
    study.set_user_attr(DENSE_ATTR, asdict(evaluator.dense))
    study.set_user_attr(SAMPLER_ATTR, sampler_name)
    study.set_user_attr(SCHEMA_ATTR, SCHEMA_VERSION)
    return study


def _check_identity(stored: Mapping[str, object], identity: Mapping[str, object], where: str) -> None:
    stored = {**BEFORE_KEYS_EXISTED, **stored}
    if isinstance(stored.get("evaluator"), dict):
        stored["evaluator"] = {**EVALUATOR_BEFORE_KEYS_EXISTED, **stored["evaluator"]}
    differences: list[str] = []
    hints: list[str] = []
    for key, value in identity.items():
        if key not in stored and key in ADDED_TO_IDENTITY:  # a study made before the key existed
            continue
        if key == "weights" and stored[key] != value:
            raise RanksearchError(
                f"{where} was made with other weights of the model (a dense model trained apart, e.g. on another "
                "machine, or another saved model): every worker must start from the same trained model; copy the "
                "trained-model file (runs/baselines/) or use [model] path"
            )
        if json.loads(json.dumps(stored.get(key))) != json.loads(json.dumps(value)):
            hint = UPGRADE_HINTS.get(key, "") if stored.get(key) == BEFORE_KEYS_EXISTED.get(key) else ""
            differences.append(f"different {key}: stored {stored.get(key)}, asked {value}")
            hints.append(_evaluator_hint(stored[key], value) if key == "evaluator" else hint)
    if differences:
        raise RanksearchError(
            f"{where} exists with {'; '.join(differences)}; use another study name (or storage) for a different "
            f"search{''.join(hints)}"
        )


def _evaluator_hint(stored: Mapping[str, object], asked: Mapping[str, object]) -> str:
    """How to continue a study made before distillation became the default (labels only then)."""
    differ = {k for k in {*stored, *asked} if stored.get(k) != asked.get(k)}
    if differ == {"distill"} and stored.get("distill") == 0.0:
        return (
            ", or continue this one as it was made: [evaluator] distill = 0.0 (labels only, the default before "
            "distillation at 0.5)"
        )
    return ""
