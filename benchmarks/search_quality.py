"""Search quality at matched budgets: ranksearch against the rank-selection baselines, side by side.

Every arm's configs go through the same evaluator (the study file's brief fine-tune, same batches):

- baselines, each swept over ``--trials`` MACs budgets (the targets, then a log-spaced grid), so that every
  front has as many points as a search has trials: uniform SVD / Tucker-2, energy SVD, VBMF Tucker-2 and
  error-balanced (ALDS-style) SVD / Tucker-2, all on the layers the study searches;
- ``one-shot``: the per-layer sensitivity pass, then one knapsack allocation per budget (no search);
- searches (``--arms``), each limited to the wall-clock of ``--trials`` full trials (the median baseline
  evaluation, measured in the same run) with its preparation (the sensitivity pass, proxies) counted:
  ``ranksearch`` (the default: allocate strategy, TPE, the targets), ``random`` (allocate, random knobs),
  ``nsga2`` (allocate, NSGA-II), ``no-screen`` (allocate, TPE, no proxy screening), ``per-layer`` (TPE over
  every layer's method and level on the cost grid).

Prints and writes (``--results``) the best accuracy at <= each target per arm (mean over seeds), the
hypervolume, each arm's time, candidates screened and full evaluations per minute, the rank correlation of
the proxy with the fine-tuned accuracy, and (``--final-epochs``) the chosen configs after a longer
fine-tune next to uniform Tucker-2's. Everything is stored under ``--out`` as it is measured: run the same
command again to resume.

    python benchmarks/search_quality.py --quick                                  # digits, a few minutes
    python benchmarks/search_quality.py --seeds 0,1,2 --results benchmarks/RESULTS.md
    python benchmarks/search_quality.py --study studies/fashion_resnet20.toml --seeds 0,1,2 \\
        --final-epochs 5 --results benchmarks/RESULTS_fashion.md                  # hours on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import optuna
import pandas as pd
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path
from _quality import (
    PointStore,
    baseline_families,
    budget_grid,
    evaluate_point,
    front_metrics,
    one_shot_configs,
    spearman,
    try_config,
)
from _quality_page import final_quality, write_page

from ranksearch.cache import FactorCache
from ranksearch.config import CompressionConfig
from ranksearch.data import load_dataset, make_loaders
from ranksearch.evaluator import Evaluator
from ranksearch.runner import load_model
from ranksearch.study import RankSearch
from ranksearch.studyfile import load_study_file

SEARCH_ARMS = {
    "ranksearch": {"strategy": "allocate", "sampler": "tpe"},
    "random": {"strategy": "allocate", "sampler": "random"},
    "nsga2": {"strategy": "allocate", "sampler": "nsga2"},
    "no-screen": {"strategy": "allocate", "sampler": "tpe", "screen": 1},
    "per-layer": {"strategy": "per-layer", "sampler": "tpe"},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits_cnn.toml", help="study file (model, data, evaluator, space)")
    parser.add_argument("--trials", type=int, default=30, help="trials' worth of wall-clock per search (default 30)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the searches")
    parser.add_argument("--targets", default="0.1,0.25,0.5", help="MACs targets (fractions of dense)")
    parser.add_argument("--arms", default="ranksearch,random,per-layer,no-screen", help="search arms, comma-separated")
    parser.add_argument("--final-epochs", type=int, default=0, help="longer fine-tune of the chosen configs (0: skip)")
    parser.add_argument("--final-targets", default="0.2,0.1", help="MACs budgets of the longer fine-tune")
    parser.add_argument(
        "--distill-check",
        action="store_true",
        help="also evaluate the one-shot and uniform "
        "Tucker-2 configs at the targets with distillation (weight 0.5) in the brief fine-tune",
    )
    parser.add_argument("--device", default=None, help="evaluator device (default: the study file's)")
    parser.add_argument("--quick", action="store_true", help="12 trials, one seed, ranksearch and per-layer only")
    parser.add_argument("--page-only", action="store_true", help="write the page from the stored points; run nothing")
    parser.add_argument("--out", help="folder for the stored points (default runs/search_quality/<study>)")
    parser.add_argument("--results", help="write the results page (markdown) here")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.seeds, args.arms = 12, "0", "ranksearch,per-layer"
    return args


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study_file = load_study_file(args.study)
    settings = study_file.evaluator
    if args.device:
        settings = dataclasses.replace(settings, device=args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    out = Path(args.out or f"runs/search_quality/{Path(args.study).stem}")
    out.mkdir(parents=True, exist_ok=True)
    store = PointStore(out)
    print(
        f"device: {cpu_model()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, optuna {optuna.__version__}"
    )
    print(f"{args.study}: {args.trials} trials' worth per search, seeds {seeds}, targets {targets}; points in {out}")

    splits = load_dataset(study_file.data.name, **study_file.data.options)
    data = study_file.data
    train_loader, val_loader = make_loaders(
        splits, batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, seed=study_file.study.seed
    )
    model = load_model(study_file, splits, print)
    evaluator = Evaluator(model, train_loader, val_loader, settings)
    input_shape = evaluator.dense.input_shape
    layers = study_file.space.layers(model, input_shape)
    print(
        f"dense accuracy {evaluator.dense.accuracy:.4f}, {evaluator.dense.macs:,} MACs, {len(layers)} searched layers"
    )
    grid = budget_grid(targets, args.trials)

    if not args.page_only:
        run_baselines(store, evaluator, model, list(layers), input_shape, [*targets, 0.2])
    budget = store.clock("search budget")  # fixed when first measured, so a resumed run keeps it
    if "trial_seconds" not in budget:
        evaluated = [r["seconds"] for r in store.rows if r["seed"] is None and r["arm"] != "one-shot"
                     and r.get("accuracy")]  # fmt: skip
        if not evaluated:
            raise SystemExit(f"no baseline point stored in {out} yet: nothing to report")
        store.clock("search budget", 0.0, trial_seconds=statistics.median(evaluated))
    trial_seconds = budget["trial_seconds"]
    wall = args.trials * trial_seconds
    print(f"median full evaluation {trial_seconds:.1f} s: each search gets {wall:.0f} s ({args.trials} trials' worth)")
    results: dict[str, object] = {"final": None, "distill": None}

    def checkpoint() -> None:  # the page after every phase: a long run has a readable page all along
        summary = summarize(store, evaluator.dense.accuracy, targets)
        print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
        if args.results:
            write_page(args, store, summary, evaluator, study_file, wall, trial_seconds, results["final"],
                       results["distill"], candidates_per_minute(store), time.perf_counter() - started)  # fmt: skip
            print(f"results page: {args.results}")

    if args.page_only:  # the page of what is stored so far (a long run's progress), nothing measured
        checkpoint()
        return
    run_one_shot(store, evaluator, layers, targets, out)
    if args.distill_check:
        results["distill"] = distill_check(store, evaluator, train_loader, val_loader, model, settings, targets)
    for seed in seeds:
        run_search(store, "ranksearch", seed, wall, model, train_loader, val_loader, study_file, settings, targets, out)
        checkpoint()
    if args.final_epochs:
        budgets = [float(b) for b in args.final_targets.split(",")]
        results["final"] = final_quality(store, evaluator, model, train_loader, val_loader, list(layers), budgets,
                                         args.final_epochs, study_file, out)  # fmt: skip
        checkpoint()
    run_baselines(store, evaluator, model, list(layers), input_shape, grid)
    run_one_shot(store, evaluator, layers, grid, out)
    checkpoint()
    for arm in [a for a in arms if a != "ranksearch"]:
        for seed in seeds:
            run_search(store, arm, seed, wall, model, train_loader, val_loader, study_file, settings, targets, out)
        checkpoint()


def run_baselines(store, evaluator, model, layer_names, input_shape, budgets) -> None:
    """Every baseline family at every budget (stored points are skipped)."""
    families = baseline_families(model, layer_names, input_shape, evaluator.cache)
    for name, family in families.items():
        for budget in budgets:
            if store.has(name, None, budget):
                continue
            config = try_config(family, budget)
            if config is None:
                store.add(arm=name, seed=None, key=budget, budget=budget, accuracy=None, macs=None, seconds=0.0,
                          skipped=f"cannot meet {budget:.0%} MACs")  # fmt: skip
                continue
            evaluate_point(store, evaluator, name, budget, config)
            row = store.rows[-1]
            print(
                f"  {name} at {budget:.1%}: accuracy {row['accuracy']}, macs {row['macs']:.3f} ({row['seconds']:.0f} s)"
            )


def run_one_shot(store, evaluator, layers, budgets, out) -> None:
    """The sensitivity pass (timed, a fresh factor cache) and one allocation per budget not stored yet."""
    todo = [b for b in budgets if not store.has("one-shot", None, b)]
    if not todo:
        return
    shared = evaluator.cache
    configs, seconds, probes = one_shot_configs(evaluator, layers, todo, FactorCache(), out / "sensitivity.json")
    clock = store.clock("one-shot")
    if "sensitivity_seconds" not in clock:
        store.clock("one-shot", seconds, sensitivity_seconds=seconds, probes=probes)
    print(f"  one-shot: sensitivity pass {probes} proxy evaluations in {seconds:.0f} s")
    for budget in todo:
        if budget not in configs:
            store.add(arm="one-shot", seed=None, key=budget, budget=budget, accuracy=None, macs=None, seconds=0.0,
                      skipped="below the cheapest allocation")  # fmt: skip
            continue
        evaluate_point(store, evaluator, "one-shot", budget, configs[budget])
        store.clock("one-shot", store.rows[-1]["seconds"])
        print(f"  one-shot at {budget:.1%}: accuracy {store.rows[-1]['accuracy']}, macs {store.rows[-1]['macs']:.3f}")
    evaluator.cache = shared


def run_search(store, arm, seed, wall, model, train_loader, val_loader, study_file, settings, targets, out) -> None:
    """One search arm and seed, trial by trial until its wall-clock budget is spent (resumable)."""
    name = f"{arm}-{seed}"
    clock = store.clock(name)
    if clock.get("done"):
        return
    options = dict(SEARCH_ARMS[arm])
    start = time.perf_counter()
    search = RankSearch(model, train_loader, val_loader, storage=f"sqlite:///{out}/{name}.db", study_name=name,
                        space=study_file.space, evaluator=settings, seed=seed, targets={"macs": targets},
                        cache=FactorCache(), **options)  # fmt: skip
    store.clock(name, time.perf_counter() - start)
    while store.clock(name)["seconds"] < wall:
        start = time.perf_counter()
        search.optimize(n_trials=1, show_progress=False)
        store.clock(name, time.perf_counter() - start)
        frame = search.trials_dataframe()
        last = frame.iloc[-1]
        print(f"  {name}: trial {int(last['trial'])} accuracy {last['accuracy']:.4f} macs {last['macs']:.3f} "
              f"({store.clock(name)['seconds']:.0f}/{wall:.0f} s)")  # fmt: skip
    trials = search.trials_dataframe()
    sensitivity = search.study.user_attrs.get("sensitivity") or {}
    attrs = {t.number: t.user_attrs for t in search.study.get_trials(deepcopy=False)}  # one storage read
    for _, row in trials.iterrows():
        own = attrs[int(row["trial"])]
        store.add(arm=arm, seed=seed, key=int(row["trial"]), budget=None, accuracy=row["accuracy"], macs=row["macs"],
                  params=row.get("params_ratio"), accuracy_recalibrated=row.get("accuracy_recalibrated"),
                  proxy_loss=own.get("proxy_loss"), screened=own.get("screened") or 1, seconds=None,
                  config=own.get("config"))  # fmt: skip
    store.clock(name, 0.0, done=True, trials=len(trials), probes=sensitivity.get("probes", 0),
                sensitivity_seconds=sensitivity.get("seconds", 0.0))  # fmt: skip


def distill_check(store, evaluator, train_loader, val_loader, model, settings, targets) -> pd.DataFrame:
    """The one-shot and uniform Tucker-2 configs at the targets, brief fine-tune with and without distillation."""
    frame = store.frame()
    taught = None
    rows = []
    for arm in ("one-shot", "uniform tucker2"):
        for target in targets:
            match = frame[(frame["arm"] == arm) & (frame["key"] == target) & frame["accuracy"].notna()]
            if match.empty:
                continue
            if not store.has(f"distill {arm}", None, target):
                if taught is None:
                    distilled = dataclasses.replace(settings, distill=0.5)
                    taught = Evaluator(model, train_loader, val_loader, distilled, cache=evaluator.cache)
                config = CompressionConfig.from_dict(match.iloc[0]["config"])
                evaluate_point(store, taught, f"distill {arm}", target, config)
            distilled_row = next(r for r in store.rows if r["arm"] == f"distill {arm}" and r["key"] == target)
            rows.append({"config": arm, "target": target, "labels only": match.iloc[0]["accuracy"],
                         "distill 0.5": distilled_row["accuracy"]})  # fmt: skip
    return pd.DataFrame(rows)


def summarize(store: PointStore, dense_accuracy: float, targets: list[float]) -> pd.DataFrame:
    """Per arm: runs, configs per run, mean (and spread) of the front metrics over seeds, wall seconds."""
    frame = store.frame()
    frame = frame[frame["accuracy"].notna() & ~frame["arm"].str.startswith("distill ")].copy()
    # a search's repeated configs (copied measurements, no evaluation) are one point
    configs = frame["config"] if "config" in frame else [None] * len(frame)
    frame["config_key"] = [
        json.dumps(c, sort_keys=True) if isinstance(c, dict) else str(k)
        for c, k in zip(configs, frame["key"], strict=True)
    ]
    frame = frame.drop_duplicates(subset=["arm", "seed", "config_key"])
    rows = []
    for (arm, seed), group in frame.groupby(["arm", frame["seed"].fillna(-1)], sort=False):
        clock = store.clock(arm if seed == -1 else f"{arm}-{int(seed)}")
        seconds = clock["seconds"] if clock["seconds"] else group["seconds"].sum()
        rows.append({"arm": arm, "seed": seed, "configs": len(group), "seconds": seconds,
                     **front_metrics(group, dense_accuracy, targets)})  # fmt: skip
    per_run = pd.DataFrame(rows)
    metrics = [c for c in per_run.columns if c.startswith("acc@")]
    aggregations = {"runs": ("configs", "size"), "configs": ("configs", "mean"), "seconds": ("seconds", "mean"),
                    "hypervolume": ("hypervolume", "mean")}  # fmt: skip
    aggregations.update({m: (m, "mean") for m in metrics})
    aggregations.update({f"{m} sd": (m, lambda v: statistics.stdev(v) if len(v) > 1 else 0.0) for m in metrics})
    summary = per_run.groupby("arm", sort=False).agg(**aggregations)
    return summary.sort_values(metrics[0] if metrics else "hypervolume", ascending=False)


def candidates_per_minute(store: PointStore, arm: str = "ranksearch") -> dict[str, float]:
    """Candidates scored (sensitivity proxies + screened) and full evaluations per minute of a search arm."""
    frame = store.frame()
    runs = frame[(frame["arm"] == arm) & frame["seed"].notna()]
    minutes = screened = full = 0.0
    for seed, group in runs.groupby("seed"):
        clock = store.clock(f"{arm}-{int(seed)}")
        minutes += clock["seconds"] / 60
        screened += clock.get("probes", 0) + group["screened"].fillna(1).sum()
        full += group["config"].map(lambda c: json.dumps(c, sort_keys=True)).nunique()  # repeats cost nothing
    return {"screened_per_minute": screened / minutes if minutes else math.nan,
            "full_per_minute": full / minutes if minutes else math.nan,
            "proxy_rank_correlation": spearman(-runs["proxy_loss"].astype(float), runs["accuracy"].astype(float)),
            "recalibrated_rank_correlation": spearman(runs["accuracy_recalibrated"].astype(float),
                                                      runs["accuracy"].astype(float))}  # fmt: skip


if __name__ == "__main__":
    main()
