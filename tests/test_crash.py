"""A worker killed with SIGKILL mid-trial: every finished trial survives, and the killed trial is marked
failed (through the storage heartbeat) when the study resumes, never left running or half-recorded."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)

from ranksearch.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")]


def wait_for_a_running_trial(database: Path, timeout: float) -> None:
    """Return once the study's SQLite ``database`` has a running trial (the next one, after the stored trial 0)
    whose heartbeat is recorded: a trial killed before its first heartbeat is never found stale (Optuna's
    heartbeat thread starts just after the trial is created), and would stay running."""
    query = "SELECT 1 FROM trials JOIN trial_heartbeats USING (trial_id) WHERE trials.state = 'RUNNING'"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(database, timeout=5)) as connection:
            if connection.execute(query).fetchone():
                return
        time.sleep(0.02)
    raise AssertionError(f"no trial started within {timeout} s")


def test_a_killed_worker_loses_no_finished_trial_and_its_trial_fails_on_resume(tmp_path, capsys):
    path = write_study(tmp_path)
    text = path.read_text().replace("finetune_steps = 2", "finetune_steps = 300")  # trials of about a second
    path.write_text(text.replace("n_trials = 4", "n_trials = 4\nheartbeat = 1"))
    storage = f"sqlite:///{tmp_path}/tiny.db"
    worker = subprocess.Popen(
        [sys.executable, "-m", "ranksearch.cli", "run", str(path)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        for line in worker.stdout:  # wait until trial 0 is stored, then kill the worker inside trial 1
            if line.startswith("[1/4] trial 0:"):
                break
        wait_for_a_running_trial(tmp_path / "tiny.db", timeout=60)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        worker.stdout.close()
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=storage).trials]
    assert states[0] == optuna.trial.TrialState.COMPLETE and optuna.trial.TrialState.RUNNING in states
    # Silent for longer than the grace period (2 x heartbeat) by more than a second: SQLite's timestamps are whole
    # seconds, so after 2.5 s the last heartbeat could still look 2 s old, not stale (the resumed run then had
    # nothing left to run: the killed trial held the budget's last slot).
    time.sleep(3.5)

    assert main(["run", str(path), "--n-trials", "2", "--no-report"]) == 0
    assert "1/2 trials done, running 1" in capsys.readouterr().out  # the killed trial is not counted as done
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2 and states[1] == optuna.trial.TrialState.FAIL
    first = trials[0]  # the finished trial is whole
    assert "config" in first.user_attrs
    assert first.values == [first.user_attrs["accuracy"], first.user_attrs["macs_ratio"]]
