"""Search quality against the established rank-selection methods, on the same evaluator and budget.

Arms (each scored on its accuracy-vs-MACs front, the dense model included, reference point accuracy 0 and
MACs 1.0 x dense, as in the report):

- ``ranksearch``: the default search (TPE, dense and uniform warm starts);
- ``ranksearch+baselines``: the same, also warm-started with the baselines' configs (snapped to the grid);
- ``random``: Optuna's RandomSampler over the same space and budget;
- each baseline swept over MACs budgets (``--budgets``), every config through the same brief fine-tune:
  uniform SVD / Tucker-2 (one kept-rank fraction), energy (SVD, the energy level that meets the budget),
  VBMF (Tucker-2, the MUSCO weakening that meets the budget) and error-balanced (ALDS-style min-max
  layer error, SVD / Tucker-2).

Prints hypervolume and the best accuracy at 25% and 50% of the dense MACs per arm (mean and spread over
``--seeds`` for the searches); writes ``points.csv``, ``summary.csv`` and ``fronts.html`` to ``--out`` and,
with ``--results``, a results page (markdown).

    python benchmarks/search_quality.py --quick                       # under 5 minutes on 2 cores
    python benchmarks/search_quality.py --seeds 0,1,2 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path

import ranksearch
from ranksearch.cache import FactorCache
from ranksearch.config import CompressionConfig
from ranksearch.costs import count
from ranksearch.errors import RanksearchError
from ranksearch.heuristics import energy_config, error_balanced_config, uniform_config, vbmf_config
from ranksearch.report import hypervolume
from ranksearch.runner import prepare
from ranksearch.study import RankSearch
from ranksearch.studyfile import load_study_file

REFERENCE = (0.0, 1.0)  # accuracy 0, MACs 1.0 x dense


def front_metrics(points: pd.DataFrame, dense_accuracy: float) -> dict[str, float]:
    """Hypervolume and best accuracy at 25% / 50% MACs of a point set (the dense model added)."""
    accuracy = np.append(points["accuracy"].to_numpy(float), dense_accuracy)
    macs = np.append(points["macs"].to_numpy(float), 1.0)
    minimized = np.stack([-accuracy, macs], axis=1)
    metrics = {"hypervolume": hypervolume(minimized, (-REFERENCE[0], REFERENCE[1]))}
    for budget in (0.25, 0.5):
        under = accuracy[macs <= budget + 1e-12]
        metrics[f"acc@{budget:.0%}"] = float(under.max()) if len(under) else float("nan")
    return metrics


def bisect(make: Callable[[float], CompressionConfig], macs_of: Callable[[CompressionConfig], float], budget: float,
           low: float, high: float, increasing: bool = True, steps: int = 14) -> CompressionConfig | None:  # fmt: skip
    """The config of a one-parameter family whose MACs are the largest within ``budget`` (None if none is)."""
    best = None
    for _ in range(steps):
        middle = (low + high) / 2
        config = make(middle)
        fits = macs_of(config) <= budget
        if fits:
            best = config
        if fits == increasing:
            low = middle
        else:
            high = middle
    return best


def heuristic_configs(model: torch.nn.Module, input_shape: tuple[int, ...], budgets: list[float], cache: FactorCache):
    """{baseline name: [(budget, config)]} for every baseline and budget that it can meet."""
    dense = count(model, input_shape).macs

    def macs_of(config: CompressionConfig) -> float:
        return count(ranksearch.apply(model, config, cache=cache), input_shape).macs / dense

    found: dict[str, list[tuple[float, CompressionConfig]]] = {}
    shape = {"input_shape": input_shape}
    families = {
        "uniform svd": lambda b: uniform_config(model, cost_fraction=b, method="svd", **shape),
        "uniform tucker2": lambda b: uniform_config(model, cost_fraction=b, method="tucker2", **shape),
        "error-balanced svd": lambda b: error_balanced_config(model, b, method="svd", cache=cache, **shape),
        "error-balanced tucker2": lambda b: error_balanced_config(model, b, method="tucker2", cache=cache, **shape),
        "energy svd": lambda b: bisect(lambda e: energy_config(model, e, method="svd"), macs_of, b, 0.05, 1.0),
        "vbmf tucker2": lambda b: bisect(
            lambda w: vbmf_config(model, method="tucker2", weakening=w), macs_of, b, 0.0, 1.0
        ),
    }  # fmt: skip
    for name, family in families.items():
        for budget in budgets:
            try:
                config = family(budget)
            except RanksearchError as error:
                print(f"  {name} at {budget:.0%} MACs: {error}")
                continue
            if config is None:
                print(f"  {name} cannot meet {budget:.0%} of the dense MACs")
                continue
            found.setdefault(name, []).append((budget, config))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits_cnn.toml", help="study file (model, data, evaluator, space)")
    parser.add_argument("--trials", type=int, help="trials per search (default: the file's n_trials)")
    parser.add_argument("--seeds", default="0", help="comma-separated sampler seeds for the searches")
    parser.add_argument("--budgets", default="0.25,0.4,0.5,0.75", help="MACs budgets of the baseline sweeps")
    parser.add_argument("--quick", action="store_true", help="20 trials, budgets 0.25,0.5, one seed (< 5 min)")
    parser.add_argument("--out", help="folder for CSVs and the figure (default: a temporary folder)")
    parser.add_argument("--results", help="also write a results page (markdown) here, e.g. benchmarks/RESULTS.md")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_file = load_study_file(args.study)
    trials = 20 if args.quick else (args.trials or study_file.study.n_trials)
    budgets = [0.25, 0.5] if args.quick else [float(b) for b in args.budgets.split(",")]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or tempfile.mkdtemp(prefix="search_quality_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"device: {cpu_model()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, optuna {optuna.__version__}"
    )
    print(f"{args.study}: {trials} trials per search, seeds {seeds}, baseline budgets {budgets}; output in {out}")

    prepared = prepare(study_file, storage=f"sqlite:///{out}/base.db", log=lambda _: None)
    model, evaluator = prepared.model, prepared.search.evaluator
    cache = evaluator.cache
    input_shape = evaluator.dense.input_shape
    print(f"dense accuracy {evaluator.dense.accuracy:.4f}, {evaluator.dense.macs:,} MACs")

    rows = []
    print("baselines:")
    configs = heuristic_configs(model, input_shape, budgets, cache)
    for name, entries in configs.items():
        for budget, config in entries:
            result = evaluator.evaluate(config)
            if result.failure is None:
                rows.append(
                    {
                        "arm": name,
                        "seed": None,
                        "budget": budget,
                        "accuracy": result.accuracy,
                        "macs": result.macs_ratio,
                    }
                )
        print(f"  {name}: {len(entries)} configs evaluated")
    warm = [config for entries in configs.values() for _, config in entries]

    arms = {"ranksearch": ("tpe", ()), "ranksearch+baselines": ("tpe", warm), "random": ("random", ())}
    for seed in seeds:
        for arm, (sampler, warm_configs) in arms.items():
            clock = time.perf_counter()
            search = RankSearch(
                model, prepared.train_loader, prepared.val_loader, objectives=("accuracy", "macs"),
                storage=f"sqlite:///{out}/{arm.replace('+', '_')}_{seed}.db", study_name=arm, space=study_file.space,
                evaluator=study_file.evaluator, sampler=sampler, seed=seed, warm_start=study_file.study.warm_start,
                warm_start_configs=warm_configs, cache=cache,
            )  # fmt: skip
            search.optimize(search.remaining(trials), show_progress=False)
            completed = search.results().completed()
            rows += [
                {"arm": arm, "seed": seed, "budget": None, "accuracy": a, "macs": m}
                for a, m in zip(completed["accuracy"], completed["macs"], strict=True)
            ]
            print(f"  {arm}, seed {seed}: {len(completed)} configs in {time.perf_counter() - clock:.0f} s")

    points = pd.DataFrame(rows)
    points.to_csv(out / "points.csv", index=False)
    dense_accuracy = evaluator.dense.accuracy
    summary_rows = []
    for (arm, seed), group in points.groupby(["arm", points["seed"].fillna(-1)], sort=False):
        summary_rows.append({"arm": arm, "seed": None if seed == -1 else int(seed), "configs": len(group),
                             **front_metrics(group, dense_accuracy)})  # fmt: skip
    per_run = pd.DataFrame(summary_rows)
    summary = per_run.groupby("arm", sort=False).agg(
        runs=("configs", "size"),
        configs=("configs", "mean"),
        hypervolume=("hypervolume", "mean"),
        hypervolume_std=("hypervolume", lambda v: statistics.stdev(v) if len(v) > 1 else 0.0),
        acc_25=("acc@25%", "mean"),
        acc_50=("acc@50%", "mean"),
    )
    summary = summary.sort_values("hypervolume", ascending=False)
    per_run.to_csv(out / "summary.csv", index=False)
    table = summary.to_string(float_format=lambda v: f"{v:.4f}")
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\nreference point: accuracy {REFERENCE[0]}, MACs {REFERENCE[1]} x dense; dense accuracy {dense_accuracy:.4f}"
    )
    print(table)
    print(f"({minutes:.1f} min)")

    figure = go.Figure()
    for arm, group in points.groupby("arm", sort=False):
        figure.add_trace(go.Scatter(x=group["macs"], y=group["accuracy"], mode="markers", name=arm, opacity=0.7))
    figure.update_layout(title=f"Accuracy vs MACs per arm ({args.study})", xaxis_title="MACs (fraction of dense)",
                         yaxis_title="accuracy", xaxis_range=[0, 1.05], template="plotly_white")  # fmt: skip
    figure.write_html(out / "fronts.html", include_plotlyjs=True)

    if args.results:
        command = "python benchmarks/search_quality.py " + " ".join(sys.argv[1:])
        Path(args.results).write_text(
            "# Search quality: ranksearch against the rank-selection baselines\n\n"
            f"Generated by `{command}` ({minutes:.0f} min) on {cpu_model()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, optuna {optuna.__version__}, Python {platform.python_version()}.\n\n"
            f"Study file `{args.study}`: dense accuracy {dense_accuracy:.4f}; {trials} trials per search; "
            f"seeds {seeds}; "
            f"baselines swept over {', '.join(f'{b:.0%}' for b in budgets)} of the dense MACs, every config "
            "through the same brief fine-tune. Hypervolume of each arm's accuracy-vs-MACs front (dense model "
            f"included) against accuracy {REFERENCE[0]}, MACs {REFERENCE[1]} x dense; acc_25 / acc_50: best "
            "accuracy at <= 25% / 50% of the dense MACs (mean over seeds for the searches).\n\n"
            + summary.reset_index().to_markdown(index=False, floatfmt=".4f")
            + "\n",
            encoding="utf-8",
        )
        print(f"results page: {args.results}")


if __name__ == "__main__":
    main()
