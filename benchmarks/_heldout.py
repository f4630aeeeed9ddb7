"""The held-out check of the search-quality benchmark: each arm's choices measured on images that chose nothing.

A search picks the best of its ~10 trials near a target on the evaluator's validation subset, a baseline the
best of its grid points; the max of several noisy measurements is biased upwards (the winner's curse). This
re-runs the brief fine-tune of each arm's chosen config (per seed, per target; the same evaluator, so the
subset accuracy must come out as stored: checked) and measures the fine-tuned model on the whole validation
set; the images outside the subset were never used to choose anything, so the accuracy there is an unbiased
estimate of each choice. Rows go to ``<out>/heldout.jsonl`` as they are measured (resumable); a row counts
only for the config it measured, so a choice that changes (a finer grid, more seeds) is measured again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from _quality_page import BASELINES, best_under, signed_points

from ranksearch.config import CompressionConfig
from ranksearch.evaluator import Evaluator
from ranksearch.training import evaluate_accuracy

DEFAULT_ARMS = ("ranksearch", "one-shot", *BASELINES)


def _key(row: dict) -> tuple:
    return row["arm"], row["seed"], row["target"], json.dumps(row["config"], sort_keys=True)


def chosen(points: pd.DataFrame, arms: list[str], targets: list[float]) -> list[dict]:
    """Each arm's (and seed's) best stored point at <= each target: what its page's row reports."""
    found = []
    for arm, seed in points[points["arm"].isin(arms)][["arm", "seed"]].drop_duplicates().itertuples(index=False):
        seed = None if pd.isna(seed) else int(seed)
        for target in targets:
            best = best_under(points, arm, target, seed)
            if best is not None:
                found.append({"arm": arm, "seed": seed, "target": target, "macs": float(best["macs"]),
                              "stored": float(best["accuracy"]), "config": best["config"]})  # fmt: skip
    return found


def measure(choice: dict, evaluator: Evaluator, val_loader, subset: int, whole: int) -> dict:
    """The brief fine-tune again, then the accuracy on the whole validation set and on the images outside the
    subset (``whole`` images in all, ``subset`` of them in the evaluator's batches; NaN when none is outside)."""
    start = time.process_time()
    result = evaluator.evaluate(CompressionConfig.from_dict(choice["config"]), keep_model=True)
    if result.failure is not None or result.model is None:
        return {**choice, "failure": result.failure or "no model", "cpu_seconds": time.process_time() - start}
    overall = evaluate_accuracy(result.model, val_loader, evaluator.device)
    held_out = (overall * whole - result.accuracy * subset) / (whole - subset) if whole > subset else math.nan
    return {**choice, "again": result.accuracy, "whole": overall, "held_out": held_out,
            "cpu_seconds": time.process_time() - start}  # fmt: skip


def _stored(folder: Path, arms: list[str], targets: list[float]) -> tuple[list[dict], dict[tuple, dict]]:
    """The current choices and the rows measured so far (by arm, seed, target and config); no choices before
    any point is stored (a new run)."""
    out, points = folder / "heldout.jsonl", folder / "points.jsonl"
    done = {_key(row): row for row in map(json.loads, out.open())} if out.exists() else {}
    if not points.exists():
        return [], done
    return chosen(pd.read_json(points, lines=True), arms, targets), done


def pending(folder: Path, arms: list[str], targets: list[float]) -> int:
    """How many current choices are not measured yet."""
    choices, done = _stored(folder, arms, targets)
    return sum(_key(c) not in done for c in choices)


def _measured_before(choice: dict, done: dict[tuple, dict]) -> dict | None:
    """A stored row of the same config (another arm's or seed's) whose re-run gave this choice's stored subset
    accuracy: the evaluator is seeded, so measuring the config again would only repeat its numbers."""
    config = json.dumps(choice["config"], sort_keys=True)
    for row in done.values():
        same = json.dumps(row["config"], sort_keys=True) == config
        if same and abs(row.get("again", math.nan) - choice["stored"]) < 1e-9:
            return row
    return None


def heldout_rows(folder: Path, evaluator: Evaluator | None, val_loader, arms: list[str], targets: list[float],
                 subset: int, log: Callable[[str], None] = print) -> pd.DataFrame:  # fmt: skip
    """Measure the choices not yet in ``folder/heldout.jsonl`` (none without an ``evaluator``; a config measured
    for another choice is not measured again) and return the rows of the current choices measured so far."""
    choices, done = _stored(folder, arms, targets)
    todo = [c for c in choices if _key(c) not in done] if evaluator is not None else []
    whole = len(val_loader.dataset)
    if todo:
        log(f"held out: {whole} validation images, {subset} in the evaluator's subset; {len(todo)} choices to "
            "re-measure")  # fmt: skip
    for choice in todo:
        if (earlier := _measured_before(choice, done)) is not None:
            row = {**choice, "again": earlier["again"], "whole": earlier["whole"], "held_out": earlier["held_out"],
                   "cpu_seconds": 0.0, "same_as": f"{earlier['arm']} seed {earlier['seed']}"}  # fmt: skip
        else:
            row = measure(choice, evaluator, val_loader, subset, whole)
        with (folder / "heldout.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[_key(row)] = row
        log(f"  {row['arm']} seed {row['seed']} @{row['target']:.0%}: stored {row['stored']:.4f}, again "
            f"{row.get('again', math.nan):.4f}, held out {row.get('held_out', math.nan):.4f}"
            + (f" (the config of {row['same_as']})" if "same_as" in row else ""))  # fmt: skip
    return pd.DataFrame([done[_key(c)] for c in choices if _key(c) in done])


def table(rows: pd.DataFrame, targets: list[float]) -> pd.DataFrame:
    """Per arm and target: the subset accuracy it was chosen on and the held-out one (means over seeds)."""
    out = []
    for arm, group in rows.groupby("arm", sort=False):
        entry = {"arm": arm, "runs": int(group["seed"].fillna(-1).nunique())}
        for target in targets:
            at = group[group["target"] == target]
            entry[f"subset@{target:.0%}"] = at["stored"].mean() if len(at) else math.nan
            entry[f"held-out@{target:.0%}"] = at["held_out"].mean() if len(at) else math.nan
        out.append(entry)
    frame = pd.DataFrame(out).set_index("arm")
    return frame.sort_values(f"held-out@{targets[0]:.0%}", ascending=False)


def margins(frame: pd.DataFrame, targets: list[float]) -> list[str]:
    """One line per target: the default search against the best baseline, held out and on the subset."""
    lines = []
    for target in targets:
        column = f"held-out@{target:.0%}"
        baselines = frame.loc[[b for b in BASELINES if b in frame.index], column].dropna()
        if "ranksearch" not in frame.index or baselines.empty:
            continue
        ours, best = frame.loc["ranksearch", column], baselines.idxmax()
        chosen_on = frame.loc["ranksearch", f"subset@{target:.0%}"] - frame.loc[best, f"subset@{target:.0%}"]
        lines.append(f"- <= {target:.0%} MACs, held out: ranksearch {ours:.4f} vs best baseline {best} "
                     f"{baselines.max():.4f} ({signed_points(ours - baselines.max())} points; on the subset the "
                     f"choices were made on, {signed_points(chosen_on)}).")  # fmt: skip
    return lines


def section(rows: pd.DataFrame, targets: list[float], subset: int, whole: int) -> list[str]:
    """The markdown of the check: how it is measured, the table, the margins (nothing without rows)."""
    if rows.empty:
        return []
    shared = rows["same_as"].notna() if "same_as" in rows else pd.Series(False, index=rows.index)
    measured = rows[~shared]
    reproduced = int((measured["again"] - measured["stored"]).abs().lt(1e-9).sum()) if "again" in rows else 0
    frame = table(rows, targets)
    method = (
        f"Each arm's chosen config at <= each target (the best on the evaluator's {subset}-image validation "
        f"subset, as the subset table reports it) fine-tuned again with the same brief fine-tune ({reproduced} "
        f"of {len(measured)} reproduced the stored subset accuracy exactly; {int(shared.sum())} more were "
        "configs measured for another arm or seed, whose numbers they share; "
        f"{rows['cpu_seconds'].sum() / 60:.0f} CPU minutes), then measured on the {whole - subset} validation "
        "images outside the subset, which chose nothing. Means over seeds for the searches.\n"
    )
    return [method, frame.reset_index().to_markdown(index=False, floatfmt=".4f") + "\n", *margins(frame, targets)]
