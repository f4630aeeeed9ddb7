"""``[calibration]`` of a study file: the data data-aware methods are fitted to, as evaluator settings."""

from __future__ import annotations

from pathlib import Path

from .errors import RanksearchError
from .usercode import check_spec

__all__ = ["CALIBRATION_KEYS", "calibration_section"]

CALIBRATION_KEYS = {"batches": "calibration_batches", "factory": "calibration"}
"""``[calibration]`` keys and the evaluator settings they set: data-aware methods fit to the inputs of
``batches`` batches of the training loader, or of the loader ``factory()`` returns."""


def calibration_section(document: dict, path: Path) -> dict:
    """``[calibration]`` as evaluator settings (``batches`` -> ``calibration_batches``, ``factory`` ->
    ``calibration``); each key is checked here, naming the section, and may not also be in ``[evaluator]``."""
    table = document.get("calibration")
    if table is None:
        return {}
    where = f"{path}: [calibration]"
    if not isinstance(table, dict):
        raise RanksearchError(f"{where} must be a table")
    unknown = [key for key in table if key not in CALIBRATION_KEYS]
    if unknown:
        raise RanksearchError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(CALIBRATION_KEYS)})")
    if "batches" not in table:
        raise RanksearchError(f"{where} needs batches = N (how many batches the statistics are gathered on)")
    batches = table["batches"]
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise RanksearchError(f"{where} batches must be an int >= 1, got {batches!r}")
    if "factory" in table:
        check_spec(table["factory"], f"{where} factory")
    evaluator = document.get("evaluator", {})
    for key, setting in CALIBRATION_KEYS.items():
        if key in table and isinstance(evaluator, dict) and setting in evaluator:
            raise RanksearchError(f"{where} {key} and [evaluator] {setting} say the same thing: keep one")
    return {CALIBRATION_KEYS[key]: value for key, value in table.items()}
