"""Is the search's margin real, or the luck of picking the best of many on the same images? A held-out check.

``search_quality.py`` reports, per arm, the best brief-fine-tune accuracy at <= each MACs target on the
evaluator's validation subset: a search picks the best of its ~10 trials near a target there, a baseline the
best of its grid points, and the max of several noisy measurements is biased upwards (the winner's curse).
This re-runs the brief fine-tune of each arm's chosen config (per seed, per target; the same evaluator, so
the subset accuracy must come out as stored: checked) and measures the fine-tuned model on the **whole**
validation set; the images outside the subset were never used to choose anything, so the accuracy there is
an unbiased estimate of each choice.

Rows are appended to ``<out>/heldout.jsonl`` as they are measured: run the command again to resume.

    python benchmarks/heldout_check.py --study studies/digits_cnn.toml --out runs/search_quality/digits_cnn
    OMP_NUM_THREADS=1 python benchmarks/heldout_check.py --study studies/fashion_resnet20.toml \\
        --out runs/search_quality/fashion_resnet20 --results benchmarks/RESULTS_heldout_fashion.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path
from _quality_page import BASELINES, best_under, subset_images

from ranksearch.config import CompressionConfig
from ranksearch.evaluator import Evaluator
from ranksearch.runner import load_data, load_model
from ranksearch.studyfile import load_study_file
from ranksearch.training import evaluate_accuracy

DEFAULT_ARMS = "ranksearch,one-shot," + ",".join(BASELINES)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/digits_cnn.toml", help="the study file search_quality.py ran")
    parser.add_argument("--out", required=True, help="search_quality.py's --out folder (its points.jsonl)")
    parser.add_argument("--targets", default="0.1,0.25,0.5", help="MACs targets, fractions of dense")
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help="arms to check (default: the search, one-shot and every baseline)")  # fmt: skip
    parser.add_argument("--results", help="write the markdown table here")
    return parser.parse_args()


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
    subset (``whole`` images in all, ``subset`` of them in the evaluator's batches)."""
    start = time.process_time()
    result = evaluator.evaluate(CompressionConfig.from_dict(choice["config"]), keep_model=True)
    if result.failure is not None or result.model is None:
        return {**choice, "failure": result.failure or "no model", "cpu_seconds": time.process_time() - start}
    overall = evaluate_accuracy(result.model, val_loader, evaluator.device)
    held_out = (overall * whole - result.accuracy * subset) / (whole - subset)
    return {**choice, "again": result.accuracy, "whole": overall, "held_out": held_out,
            "cpu_seconds": time.process_time() - start}  # fmt: skip


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
    lines = []
    for target in targets:
        column = f"held-out@{target:.0%}"
        baselines = frame.loc[[b for b in BASELINES if b in frame.index], column].dropna()
        if "ranksearch" not in frame.index or baselines.empty:
            continue
        ours, best = frame.loc["ranksearch", column], baselines.idxmax()
        chosen_on = frame.loc["ranksearch", f"subset@{target:.0%}"] - frame.loc[best, f"subset@{target:.0%}"]
        lines.append(f"- <= {target:.0%} MACs, held out: ranksearch {ours:.4f} vs best baseline {best} "
                     f"{baselines.max():.4f} ({100 * (ours - baselines.max()):+.2f} points; on the subset the "
                     f"choices were made on, {100 * chosen_on:+.2f}).")  # fmt: skip
    return lines


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    targets = [float(t) for t in args.targets.split(",")]
    study_file = load_study_file(args.study)
    data = load_data(study_file)  # the study's loaders, as search_quality.py and ranksearch run build them
    val_loader = data.val_loader
    model = load_model(study_file, data.splits, print)
    evaluator = Evaluator(model, data.train_loader, val_loader, study_file.evaluator)
    subset = subset_images(evaluator)
    whole = len(val_loader.dataset)
    if subset >= whole:
        raise SystemExit(f"the evaluator uses the whole validation set ({whole} images): nothing is held out")
    folder = Path(args.out)
    points = pd.read_json(folder / "points.jsonl", lines=True)
    out = folder / "heldout.jsonl"
    done = [json.loads(line) for line in out.open()] if out.exists() else []
    measured = {(d["arm"], d["seed"], d["target"]) for d in done}
    choices = chosen(points, args.arms.split(","), targets)
    todo = [c for c in choices if (c["arm"], c["seed"], c["target"]) not in measured]
    print(f"{whole} validation images, {subset} in the evaluator's subset; {len(todo)} choices to re-measure")
    for choice in todo:
        row = measure(choice, evaluator, val_loader, subset, whole)
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"  {row['arm']} seed {row['seed']} @{row['target']:.0%}: stored {row['stored']:.4f}, again "
              f"{row.get('again', math.nan):.4f}, held out {row.get('held_out', math.nan):.4f}")  # fmt: skip
        done.append(row)
    rows = pd.DataFrame(done)
    rows = rows[rows["arm"].isin(args.arms.split(","))]
    frame = table(rows, targets)
    print(frame.to_string(float_format=lambda v: f"{v:.4f}"))
    lines = margins(frame, targets)
    print("\n".join(lines))
    if args.results:
        Path(args.results).write_text(page(args, rows, frame, lines, subset, whole), encoding="utf-8")
        print(f"results page: {args.results}")


def page(args, rows: pd.DataFrame, frame: pd.DataFrame, lines: list[str], subset: int, whole: int) -> str:
    reproduced = int((rows["again"] - rows["stored"]).abs().lt(1e-9).sum()) if "again" in rows else 0
    command = f"python benchmarks/heldout_check.py --study {args.study} --out {args.out}"
    command += "" if args.arms == DEFAULT_ARMS else f' --arms "{args.arms}"'
    header = (
        f"Generated by `{command}` on {cpu_model()}, 1 thread, torch {torch.__version__}; "
        f"{rows['cpu_seconds'].sum() / 60:.0f} CPU minutes.\n"
    )
    method = (
        f"Each arm's chosen config at <= each target (the best on the evaluator's {subset}-image validation "
        f"subset, as the search-quality page reports it) fine-tuned again with the same brief fine-tune "
        f"({reproduced} of {len(rows)} reproduced the stored subset accuracy exactly), then measured on the "
        f"{whole - subset} validation images outside the subset, which chose nothing. Means over seeds for the "
        "searches.\n"
    )
    table_text = frame.reset_index().to_markdown(index=False, floatfmt=".4f") + "\n"
    return "\n".join([f"# Held-out check of `{args.out}`\n", header, method, table_text, *lines, ""])


if __name__ == "__main__":
    main()
