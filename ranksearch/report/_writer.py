"""``write_report``: every output of a study in one folder (tables, dashboard, optional images)."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import RanksearchError
from ..record import jsonable
from ._dashboard import write_dashboard
from ._figures import figures as make_figures
from ._results import StudyResults

__all__ = ["ReportFiles", "write_report"]


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote, and notes on what it could not (e.g. no Chrome for images)."""

    folder: Path
    html: Path
    tables: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    screenshot: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _write_tables(results: StudyResults, folder: Path) -> tuple[list[Path], list[str]]:
    trials = results.trials
    written = [folder / "trials.csv", folder / "pareto.csv", folder / "hypervolume.csv"]
    trials.to_csv(written[0], index=False)
    results.pareto().to_csv(written[1], index=False)
    results.hypervolume_history().to_csv(written[2], index=False)
    notes = []
    if _parquet_available():
        written.append(folder / "trials.parquet")
        trials.to_parquet(written[-1], index=False)
    else:
        written.append(folder / "trials.json")
        trials.to_json(written[-1], orient="records", indent=1)
        notes.append("trials.json instead of trials.parquet: Parquet needs pyarrow (pip install pyarrow)")
    written += _write_extras(results, folder)
    summary = {
        "study": results.name,
        "storage": results.storage,
        "objectives": list(results.objectives),
        "directions": list(results.directions),
        "quality": results.quality,
        "trials": len(trials),
        "completed": int((trials["state"] == "complete").sum()) if len(trials) else 0,
        "pareto_trials": [int(t) for t in results.pareto()["trial"]],
        "hypervolume": results.hypervolume(),
        "reference_point": results.reference_point(),
        "dense": dict(results.dense),
        "best_per_target": _target_summary(results),
    }
    written.append(folder / "summary.json")
    # NaN (the dense accuracy of a study without labels) as null: summary.json stays strict JSON
    written[-1].write_text(json.dumps(jsonable(summary), indent=2, default=str) + "\n", encoding="utf-8")
    return written, notes


def _write_extras(results: StudyResults, folder: Path) -> list[Path]:
    """``targets.csv`` (best trial per budget target) and ``sensitivity.csv`` (the per-layer curves), when
    the study has them."""
    written = []
    for name, frame in (("targets.csv", results.best_per_target()), ("sensitivity.csv", results.sensitivity())):
        if not frame.empty:
            written.append(folder / name)
            frame.to_csv(written[-1], index=False)
    return written


def _target_summary(results: StudyResults) -> list[dict[str, object]]:
    """Per target: cost, target, and the trial that meets it best (None where none does)."""
    best = results.best_per_target()
    return [
        {"cost": row["cost"], "target": row["target"], "trial": None if pd.isna(row["trial"]) else int(row["trial"])}
        for row in best.to_dict("records")
    ]


def write_report(
    results: StudyResults,
    folder: str | Path,
    *,
    images: Sequence[str] = (),
    screenshot: str | Path | None = None,
    screenshot_height: int | None = None,
    study_file: str | None = None,
) -> ReportFiles:
    """Write a study's report to ``folder``.

    Files: ``trials.csv`` and ``trials.parquet`` (``trials.json`` without pyarrow), ``pareto.csv``,
    ``hypervolume.csv``, ``summary.json``, ``targets.csv`` (with budget targets), ``sensitivity.csv``
    (with per-layer sensitivity curves) and ``report.html`` (the self-contained dashboard). With
    ``images`` (e.g. ``("png", "svg")``) each figure is also written as ``figures/<name>.<format>``
    through kaleido; ``screenshot`` takes a PNG of the dashboard in headless Chromium. When no
    Chrome/Chromium is available those two are skipped with a note, and everything else is written.

    Args:
        results: the study (:meth:`RankSearch.results` or :func:`ranksearch.study.load_results`).
        folder: output folder (created).
        images: static image formats for the figures (png, svg, pdf, jpeg, webp).
        screenshot: where to write a PNG screenshot of the dashboard (1400 px wide).
        screenshot_height: its height in pixels (None: the whole page).
        study_file: the study file the dashboard's export commands should name.
    """
    start = time.perf_counter()
    folder = Path(folder)
    _make_folder(folder, f"cannot create the report folder {str(folder)!r}")
    if screenshot is not None:  # before the report is written: a bad path fails early, not after Chromium
        screenshot = Path(screenshot)
        _make_folder(screenshot.parent, f"cannot write the screenshot {str(screenshot)!r}")
    files = _write_files(results, folder, images, study_file)
    if screenshot is not None:
        _take_screenshot(files, screenshot, screenshot_height)
    files.seconds = time.perf_counter() - start
    return files


def _make_folder(folder: Path, failure: str) -> None:
    """Create ``folder`` and its parents, or raise :class:`RanksearchError` ``"<failure>: <why>"``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RanksearchError(f"{failure}: {error.strerror}") from None


def _write_files(results: StudyResults, folder: Path, images: Sequence[str], study_file: str | None) -> ReportFiles:
    """The tables, the dashboard and the static images (a note instead when they cannot be made)."""
    figs = make_figures(results)
    try:
        tables, notes = _write_tables(results, folder)
        html_path = write_dashboard(results, figs, folder / "report.html", study_file=study_file)
        files = ReportFiles(folder, html_path, tables, notes=notes)
        if images:
            from ..render.images import StaticExportUnavailable, write_images

            try:
                files.images = write_images(figs, folder / "figures", formats=tuple(images))
            except StaticExportUnavailable as error:
                files.notes.append(f"no static images: {error}")
    except OSError as error:  # a read-only folder, a folder where a file must go, a full disk
        raise RanksearchError(
            f"cannot write the report into {str(folder)!r}: {error.filename or ''}: {error.strerror}"
        ) from None
    return files


def _take_screenshot(files: ReportFiles, screenshot: Path, height: int | None) -> None:
    """A PNG of the dashboard to ``screenshot`` (the whole page when ``height`` is None), or a note why not."""
    from ..render.browser import BrowserUnavailable, render_page

    try:
        page = render_page(files.html, full_page=True) if height is None else render_page(files.html, height=height)
    except BrowserUnavailable as error:
        files.notes.append(f"no screenshot: {error}")
        return
    if page.errors:
        files.notes.append(f"the dashboard logged JavaScript errors: {'; '.join(page.errors)}")
    try:
        screenshot.write_bytes(page.screenshot)
    except OSError as error:
        raise RanksearchError(f"cannot write the screenshot {str(screenshot)!r}: {error.strerror}") from None
    files.screenshot = screenshot
