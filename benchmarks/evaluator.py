"""Evaluator throughput: trials per minute, where a trial's time goes, and what the factor cache buys.

For each study (default: the digits CNN and the Fashion-MNIST ResNet-20), on the study's own model,
data and evaluator settings:

1. draws ``--trials`` random per-layer configs from the study's search space (seeded);
2. evaluates them with one shared FactorCache, after a first pass that warms it (the steady state of a
   long search), and reports trials per minute and the share of trial time spent decomposing
   (``apply`` from the cache), counting costs, recalibrating BatchNorm, fine-tuning and evaluating;
3. evaluates the same configs with a fresh FactorCache per trial (decomposing from scratch, what a
   search without the cache would pay) and reports the speed-up of the cache, same run;
4. runs the same number of trials through ``RankSearch`` (TPE, in-memory storage) for the end-to-end
   rate with Optuna's overhead.

Usage: ``python benchmarks/evaluator.py [--studies digits_cnn fashion_resnet20] [--trials 8] [--quick]``.
Baselines are trained on first use and cached under ``runs/baselines`` like ``ranksearch run`` does.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from pathlib import Path

import optuna
import pandas as pd
import tensorly
import torch

import ranksearch as rs
from ranksearch.config import DENSE
from ranksearch.data import load_dataset, make_loaders
from ranksearch.evaluator import Evaluation, Evaluator
from ranksearch.runner import load_model
from ranksearch.space import LayerChoices, SearchSpace
from ranksearch.studyfile import StudyFile, load_study_file

STUDIES = Path(__file__).resolve().parents[1] / "studies"
PHASES = ("decompose", "cost", "recalibrate", "finetune", "evaluate")


def random_configs(layers: dict[str, LayerChoices], count: int, seed: int) -> list[rs.CompressionConfig]:
    """``count`` configs drawn uniformly from the space (each layer: a method, then a fraction)."""
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        picks = {}
        for name, layer in layers.items():
            method = rng.choice(layer.methods)
            picks[name] = (method, None if method == DENSE else rng.choice(layer.fractions))
        configs.append(SearchSpace.to_config(layers, picks))
    return configs


def run_trials(evaluator: Evaluator, configs: list[rs.CompressionConfig], fresh_cache: bool) -> list[Evaluation]:
    """Evaluate every config; with ``fresh_cache`` each trial decomposes from scratch."""
    results = []
    for config in configs:
        if fresh_cache:
            evaluator.cache = rs.FactorCache()
        results.append(evaluator.evaluate(config))
    return results


def summarize(label: str, results: list[Evaluation], wall: float) -> dict[str, object]:
    """One row: trials/minute and each phase's share of the summed trial time."""
    totals = {p: sum(r.seconds.get(p, 0.0) for r in results) for p in PHASES}
    trial_time = sum(r.seconds["total"] for r in results)
    row: dict[str, object] = {"run": label, "trials": len(results), "trials_per_min": 60 * len(results) / wall}
    row.update({f"{p}_share": totals[p] / trial_time for p in PHASES})
    row["median_trial_s"] = statistics.median(r.seconds["total"] for r in results)
    row["failed"] = sum(r.failure is not None for r in results)
    return row


def quick_variant(study: StudyFile) -> StudyFile:
    """A smaller version of a study for --quick: fewer fine-tune steps and evaluation batches."""
    import dataclasses

    evaluator = dataclasses.replace(
        study.evaluator,
        finetune_steps=min(study.evaluator.finetune_steps, 10),
        eval_batches=min(study.evaluator.eval_batches or 2, 2),
    )
    return dataclasses.replace(study, evaluator=evaluator)


def bench_study(name: str, trials: int, quick: bool, seed: int) -> list[dict[str, object]]:
    """All measurements for one study file."""
    study = load_study_file(STUDIES / f"{name}.toml")
    if quick:
        study = quick_variant(study)
    splits = load_dataset(study.data.name, **study.data.options)
    train_loader, val_loader = make_loaders(splits, study.data.batch_size, study.data.eval_batch_size, seed=seed)
    model = load_model(study, splits)
    evaluator = Evaluator(model, train_loader, val_loader, study.evaluator)
    layers = study.space.layers(model)
    configs = random_configs(layers, trials, seed)
    print(
        f"\n== {name}: {len(layers)} searched layers, dense accuracy {evaluator.dense.accuracy:.4f}, "
        f"{evaluator.dense.macs:,} MACs, {study.evaluator.finetune_steps} fine-tune steps, {trials} trials"
    )

    start = time.perf_counter()
    run_trials(evaluator, configs, fresh_cache=False)  # warm the cache (first use of each (layer, rank))
    warming = time.perf_counter() - start
    start = time.perf_counter()
    warm = run_trials(evaluator, configs, fresh_cache=False)
    warm_wall = time.perf_counter() - start
    start = time.perf_counter()
    cold = run_trials(evaluator, configs, fresh_cache=True)
    cold_wall = time.perf_counter() - start

    search = rs.RankSearch(
        model,
        train_loader,
        val_loader,
        storage=None,
        space=study.space,
        evaluator=study.evaluator,
        objectives=study.study.objectives,
        seed=seed,
    )
    start = time.perf_counter()
    search.optimize(trials, show_progress=False)
    search_wall = time.perf_counter() - start

    rows = [
        summarize("warm cache", warm, warm_wall),
        summarize("fresh cache per trial", cold, cold_wall),
        {"run": "RankSearch (TPE, in memory)", "trials": trials, "trials_per_min": 60 * trials / search_wall},
    ]
    for row in rows:
        row["study"] = name
    print(f"cache warm-up (first pass over the {trials} configs): {warming:.1f} s")
    print(
        f"factor cache speed-up: decomposition {_ratio(cold, warm, 'decompose'):.1f}x faster, "
        f"whole trial {cold_wall / warm_wall:.2f}x faster (fresh cache / warm cache, same configs)"
    )
    return rows


def _ratio(cold: list[Evaluation], warm: list[Evaluation], phase: str) -> float:
    return sum(r.seconds[phase] for r in cold) / max(sum(r.seconds[phase] for r in warm), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["digits_cnn", "fashion_resnet20"])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer fine-tune steps and trials (about 2 minutes)")
    parser.add_argument("--out", help="write the table as CSV here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = min(args.trials, 4) if args.quick else args.trials
    print(
        f"ranksearch evaluator benchmark | {platform.processor() or platform.machine()} | torch {torch.__version__} "
        f"| tensorly {tensorly.__version__} | {torch.get_num_threads()} threads"
    )
    rows = [row for name in args.studies for row in bench_study(name, trials, args.quick, args.seed)]
    table = pd.DataFrame(rows)
    columns = ["study", "run", "trials", "trials_per_min", *(f"{p}_share" for p in PHASES), "median_trial_s", "failed"]
    print("\n" + table[[c for c in columns if c in table]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
