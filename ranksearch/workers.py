"""Local worker processes that share one study and its trial budget exactly.

:func:`run_workers` starts ``workers`` processes of ``ranksearch run STUDY --worker K`` on a study that
the caller has already prepared (dense model trained, warm starts queued), waits for them, and turns
their exit statuses into one outcome. Each worker (:func:`run_worker`) opens the same study with its
own sampler seed (the file's seed + K) and its share of the CPU threads. A worker rebuilds everything from the
study file, in the caller's working directory: the user code it names is imported from the file's folder
(:func:`ranksearch.runner.prepare`), the same model and data as the main process's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .errors import RanksearchError
from .studyfile import StudyFile

__all__ = ["check_local_workers", "run_worker", "run_workers"]


def check_local_workers(measures_latency: bool, workers: int) -> None:
    """Several workers on one machine must not time latency: they would disturb each other's timings."""
    if measures_latency and workers > 1:
        raise RanksearchError(
            f"--workers {workers}: this study measures latency, and workers on one machine would disturb each "
            "other's timings; run it with one worker per machine"
        )


def worker_command(
    study_file: str | Path, storage: str, budget: int, workers: int, seed: int | None, timeout: float | None
) -> list[str]:
    """The command line of one worker, without its ``--worker K``."""
    command = [sys.executable, "-m", "ranksearch.cli", "run", str(study_file), "--storage", storage]
    command += ["--n-trials", str(budget), "--workers", str(workers)]
    if seed is not None:
        command += ["--seed", str(seed)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    return command


def run_workers(
    study_file: str | Path,
    storage: str,
    *,
    budget: int,
    workers: int,
    seed: int | None = None,
    timeout: float | None = None,
) -> None:
    """Run ``workers`` processes on the prepared study until the shared ``budget`` is spent.

    Ctrl-C reaches the whole process group: each worker stops its trial and exits, and this raises
    KeyboardInterrupt. A worker that fails makes this raise a RanksearchError naming it.
    """
    command = worker_command(study_file, storage, budget, workers, seed, timeout)
    processes = [subprocess.Popen([*command, "--worker", str(k)]) for k in range(1, workers + 1)]
    try:
        statuses = [process.wait() for process in processes]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: each stops its trial and exits
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    if 130 in statuses or -signal.SIGINT in statuses:
        raise KeyboardInterrupt
    failed = [f"worker {k} exited with status {status}" for k, status in enumerate(statuses, 1) if status != 0]
    if failed:
        raise RanksearchError("; ".join(failed) + " (its messages are above); run the same command again to continue")


def run_worker(
    study_file: StudyFile,
    *,
    worker: int,
    workers: int,
    budget: int,
    storage: str | None = None,
    seed: int | None = None,
    timeout: float | None = None,
) -> None:
    """Worker ``worker`` of ``workers``: its own sampler seed (the seed + ``worker``), its share of the threads."""
    import torch

    from .runner import prepare_search  # imports Optuna

    if study_file.evaluator.threads is None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    sampler_seed = (study_file.study.seed if seed is None else seed) + worker
    search = prepare_search(study_file, storage=storage, sampler_seed=sampler_seed, log=lambda _: None)
    search.optimize(budget=budget, timeout=timeout, label=f"worker {worker}")
