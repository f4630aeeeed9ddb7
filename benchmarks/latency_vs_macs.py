"""What measured latency buys over MACs: the same search twice, once on (accuracy, macs), once on (accuracy, latency).

For each inference batch size (``--batches``; batch 1 is overhead-bound on a CPU, batch 32 compute-bound),
runs a study on (accuracy, latency) and, once, a study on (accuracy, macs), same file, budget and seed.
Then times the whole compressed model of every Pareto config of every study at every batch size (same
settings, interleaved) and compares, at matched accuracy, the config each study would hand a user:

- the MACs study's choice: its cheapest-in-MACs Pareto config reaching the accuracy target;
- the latency study's choice: its fastest (predicted) Pareto config reaching the same target;

for targets of 0, 0.5, 1, 2 and 5 accuracy points below dense (both choices within 0.5 points of the
target's accuracy band by construction). Prints measured latencies, speed-ups over dense and the ratio
MACs-choice / latency-choice (> 1: the latency-aware choice is faster), plus how well each study's latency
table predicted its Pareto configs.

    python benchmarks/latency_vs_macs.py                      # digits CNN, 40 trials per study, batches 1 and 32
    python benchmarks/latency_vs_macs.py --trials 60 --batches 32
    python benchmarks/latency_vs_macs.py --device cuda --dtype bfloat16 --batches 1,256   # on a GPU
    python benchmarks/latency_vs_macs.py --runtime onnxruntime      # the latency of the exported graphs
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path

from ranksearch.compress import apply_resolved
from ranksearch.latency import LatencyEstimator, LatencySettings, LatencyTable
from ranksearch.runner import prepare
from ranksearch.studyfile import load_study_file

TARGET_DROPS = (0.0, 0.005, 0.01, 0.02, 0.05)


def run_study(base, folder: Path, name: str, objectives: tuple[str, ...], trials: int, latency: LatencySettings):
    """Run one variant of the study file in its own SQLite storage; returns the search."""
    study = dataclasses.replace(base.study, name=name, objectives=objectives, n_trials=trials, storage=None)
    variant = dataclasses.replace(base, study=study, latency=latency)
    prepared = prepare(variant, storage=f"sqlite:///{folder}/{name}.db", log=lambda _: None)
    search = prepared.search
    start = time.perf_counter()
    search.optimize(search.remaining(trials), show_progress=False)
    print(f"  {name}: {trials} trials in {time.perf_counter() - start:.0f} s, front {len(search.pareto_front())}")
    return search


def choose(front: pd.DataFrame, target: float, cost: str) -> pd.Series | None:
    reaching = front[front["accuracy"] >= target - 1e-12]
    return None if reaching.empty else reaching.sort_values([cost, "accuracy"], ascending=[True, False]).iloc[0]


def describe(row: pd.Series) -> str:
    return f"#{row['trial']} {row['accuracy']:.4f} {row['macs']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits_cnn.toml", help="the study file to vary")
    parser.add_argument("--trials", type=int, default=40, help="budget of every study (default: 40)")
    parser.add_argument("--batches", default="1,32", help="inference batch sizes to compare (default: 1,32)")
    parser.add_argument("--repeats", type=int, default=15, help="timed samples per latency measurement")
    parser.add_argument("--device", default="cpu", help="where to fine-tune, evaluate and time: cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="timing dtype (bfloat16/float16 on cuda)")
    parser.add_argument("--runtime", default="torch", help="what runs the model: torch, torch.compile, onnxruntime")
    parser.add_argument("--channels-last", action="store_true", help="time 4-D tensors channels-last")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds over all Pareto configs (median kept)")
    parser.add_argument("--out", help="folder for the studies (default: a temporary folder)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per study instead of one per trial
    batches = [int(b) for b in args.batches.split(",")]
    base = load_study_file(args.study)
    folder = Path(args.out or tempfile.mkdtemp(prefix="latency_vs_macs_"))
    table = str(folder / "latency-table.json")
    base = dataclasses.replace(base, evaluator=dataclasses.replace(base.evaluator, device=args.device))
    settings = {
        b: LatencySettings(
            device=args.device,
            dtype=args.dtype,
            batch_size=b,
            repeats=args.repeats,
            check_every=0,
            table=table,
            runtime=args.runtime,
            channels_last=args.channels_last,
        )
        for b in batches
    }
    print(
        f"device: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    print(f"study file {args.study}, {args.trials} trials per study, studies in {folder}")

    searches = {"macs": run_study(base, folder, "macs", ("accuracy", "macs"), args.trials, settings[batches[0]])}
    for b in batches:
        searches[f"latency_b{b}"] = run_study(
            base, folder, f"latency_b{b}", ("accuracy", "latency"), args.trials, settings[b]
        )

    evaluator = searches["macs"].evaluator
    timers = {
        b: LatencyEstimator(evaluator.model, evaluator.dense.input_shape[1:], settings[b], LatencyTable(table))
        for b in batches
    }
    rows, models = [], []
    for name, search in searches.items():
        results = search.results()
        for _, row in results.pareto().iterrows():
            resolved = results.config(int(row["trial"])).resolve(evaluator.model)
            models.append(apply_resolved(evaluator.model, resolved, cache=evaluator.cache))
            entry = {"study": name, "trial": int(row["trial"]), "accuracy": row["accuracy"], "macs": row["macs_ratio"]}
            if name.startswith("latency_b"):
                entry["predicted_ms"] = row["latency_ms"]
            rows.append(entry)
    for b in batches:  # round-robin rounds, median per config: drift and bursts of load hit every config alike
        rounds = [[timers[b].measure_model(model) * 1e3 for model in models] for _ in range(args.rounds)]
        for i, entry in enumerate(rows):
            entry[f"ms_b{b}"] = statistics.median(r[i] for r in rounds)
    fronts = pd.DataFrame(rows)
    dense_ms = {b: timers[b].dense_seconds * 1e3 for b in batches}
    dense_accuracy = evaluator.dense.accuracy
    print(
        f"\ndense model: accuracy {dense_accuracy:.4f}; "
        + ", ".join(f"{dense_ms[b]:.3f} ms at batch {b}" for b in batches)
    )

    for b in batches:
        latency_front = fronts[fronts["study"] == f"latency_b{b}"]
        # the latency study's own batch: its predictions were made for this batch size
        error = (latency_front["predicted_ms"] / latency_front[f"ms_b{b}"] - 1).abs()
        print(
            f"\n--- batch {b}: latency-table prediction, median |error| {error.median():.1%} "
            f"over {len(error)} Pareto configs"
        )
        table_rows = []
        for drop in TARGET_DROPS:
            target = dense_accuracy - drop
            by_macs = choose(fronts[fronts["study"] == "macs"], target, "macs")
            by_latency = choose(latency_front.assign(pred=latency_front["predicted_ms"]), target, "pred")
            if by_macs is None or by_latency is None:
                continue
            table_rows.append(
                {
                    "accuracy >=": round(target, 4),
                    "macs pick (trial, acc, macs)": describe(by_macs),
                    "macs pick ms": by_macs[f"ms_b{b}"],
                    "macs pick vs dense": dense_ms[b] / by_macs[f"ms_b{b}"],
                    "latency pick (trial, acc, macs)": describe(by_latency),
                    "latency pick ms": by_latency[f"ms_b{b}"],
                    "latency pick vs dense": dense_ms[b] / by_latency[f"ms_b{b}"],
                    "speed-up of latency pick": by_macs[f"ms_b{b}"] / by_latency[f"ms_b{b}"],
                }
            )
        print(pd.DataFrame(table_rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nAll Pareto configs, measured (ms):")
    print(fronts.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
