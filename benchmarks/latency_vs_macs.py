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
from ranksearch.report._latency_check import fit_latency_scale, latency_check_frame
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
    seconds = search.study.user_attrs.get("benchmark_seconds", 0.0) + time.perf_counter() - start
    search.study.set_user_attr("benchmark_seconds", seconds)  # kept across resumed runs
    print(f"  {name}: {trials} trials in {seconds:.0f} s, front {len(search.pareto_front())}")
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
    parser.add_argument("--results", help="write this runtime's section of a results page (markdown) here")
    parser.add_argument("--label", default="", help="appended to the section's title (e.g. ', run 2')")
    args = parser.parse_args()
    started = time.perf_counter()
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
    fronts = time_fronts(searches, evaluator, timers, batches, args.rounds)
    dense_accuracy = evaluator.dense.accuracy
    print(f"\ndense model: accuracy {dense_accuracy:.4f}; " + ", ".join(
        f"{fronts[f'dense_ms_b{b}'].median():.3f} ms at batch {b}" for b in batches))  # fmt: skip
    sections = []
    for b in batches:
        check = prediction_check(fronts, b, args.rounds)
        picks = matched_picks(fronts, b, dense_accuracy)
        print(f"\n--- batch {b}: {check['text']}")
        print(picks.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        sections.append((b, check, picks))
    print("\nAll Pareto configs, measured (ms; ratio = over the dense model timed next to it):")
    print(fronts.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.results:
        took = {name: search.study.user_attrs["benchmark_seconds"] for name, search in searches.items()}
        took["this invocation"] = time.perf_counter() - started
        write_section(Path(args.results), args, sections, fronts, took, dense_accuracy)
        print(f"results page: {args.results}")


def time_fronts(searches, evaluator, timers, batches, rounds) -> pd.DataFrame:
    """Every Pareto config of every study, predicted from the latency table at every batch size
    (``predicted_ratio_b<B>``) and timed there against the dense model timed interleaved with it, ``rounds``
    times round-robin: ``ms_b<B>``, ``dense_ms_b<B>`` and ``ratio_b<B>`` (medians), and ``ratio_b<B>_r<i>``
    per round (the spread across rounds)."""
    rows, models = [], []
    for name, search in searches.items():
        results = search.results()
        for _, row in results.pareto().iterrows():
            resolved = results.config(int(row["trial"])).resolve(evaluator.model)
            models.append(apply_resolved(evaluator.model, resolved, cache=evaluator.cache))
            predicted = {f"predicted_ratio_b{b}": timers[b].predict(resolved, models[-1]) / timers[b].dense_seconds
                         for b in batches}  # fmt: skip
            entry = {"study": name, "trial": int(row["trial"]), "accuracy": row["accuracy"], "macs": row["macs_ratio"],
                     "methods": row["methods"]}  # fmt: skip
            if name.startswith("latency_b"):
                entry["predicted_ratio"] = row["latency_ratio"]
            rows.append({**entry, **predicted})
    for b in batches:  # round-robin rounds: drift and bursts of load hit every config alike
        timed = [[timers[b].measure_against_dense(model) for model in models] for _ in range(rounds)]
        for i, entry in enumerate(rows):
            entry[f"ms_b{b}"] = statistics.median(r[i][0] for r in timed) * 1e3
            entry[f"dense_ms_b{b}"] = statistics.median(r[i][1] for r in timed) * 1e3
            entry[f"ratio_b{b}"] = statistics.median(r[i][0] / r[i][1] for r in timed)
            for k, r in enumerate(timed):
                entry[f"ratio_b{b}_r{k}"] = r[i][0] / r[i][1]
    return pd.DataFrame(rows)


def prediction_check(front: pd.DataFrame, batch: int, rounds: int) -> dict[str, object]:
    """Median |error| of the predicted ratios of every study's Pareto configs against the measured ones: raw,
    with the per-model scale fitted leave-one-out, and per timing round (the spread)."""
    front = front.drop_duplicates(subset=[f"predicted_ratio_b{batch}", "methods"])  # a config on two fronts
    predicted, measured = front[f"predicted_ratio_b{batch}"].to_numpy(), front[f"ratio_b{batch}"].to_numpy()
    check = latency_check_frame(
        pd.DataFrame({"trial": front["trial"], "latency_ratio": predicted, "latency_ms": predicted,
                      "latency_measured_ms": measured, "latency_reference_ms": 1.0, "is_pareto": True}), None,
    )  # fmt: skip
    raw = float(check["error"].abs().median())
    corrected = float(check["corrected_error"].abs().median())
    per_round = [float((front[f"predicted_ratio_b{batch}"] / front[f"ratio_b{batch}_r{k}"] - 1).abs().median())
                 for k in range(rounds)]  # fmt: skip
    scale = fit_latency_scale(predicted, measured)
    text = (f"{len(front)} Pareto configs of the studies: median |error| of the predicted ratio {raw:.1%} "
            f"(rounds: {', '.join(f'{e:.1%}' for e in per_round)}), {corrected:.1%} with the per-model scale "
            f"(leave-one-out; fitted on all: {scale:.2f})")  # fmt: skip
    return {"configs": len(front), "raw": raw, "corrected": corrected, "rounds": per_round, "scale": scale,
            "text": text}  # fmt: skip


def matched_picks(fronts: pd.DataFrame, batch: int, dense_accuracy: float) -> pd.DataFrame:
    """At each accuracy target, the MACs study's cheapest-in-MACs pick and the latency study's fastest
    (predicted) pick, both measured: the speed-up of the latency pick over the MACs pick."""
    latency_front = fronts[fronts["study"] == f"latency_b{batch}"]
    rows = []
    for drop in TARGET_DROPS:
        target = dense_accuracy - drop
        by_macs = choose(fronts[fronts["study"] == "macs"], target, "macs")
        by_latency = choose(latency_front, target, "predicted_ratio")
        if by_macs is None or by_latency is None:
            continue
        rows.append({
            "accuracy >=": round(target, 4),
            "MACs pick (trial, acc, macs)": describe(by_macs), "MACs pick methods": by_macs["methods"],
            "MACs pick vs dense": 1 / by_macs[f"ratio_b{batch}"],
            "latency pick (trial, acc, macs)": describe(by_latency), "latency pick methods": by_latency["methods"],
            "latency pick vs dense": 1 / by_latency[f"ratio_b{batch}"],
            "speed-up of latency pick": by_macs[f"ratio_b{batch}"] / by_latency[f"ratio_b{batch}"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def write_section(path: Path, args, sections, fronts, took: dict[str, float], dense_accuracy: float) -> None:
    """This run's section of the results page (one per runtime and layout; other sections are kept)."""
    key = f"{args.runtime}{' channels-last' if args.channels_last else ''} on {args.device}{args.label}"
    lines = [f"<!-- run: {key} -->", f"## {key}", "",
             f"{cpu_model()}, threads {torch.get_num_threads()}, torch {torch.__version__}; study file {args.study}, "
             f"{args.trials} trials per study, {args.rounds} timing rounds; took "
             f"{', '.join(f'{name} {seconds / 60:.1f} min' for name, seconds in took.items())} "
             f"({time.strftime('%Y-%m-%d %H:%M')}). Dense accuracy {dense_accuracy:.4f}.", ""]  # fmt: skip
    lines += ["| batch | dense (ms) | Pareto configs | median error, predicted ratio | per round | "
              "with per-model scale (leave-one-out) | scale |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for b, check, _ in sections:
        dense_ms = fronts[f"dense_ms_b{b}"].median()
        lines.append(f"| {b} | {dense_ms:.3f} | {check['configs']} | {check['raw']:.1%} | "
                     f"{' / '.join(f'{e:.1%}' for e in check['rounds'])} | {check['corrected']:.1%} | "
                     f"{check['scale']:.2f} |")  # fmt: skip
    for b, _, picks in sections:
        lines += ["", f"Batch {b}: latency pick vs MACs pick at matched accuracy (measured, speed-ups over dense)", ""]
        lines += [picks.to_markdown(index=False, floatfmt=".3f") if len(picks) else "(no target both studies met)"]
    text = path.read_text() if path.exists() else PAGE_HEAD
    marker = f"<!-- run: {key} -->"
    if marker in text:  # replace this runtime's section, keep the others
        head, rest = text.split(marker, 1)
        tail = rest.split("<!-- run: ", 1)
        text = head + "\n".join(lines) + "\n\n" + ("<!-- run: " + tail[1] if len(tail) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    path.write_text(text.rstrip("\n") + "\n")


PAGE_HEAD = """# Latency: prediction and the latency objective, per runtime

Written by `benchmarks/latency_vs_macs.py --results benchmarks/RESULTS_latency.md` (one section per runtime).
Each run searches the study file on (accuracy, MACs) once and on (accuracy, latency) once per batch size,
then predicts (from the latency table) and times every Pareto config of every study against the dense model
timed interleaved with it, in rounds; the prediction error is over all of them (each config once).
*Predicted ratio*: the latency table's prediction as a fraction of the dense model. *Measured ratio*: the
whole compressed model over the dense model timed next to it. The per-model scale corrects the predicted
change (``1 + s (predicted - 1)``), fitted on the other configs (leave-one-out).
"""

if __name__ == "__main__":
    main()
