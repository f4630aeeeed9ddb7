"""Which sampler finds the better accuracy-vs-MACs front on the same budget? (evidence for the default)

Runs a study file once per sampler (same model, data, evaluator, warm starts and trial budget; in-memory
storage) and prints the hypervolume of each front against the reference point (accuracy = 1 / classes,
MACs = the dense model's), the best accuracy within 10% and 25% of the dense MACs, and the run time.

Usage: ``python benchmarks/samplers.py [--study digits_cnn] [--trials 60] [--samplers tpe nsga2 random] [--seeds 0]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
import pandas as pd
import torch

import ranksearch as rs
from ranksearch.data import load_dataset, make_loaders
from ranksearch.runner import load_model
from ranksearch.studyfile import load_study_file

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def hypervolume(accuracy: Sequence[float], macs: Sequence[float], reference: tuple[float, float]) -> float:
    """Area dominated by the points (maximize accuracy, minimize MACs) and bounded by ``reference``.

    Sweeping by increasing MACs, each point that beats the best accuracy so far adds the rectangle
    ``(accuracy - best) x (reference MACs - its MACs)``.
    """
    ref_accuracy, ref_macs = reference
    area, best = 0.0, ref_accuracy
    for m, a in sorted(zip(macs, accuracy, strict=True)):
        if m < ref_macs and a > best:
            area += (a - best) * (ref_macs - m)
            best = a
    return area


def best_under(frame: pd.DataFrame, budget: float) -> float:
    """Best accuracy among trials with at most ``budget`` of the dense MACs (NaN if none)."""
    within = frame[frame["macs"] <= budget]
    return float(within["accuracy"].max()) if len(within) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="digits_cnn")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    study = load_study_file(STUDIES / f"{args.study}.toml")
    splits = load_dataset(study.data.name, **study.data.options)
    train_loader, val_loader = make_loaders(splits, study.data.batch_size, study.data.eval_batch_size, seed=0)
    model = load_model(study, splits)
    reference = (1 / splits.num_classes, 1.0)
    cache = rs.FactorCache()  # shared: decompositions are not what is compared here
    rows = []
    for seed in args.seeds:
        for sampler in args.samplers:
            search = rs.RankSearch(
                model,
                train_loader,
                val_loader,
                storage=None,
                objectives=("accuracy", "macs"),
                space=study.space,
                evaluator=study.evaluator,
                sampler=sampler,
                seed=seed,
                warm_start=study.study.warm_start,
                cache=cache,
            )
            start = time.perf_counter()
            search.optimize(args.trials, show_progress=False)
            frame = search.trials_dataframe()
            rows.append(
                {
                    "sampler": sampler,
                    "seed": seed,
                    "trials": len(frame),
                    "hypervolume": hypervolume(frame["accuracy"], frame["macs"], reference),
                    "pareto_size": int(frame["is_pareto"].sum()),
                    "best_acc@10%macs": best_under(frame, 0.10),
                    "best_acc@25%macs": best_under(frame, 0.25),
                    "seconds": time.perf_counter() - start,
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{args.study}, {args.trials} trials, reference point (accuracy {reference[0]:.2f}, MACs 1.0 x dense)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if len(args.seeds) > 1:
        print(table.groupby("sampler")[["hypervolume", "best_acc@10%macs", "best_acc@25%macs"]].agg(["mean", "std"]))


if __name__ == "__main__":
    main()
