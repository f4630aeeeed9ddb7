"""Budget targets and sensitivity curves as plain tables, for :class:`~ranksearch.report.StudyResults`.

``best_rows`` answers "what is the best model at 10% / 25% / 50% of the dense MACs?" for the targets a
study named; ``sensitivity_frame`` reads the per-layer curves the study stored
(``ranksearch.sensitivity.Sensitivity.to_dict()``) with pandas alone, so reports need no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import RanksearchError
from ..objectives import TARGET_KINDS, check_targets

__all__ = ["TARGET_COLUMNS", "best_rows", "sensitivity_frame"]

TARGET_COLUMNS = ("cost", "target", "trial", "accuracy", "value", "macs", "params")
"""Columns of :func:`best_rows` of an accuracy study (``latency``, ``memory`` and ``methods`` follow when the study
has them; a study of another quality has its qualities in place of ``accuracy``)."""
SENSITIVITY_COLUMNS = ("layer", "method", "fraction", "cost", "loss", "metric", "measured")
TOLERANCE = 1e-12
"""A trial at exactly the target (up to float noise) meets it."""


def best_rows(completed: pd.DataFrame, targets: object, quality: str | Sequence[str] = "accuracy") -> pd.DataFrame:
    """Per (cost kind, target): the trial of ``completed`` with the highest quality and ``<kind>_ratio <= target``.

    ``quality`` is the column ranked by, or a sequence of quality columns: the first ranks, the others are
    shown beside it. Ties go to the cheaper trial in that cost, then the lower trial number. A target no trial
    meets gets a row with ``trial`` missing. ``targets`` is validated like a study's
    (:func:`ranksearch.objectives.check_targets`).
    """
    qualities = [quality] if isinstance(quality, str) else list(quality)
    quality = qualities[0]
    checked = check_targets(_as_dict(targets))
    kinds = [k for k in TARGET_KINDS if k not in ("macs", "params")]
    extra = [k for k in kinds if k in checked or completed[f"{k}_ratio"].notna().any()]
    extra += ["methods"] if "methods" in completed.columns else []
    scored = completed[completed[quality].notna()]
    rows = []
    for kind, values in checked.items():
        column = f"{kind}_ratio"
        ranked = scored[scored[column].notna()].sort_values([quality, column, "trial"], ascending=[False, True, True])
        for target in values:
            meeting = ranked[ranked[column] <= target + TOLERANCE]
            row = {"cost": kind, "target": target}
            if not meeting.empty:
                pick = meeting.iloc[0]
                row.update({"trial": int(pick["trial"]), **{q: pick[q] for q in qualities}, "value": pick[column]})
                row.update({c: pick[f"{c}_ratio"] for c in ("macs", "params", *extra) if c != "methods"})
                row.update({"methods": pick["methods"]} if "methods" in extra else {})
            rows.append(row)
    frame = pd.DataFrame(rows, columns=["cost", "target", "trial", *qualities, *TARGET_COLUMNS[4:], *extra])
    frame["trial"] = frame["trial"].astype("Int64")
    for column in ("target", *qualities, "value", "macs", "params", *(c for c in extra if c != "methods")):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def _as_dict(targets: object) -> object:
    """Stored targets come back from JSON as lists; anything else is left for ``check_targets`` to judge."""
    if isinstance(targets, Mapping) and not isinstance(targets, dict):
        return dict(targets)
    return targets


def sensitivity_frame(data: object) -> pd.DataFrame:
    """The stored curves as one row per point: layer, method, fraction, cost, loss, metric, measured and
    ``loss_increase`` (loss - dense loss, clipped at 0, as ``Sensitivity.frame`` computes it); empty
    (same columns) when the study measured none."""
    columns = [*SENSITIVITY_COLUMNS, "loss_increase"]
    if data is None:
        return pd.DataFrame(columns=columns)
    try:
        dense_loss = float(data["dense_loss"])
        frame = pd.DataFrame([list(point) for point in data["points"]], columns=list(SENSITIVITY_COLUMNS))
        frame = frame.astype({"layer": str, "method": str, "measured": bool})
        for column in ("fraction", "cost", "loss", "metric"):
            frame[column] = frame[column].astype(float)
    except (KeyError, TypeError, ValueError) as error:
        raise RanksearchError(f"stored sensitivity curves are malformed: {error}") from None
    frame["loss_increase"] = np.maximum(frame["loss"] - dense_loss, 0.0)
    return frame[columns]
