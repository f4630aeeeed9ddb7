"""The Optuna edge: the only package that imports Optuna.

- :class:`RankSearch` (``_search``): a search over one model; the objective (``_objective``) suggests a
  config per trial, measures it once and stores it as a trial record (:mod:`ranksearch.record`);
- ``_storage``: opening storages (journal files, SQLite tuned for local workers, PostgreSQL);
- ``_identity``: what a study was made with, checked on every resume (``study_identity`` and
  ``create_or_load`` are public for tools that write ranksearch studies, e.g. ``benchmarks/report.py``);
- ``_budget``: one trial budget shared exactly by every worker of a study;
- ``_progress``: the progress line after each trial;
- ``_results``: a stored study as plain :class:`~ranksearch.report.StudyResults`, without model or data.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ imports on first use
    from ._identity import create_or_load, study_identity
    from ._results import load_results, records_of, results_of
    from ._sampler import make_sampler
    from ._search import WARM_START_METHODS, RankSearch
    from ._storage import open_storage

_WHERE = {
    "create_or_load": "_identity",
    "study_identity": "_identity",
    "load_results": "_results",
    "records_of": "_results",
    "results_of": "_results",
    "make_sampler": "_sampler",
    "WARM_START_METHODS": "_search",
    "RankSearch": "_search",
    "open_storage": "_storage",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:  # reading a stored study (ranksearch report) needs no torch
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
