"""Does a cheap score rank configs as the brief fine-tune does? Zero-shot proxy against a few-step fine-tune.

Re-scores every distinct config a ``search_quality.py`` run fine-tuned (its ``points.jsonl``: baselines, one-shot
allocations, search trials) with

- the zero-shot proxy the search screens with (:class:`ranksearch.screening.Screen`: BatchNorm recalibration,
  the proxy's validation samples, no fine-tune), and
- a ``--steps``-step fine-tune (the study's fine-tune settings with that many steps and the cosine over them),
  then the same proxy measurement,

and prints (``--results``: writes) Spearman's rank correlation of each with the stored brief fine-tune's
accuracy: over every config above ``--floor`` accuracy, and within MACs bands around the targets, where the
screen has to tell similar configs apart. Rows are appended to ``<points folder>/proxy_<steps>.jsonl`` as they
are measured: run the command again to resume.

    python benchmarks/proxy_fidelity.py --study studies/fashion_resnet20.toml \\
        --points runs/search_quality/fashion_resnet20 --steps 10 --results benchmarks/RESULTS_proxy.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path

from ranksearch.cache import FactorCache
from ranksearch.config import CompressionConfig
from ranksearch.evaluator import Evaluator
from ranksearch.runner import load_data, load_model
from ranksearch.screening import Screen
from ranksearch.studyfile import load_study_file

BANDS = ((0.0, 0.11), (0.15, 0.26), (0.3, 0.51))
"""MACs bands (fractions of dense) around the 10 / 25 / 50% targets."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/fashion_resnet20.toml", help="the study file the points used")
    parser.add_argument("--points", required=True, help="a search_quality.py --out folder (its points.jsonl)")
    parser.add_argument("--steps", type=int, default=10, help="fine-tune steps of the few-step score (default 10)")
    parser.add_argument("--distill", type=float, help="distillation weight of the few-step fine-tune (default: "
                        "the study's; give the one the points were fine-tuned with)")  # fmt: skip
    parser.add_argument("--floor", type=float, default=0.5, help="leave out configs the fine-tune left below this")
    parser.add_argument("--results", help="write the results page (markdown) here")
    parser.add_argument("--label", default="", help="what the points are (a sentence for the page)")
    return parser.parse_args()


def distinct_configs(points: Path) -> list[dict]:
    """The first stored row of every distinct fine-tuned config (checks of another fine-tune left out)."""
    seen, rows = set(), []
    for line in points.open():
        row = json.loads(line)
        if not row.get("config") or row.get("accuracy") is None or row["arm"].startswith(("distill ", "labels-only ")):
            continue
        key = json.dumps(row["config"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append({**row, "config_key": key})
    return rows


def score(rows: list[dict], evaluator: Evaluator, screen: Screen, out: Path) -> None:
    """Append each row's zero-shot and few-step scores to ``out`` (rows already there are skipped)."""
    done = {json.loads(line)["config_key"] for line in out.open()} if out.exists() else set()
    for row in rows:
        if row["config_key"] in done:
            continue
        config = CompressionConfig.from_dict(row["config"])
        start = time.process_time()
        zero = screen.score(config)
        model = evaluator.compress(config.resolve(evaluator.model))
        evaluator.recalibrate(model)
        evaluator.finetune(model)
        few = screen.score_model(model, recalibrate=False)
        record = {"config_key": row["config_key"], "arm": row["arm"], "macs": row["macs"], "accuracy": row["accuracy"],
                  "zero_loss": zero.loss, "zero_metric": zero.metric, "few_loss": few.loss, "few_metric": few.metric,
                  "cpu_seconds": time.process_time() - start}  # fmt: skip
        with out.open("a") as file:
            file.write(json.dumps(record) + "\n")
        print(f"  {row['arm']:24s} macs {row['macs']:.3f} accuracy {row['accuracy']:.4f}: zero-shot "
              f"{zero.metric:.3f}, {evaluator.settings.finetune_steps} steps {few.metric:.3f}")  # fmt: skip


def correlations(frame: pd.DataFrame, floor: float) -> pd.DataFrame:
    """Spearman of each score (metric, and loss negated) with the brief fine-tune's accuracy, per band."""
    frame = frame[frame["accuracy"] > floor]
    groups = [("all", frame)] + [(f"MACs in ({lo:.0%}, {hi:.0%}]", frame[(frame["macs"] > lo) & (frame["macs"] <= hi)])
                                 for lo, hi in BANDS]  # fmt: skip
    rows = []
    for name, group in groups:
        if len(group) < 4:
            continue
        rank = group["accuracy"].rank()
        rows.append({"configs": name, "n": len(group),
                     "zero-shot accuracy": group["zero_metric"].rank().corr(rank),
                     "zero-shot loss": (-group["zero_loss"]).rank().corr(rank),
                     "few-step accuracy": group["few_metric"].rank().corr(rank),
                     "few-step loss": (-group["few_loss"]).rank().corr(rank)})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    study_file = load_study_file(args.study)
    data = load_data(study_file)  # the study's loaders, as ranksearch run builds them
    model = load_model(study_file, data.splits, print)
    settings = dataclasses.replace(study_file.evaluator, finetune_steps=args.steps)
    if args.distill is not None:
        settings = dataclasses.replace(settings, distill=args.distill)
    evaluator = Evaluator(model, data.train_loader, data.val_loader, settings, cache=FactorCache())
    screen = Screen(evaluator)
    folder = Path(args.points)
    rows = distinct_configs(folder / "points.jsonl")
    out = folder / f"proxy_{args.steps}.jsonl"
    print(f"{len(rows)} distinct fine-tuned configs in {folder}; scores in {out}")
    score(rows, evaluator, screen, out)
    frame = pd.DataFrame([json.loads(line) for line in out.open()])
    table = correlations(frame, args.floor)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.results:
        Path(args.results).write_text(page(args, frame, table, evaluator, screen))
        print(f"results page: {args.results}")


def page(args: argparse.Namespace, frame: pd.DataFrame, table: pd.DataFrame, evaluator: Evaluator,
         screen: Screen) -> str:  # fmt: skip
    s = evaluator.settings
    distill = ("" if args.distill is None else f" --distill {args.distill:g}") + (" --label ..." if args.label else "")
    header = (
        f"Generated by `python benchmarks/proxy_fidelity.py --study {args.study} --points {args.points} --steps "
        f"{args.steps}{distill}` on {cpu_model()}, 1 thread, torch {torch.__version__}: {len(frame)} distinct "
        "configs that `search_quality.py` fine-tuned (baselines, one-shot allocations, search trials), "
        f"{frame['cpu_seconds'].sum() / 60:.0f} CPU minutes ({frame['cpu_seconds'].median():.1f} s per config).\n"
    )
    method = (
        "Each config's brief fine-tune accuracy (the benchmark's) against two cheap scores on the proxy's "
        f"{screen.settings.eval_samples} validation samples: the **zero-shot** proxy the search screens with "
        f"(BatchNorm recalibration, no fine-tune) and a **few-step** fine-tune ({s.finetune_steps} steps at lr "
        f"{s.lr:g}, cosine over them, distillation weight {evaluator.distill:g}, then the same measurement). "
        f"Spearman's rank correlation over the configs the fine-tune left above {args.floor:g} accuracy, and "
        "within MACs bands around the targets:\n"
    )
    title = "# Does the cheap score rank configs as the brief fine-tune does?\n"
    parts = [title, header] + ([args.label + "\n"] if args.label else []) + [method]
    wins = int((table["zero-shot accuracy"] >= table["few-step accuracy"]).sum())
    verdict = (
        f"By accuracy the zero-shot proxy ranks at least as well as the {args.steps}-step score in {wins} of "
        f"{len(table)} groups (lowest zero-shot correlation {table['zero-shot accuracy'].min():.2f}, lowest "
        f"few-step {table['few-step accuracy'].min():.2f}), without fine-tuning: "
        + ("the search keeps screening zero-shot." if wins == len(table) else "worth a closer look.")
    )
    return "\n".join([*parts, table.to_markdown(index=False, floatfmt=".2f") + "\n", verdict + "\n"])


if __name__ == "__main__":
    main()
