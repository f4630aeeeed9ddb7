"""Parallel workers: trial throughput with 2 workers vs 1, and a 1,000-trial load test of the storages.

Two parts, each measured in the same run as its baseline:

1. ``throughput``: the real study file (default ``studies/digits_cnn.toml``: its model, data and brief
   fine-tune) for ``--trials`` trials with one worker (all cores), then with ``--workers`` workers (the
   cores shared out), each on a fresh SQLite study. Prints trials per minute and the ratio.
2. ``load``: the smallest real model (the digits CNN at width 4 on 8x8 digits) with ``finetune_steps = 0``,
   ``--load-trials`` trials on ``--workers`` workers, once per storage (a journal file, SQLite, and a
   PostgreSQL server started on loopback when one is installed). Every worker times its calls into the
   storage, the sampler and the evaluator. Prints trials per second, storage seconds per trial, that the
   trial count is exact, and how long ``ranksearch report`` takes for the study (target: < 10 s).

    python benchmarks/workers.py                      # both parts (about 15 minutes on 2 cores)
    python benchmarks/workers.py --part load --load-trials 200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import optuna
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from postgres_server import postgres_server, why_unavailable

from ranksearch.runner import prepare_search
from ranksearch.study import open_storage
from ranksearch.studyfile import load_study_file

LOAD_STUDY = """
[study]
name = "load"
n_trials = {trials}
[model]
name = "small_cnn"
options = {{ width = 4 }}
[data]
name = "digits"
options = {{ image_size = 8 }}
batch_size = 32
eval_batch_size = 120
[training]
epochs = 1
cache_dir = "{folder}/baselines"
[evaluator]
finetune_steps = 0
bn_batches = 1
eval_batches = 1
"""
STORAGE_METHODS = (
    "create_new_trial",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_id_from_study_id_trial_number",
    "record_heartbeat",
    "fail_stale_trials",
)


def _timed(owner: object, names: tuple[str, ...], totals: dict[str, float], key: str) -> None:
    """Replace ``owner``'s methods by timed ones (instance attributes), adding their seconds to ``totals[key]``."""
    for name in names:
        method = getattr(owner, name, None)
        if method is None:
            continue

        def timed(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - start

        setattr(owner, name, timed)


def worker(study_path: str, storage: str, budget: int, index: int, threads: int, out: str) -> None:
    """One worker process: its own sampler seed and threads; writes where its time went to ``out``."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = prepare_search(load_study_file(study_path), storage=storage, sampler_seed=index, log=lambda _: None)
    totals = {"storage": 0.0, "sampler": 0.0, "evaluate": 0.0}
    _timed(search.study._storage, STORAGE_METHODS, totals, "storage")
    sampling = ("infer_relative_search_space", "sample_relative", "sample_independent")
    _timed(search.study.sampler, sampling, totals, "sampler")
    _timed(search.evaluator, ("evaluate",), totals, "evaluate")
    mine = []
    start = time.perf_counter()
    search.optimize(budget=budget, show_progress=False, callbacks=[lambda study, trial: mine.append(trial.number)])
    totals.update(wall=time.perf_counter() - start, trials=len(mine))
    Path(out).write_text(json.dumps(totals))


def run_workers(
    study_path: Path, storage: str, budget: int, workers: int, folder: Path, threads: int | None = None
) -> dict[str, float]:
    """Open the study once (warm starts queued), then ``workers`` processes share ``budget``; totals over them.

    Each worker gets ``threads`` torch threads (default: its share of the cores, as ``ranksearch run --workers``).
    """
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    prepare_search(load_study_file(study_path), storage=storage, log=lambda _: None)  # creates it, trains the baseline
    context = multiprocessing.get_context("spawn")
    outs = [folder / f"worker-{k}.json" for k in range(workers)]
    start = time.perf_counter()
    processes = [
        context.Process(target=worker, args=(str(study_path), storage, budget, k, threads, str(out)))
        for k, out in enumerate(outs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    wall = time.perf_counter() - start
    if any(process.exitcode != 0 for process in processes):
        raise SystemExit(f"a worker failed on {storage}: exit codes {[p.exitcode for p in processes]}")
    parts = [json.loads(out.read_text()) for out in outs]
    total = {key: sum(part[key] for part in parts) for key in parts[0]}
    total["wall"] = wall  # includes each worker's start-up (imports, data, model)
    total["worker_wall"] = max(part["wall"] for part in parts)
    return total


def check_exact(storage: str, name: str, budget: int) -> str:
    trials = optuna.load_study(study_name=name, storage=open_storage(storage)).trials
    states = [t.state.name for t in trials]
    measured = states.count("COMPLETE") + states.count("FAIL")
    numbers = sorted(t.number for t in trials)
    ok = measured == budget and numbers == list(range(len(trials))) and "RUNNING" not in states
    return f"{'exact' if ok else 'NOT EXACT'}: {measured} measured, {states.count('PRUNED')} pruned over budget"


def report_seconds(storage: str, name: str, folder: Path) -> float:
    """Wall time of ``ranksearch report --storage URL --study NAME`` (imports included), as a user runs it."""
    command = [sys.executable, "-m", "ranksearch", "report", "--storage", storage, "--study", name]
    command += ["--out", str(folder)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def throughput(study: Path, trials: int, workers: int, folder: Path) -> None:
    """1 worker with every core's thread, 1 worker with 1 thread, ``workers`` workers with their share."""
    print(f"\n## Throughput: {study}, {trials} trials, 1 worker vs {workers}")
    cores, rates = os.cpu_count() or 1, {}
    arms = {"1 worker": (1, None), "1 worker, 1 thread": (1, 1), f"{workers} workers": (workers, None)}
    for arm, (count, threads) in arms.items():
        storage = f"sqlite:///{folder}/throughput-{len(rates)}.db"
        total = run_workers(study, storage, trials, count, folder, threads=threads)
        rates[arm] = trials / total["worker_wall"] * 60
        exact = check_exact(storage, load_study_file(study).study.name, trials)
        share = threads or max(1, cores // count)
        print(
            f"{arm} ({share} thread(s) each): {rates[arm]:.1f} trials/min ({total['worker_wall']:.0f} s for "
            f"{trials} trials, {total['evaluate'] / trials:.2f} s evaluating per trial; {exact})"
        )
    print(
        f"ratio {workers} workers / 1 worker: {rates[f'{workers} workers'] / rates['1 worker']:.2f}x; "
        f"/ 1 worker with 1 thread: {rates[f'{workers} workers'] / rates['1 worker, 1 thread']:.2f}x"
    )


def load(trials: int, workers: int, folder: Path, storages: list[str]) -> None:
    study = folder / "load.toml"
    study.write_text(LOAD_STUDY.format(trials=trials, folder=folder))
    print(f"\n## Load: {trials} trials of the smallest real model (finetune_steps = 0) on {workers} workers")
    header = "| storage | trials/s | storage ms/trial | sampler ms/trial | evaluate ms/trial | count | report s |"
    rows = [header, "|---" * 7 + "|"]
    with ExitStack() as stack:
        for kind in storages:
            if kind == "journal":
                storage = f"journal:///{folder}/load.log"
            elif kind == "sqlite":
                storage = f"sqlite:///{folder}/load.db"
            else:
                reason = why_unavailable()
                if reason is not None:
                    print(f"postgresql: skipped ({reason})")
                    continue
                storage = stack.enter_context(postgres_server(durable=True))
            total = run_workers(study, storage, trials, workers, folder)
            per = {key: total[key] / trials * 1000 for key in ("storage", "sampler", "evaluate")}
            seconds = report_seconds(storage, "load", folder / f"report-{kind}")
            rows.append(
                f"| {kind} | {trials / total['worker_wall']:.2f} | {per['storage']:.1f} | {per['sampler']:.1f} | "
                f"{per['evaluate']:.1f} | {check_exact(storage, 'load', trials)} | {seconds:.1f} |"
            )
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    print(
        "\nms/trial are summed over the workers' processes (CPU-seconds-like), so with 2 workers trials/s can exceed "
        "1000 / (their sum). Sampler time includes the storage reads the sampler makes."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("throughput", "load", "both"), default="both")
    parser.add_argument("--study", type=Path, default=Path("studies/digits_cnn.toml"), help="throughput study file")
    parser.add_argument("--trials", type=int, default=24, help="throughput trials per arm")
    parser.add_argument("--load-trials", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storages", default="journal,sqlite,postgresql", help="load: which storages")
    args = parser.parse_args()
    print(
        f"device: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, optuna {optuna.__version__}, "
        f"Python {platform.python_version()}"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ranksearch-workers-") as tmp:
        folder = Path(tmp)
        if args.part in ("throughput", "both"):
            throughput(args.study, args.trials, args.workers, folder)
        if args.part in ("load", "both"):
            load(args.load_trials, args.workers, folder, [s.strip() for s in args.storages.split(",") if s.strip()])


if __name__ == "__main__":
    main()
