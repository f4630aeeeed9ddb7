"""From a stored Optuna study to plain :class:`~ranksearch.report.StudyResults` (what reports are made from)."""

from __future__ import annotations

import optuna

from ..errors import RanksearchError
from ..record import (
    DENSE_ATTR,
    DUPLICATE_OF,
    EVALUATOR_ATTR,
    FRONT_LATENCY_ATTR,
    IDENTITY_ATTR,
    SAMPLER_ATTR,
    SCHEMA_ATTR,
    SENSITIVITY_ATTR,
    TrialRecord,
    check_schema,
)
from ..report import StudyResults
from ..storage import storage_file
from ._storage import open_storage

__all__ = ["load_results", "records_of", "results_of"]

_FINISHED = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.FAIL: "fail"}


def records_of(study: optuna.Study) -> list[TrialRecord]:
    """The study's finished trials as :class:`TrialRecord` (Pareto configs timed after the run included)."""
    timed = study.user_attrs.get(FRONT_LATENCY_ATTR, {})
    records = []
    for t in study.get_trials(deepcopy=False, states=tuple(_FINISHED)):
        attrs = dict(t.user_attrs)
        original = str(attrs.get(DUPLICATE_OF, t.number))
        if attrs.get("latency_measured_seconds") is None and original in timed:
            seconds = timed[original]
            if isinstance(seconds, (list, tuple)):  # [seconds, dense reference]; older studies: seconds only
                seconds, attrs["latency_reference_seconds"] = seconds
            attrs["latency_measured_seconds"] = seconds
        values = tuple(t.values) if t.state == optuna.trial.TrialState.COMPLETE else None
        records.append(TrialRecord(t.number, _FINISHED[t.state], values, dict(t.params), attrs))
    return records


def results_of(study: optuna.Study, storage: str | None = None) -> StudyResults:
    """A ranksearch study's finished trials and settings as plain :class:`StudyResults`."""
    identity = study.user_attrs.get(IDENTITY_ATTR)
    if identity is None:
        raise RanksearchError(f"study {study.study_name!r} in {storage} was not made by ranksearch")
    check_schema(study.user_attrs.get(SCHEMA_ATTR), f"study {study.study_name!r} in {storage}")
    settings = {
        "latency": identity.get("latency"),
        "memory": identity.get("memory"),
        "sampler": study.user_attrs.get(SAMPLER_ATTR),
        "evaluator": study.user_attrs.get(EVALUATOR_ATTR),
        "strategy": identity.get("strategy", "per-layer"),
        "targets": identity.get("targets") or {},
        "sensitivity": study.user_attrs.get(SENSITIVITY_ATTR),
        "space": {
            "grid": identity.get("grid", "rank"),
            "cost_fractions": identity.get("cost_fractions"),
            "rank_fractions": identity.get("rank_fractions"),
            "rank_multiple": identity.get("rank_multiple"),
            "layers": identity.get("layers"),
        },
    }
    return StudyResults.from_records(
        records_of(study),
        name=study.study_name,
        storage=storage,
        objectives=identity["objectives"],
        directions=[d.name.lower() for d in study.directions],
        layers=list(identity["layers"]),
        dense=study.user_attrs.get(DENSE_ATTR, {}),
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
