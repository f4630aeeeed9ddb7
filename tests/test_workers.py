"""Many workers on one study: the budget is shared exactly, no trial is lost or duplicated, on SQLite, a
journal file and a real PostgreSQL server; an interrupted trial does not use up the budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import pytest
from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)
from postgres_server import postgres_server, why_unavailable  # tests/ is on sys.path (pytest's prepend mode)

from ranksearch.cli import main
from ranksearch.study import open_storage
from ranksearch.study._budget import TrialBudget

pytestmark = pytest.mark.slow  # worker processes and real studies: seconds to a minute each

COMPLETE, FAIL, RUNNING, PRUNED = (optuna.trial.TrialState[s] for s in ("COMPLETE", "FAIL", "RUNNING", "PRUNED"))


def trials_of(storage: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    backend = open_storage(storage)
    trials = optuna.load_study(study_name=name, storage=backend).trials
    if hasattr(backend, "engine"):
        backend.engine.dispose()  # no pooled connection left for the garbage collector to warn about
    return trials


def assert_exact(trials: list[optuna.trial.FrozenTrial], budget: int) -> None:
    """``budget`` measured trials, every number once, none left running, each with its whole record;
    anything else is an over-budget trial pruned before it evaluated anything or an interrupted one."""
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no number lost or given twice
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    measured = [t for t in trials if t.state in (COMPLETE, FAIL) and t not in interrupted]
    assert len(measured) == budget, [(t.number, t.state.name, sorted(t.user_attrs)) for t in trials]
    assert all("config" in t.user_attrs and "accuracy" in t.user_attrs for t in measured)
    for t in trials:
        over_budget = t.state == PRUNED and t.user_attrs == {"over_budget": True}
        assert t in measured or (t in interrupted and t.state == FAIL) or over_budget


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_local_workers_share_the_budget_exactly(tmp_path, capfd, kind):
    path = write_study(tmp_path)
    # per-layer: each worker's sampler seed makes its configs differ (allocate maps nearby knobs of two
    # workers proposing at the same moment to one config; each still measures it only once per worker)
    path.write_text(path.read_text().replace("n_trials = 4", 'n_trials = 10\nstrategy = "per-layer"'))
    storage = f"sqlite:///{tmp_path}/tiny.db" if kind == "sqlite" else f"journal:///{tmp_path}/tiny.log"
    assert main(["run", str(path), "--storage", storage, "--workers", "2"]) == 0
    out = capfd.readouterr().out
    assert "running 10 on 2 workers" in out and "worker 1 [" in out and "worker 2 [" in out
    assert "Pareto front (" in out and (tmp_path / "tiny" / "report.html").is_file()  # the report beside
    trials = trials_of(storage)
    assert_exact(trials, 10)
    # each worker samples with its own seed: the searched configs (after the queued warm starts) differ
    searched = [t for t in trials if t.state == COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len({str(t.user_attrs["config"]) for t in searched}) == len(searched)


def test_a_race_for_the_last_slot_prunes_the_loser_before_it_evaluates(tiny_task, tmp_path, monkeypatch, make_search):
    storage = f"sqlite:///{tmp_path}/race.db"
    winner = make_search(tiny_task, storage=storage, warm_start=(), heartbeat=None)  # ask() is used below
    loser = make_search(tiny_task, storage=storage, warm_start=(), heartbeat=None)
    winner.optimize(budget=1, show_progress=False)
    running = winner.study.ask()  # another worker's trial in flight: the budget of 2 is spent
    monkeypatch.setattr(TrialBudget, "spent", lambda self: False)  # the loser checked just before that
    evaluated = []
    monkeypatch.setattr(loser.evaluator, "evaluate", lambda *a, **k: evaluated.append(a))
    loser.optimize(budget=2, show_progress=False)
    assert evaluated == []
    states = {t.number: t.state for t in loser.study.trials}
    assert states == {0: COMPLETE, 1: RUNNING, 2: PRUNED}
    assert loser.study.trials[2].user_attrs == {"over_budget": True}
    winner.study.tell(running, [0.5, 0.5])
    assert winner.remaining(2) == 0


@pytest.mark.parametrize("key", ["accuracy", "interrupted"])  # half-way through its record; after all of it
def test_ctrl_c_while_a_trial_stores_its_record_is_run_again(tiny_task, tmp_path, monkeypatch, make_search, key):
    search = make_search(tiny_task, storage=f"sqlite:///{tmp_path}/stop.db")
    real, stored = optuna.Trial.set_user_attr, []

    def ctrl_c_while_storing_the_second_trials_record(trial, name, value):
        stored.append(name)
        if name == "accuracy" and stored.count("accuracy") == 2 and key == "accuracy":
            raise KeyboardInterrupt  # after the evaluation, before ``failure`` (None) is stored
        real(trial, name, value)
        if name == "failure" and stored.count("failure") == 2 and key == "interrupted":
            raise KeyboardInterrupt  # the whole record stored, the trial not yet told complete

    monkeypatch.setattr(optuna.Trial, "set_user_attr", ctrl_c_while_storing_the_second_trials_record)
    with pytest.raises(KeyboardInterrupt):
        search.optimize(budget=4, show_progress=False)
    second = search.study.trials[1]
    assert (second.state, second.user_attrs.get("interrupted")) == (FAIL, True)
    assert "config" in second.user_attrs and ("accuracy" in second.user_attrs) == (key == "interrupted")
    assert ("failure" in second.user_attrs) == (key == "interrupted") and second.user_attrs.get("failure") is None
    assert search.remaining(4) == 3  # not a failed evaluation: it is run again
    monkeypatch.undo()
    search.optimize(budget=4, show_progress=False)
    assert sum(t.state == COMPLETE for t in search.study.trials) == 4


def test_an_interrupted_trial_does_not_use_up_the_budget(tiny_task, tmp_path, monkeypatch, make_search):
    search = make_search(tiny_task, storage=f"sqlite:///{tmp_path}/stop.db")
    real, calls = search.evaluator.evaluate, []

    def ctrl_c_in_the_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search.evaluator, "evaluate", ctrl_c_in_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        search.optimize(budget=4, show_progress=False)
    assert [t.state for t in search.study.trials][:2] == [COMPLETE, FAIL]  # then the queued warm starts
    assert search.study.trials[1].user_attrs["interrupted"] is True
    assert search.remaining(4) == 3  # the interrupted trial is run again
    search.optimize(budget=4, show_progress=False)
    assert sum(t.state == COMPLETE for t in search.study.trials) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--workers", "2", "--storage", "sqlite:///:memory:"], "is in memory: a study there is lost"),
    ],
)
def test_bad_worker_settings_exit_2(tmp_path, capsys, args, message):
    path = write_study(tmp_path)
    assert main(["run", str(path), *args]) == 2
    assert message in capsys.readouterr().err


def test_local_workers_refuse_a_latency_study(tmp_path, capsys):
    path = write_study(tmp_path)
    path.write_text(path.read_text() + "[latency]\nbatch_size = 2\nrepeats = 1\n")
    assert main(["run", str(path), "--workers", "2"]) == 2
    assert "would disturb each other's timings" in capsys.readouterr().err


@pytest.fixture(scope="module")
def postgres_url():
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


def test_workers_on_two_machines_share_a_postgresql_study_exactly(tmp_path, capfd, postgres_url):
    path = write_study(tmp_path)
    command = [sys.executable, "-m", "ranksearch", "run", str(path), "--storage", postgres_url, "--n-trials"]
    assert subprocess.run([*command, "4", "--workers", "2", "--no-report"], cwd=tmp_path).returncode == 0
    assert_exact(trials_of(postgres_url), 4)
    # two "machines": independent commands on the same URL, started together, one budget of 10
    machines = [subprocess.Popen([*command, "10", "--no-report", "--seed", str(k)], cwd=tmp_path) for k in (1, 2)]
    assert [machine.wait(timeout=300) for machine in machines] == [0, 0]
    assert_exact(trials_of(postgres_url), 10)
    out = capfd.readouterr().out
    assert out.count("/10 trials done, running ") == 2  # both started with work to do, yet 10 in all


def test_a_worker_with_other_weights_is_refused(tiny_task, tmp_path, make_search):
    import copy

    import torch

    from ranksearch.errors import RanksearchError

    storage = f"sqlite:///{tmp_path}/w.db"
    make_search(tiny_task, storage=storage).optimize(budget=1, show_progress=False)
    model, train_loader, val_loader = tiny_task
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-6)  # e.g. the baseline trained again on another machine
    with pytest.raises(
        RanksearchError, match=r"was made with other weights of the model .* copy the trained-model file"
    ):
        make_search((other, train_loader, val_loader), storage=storage)
    assert make_search(tiny_task, storage=storage).remaining(1) == 0  # the same weights resume


POP = """
import sys, optuna
from ranksearch.study import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="queue", storage=open_storage(sys.argv[1]))
for _ in range(25):
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # raises if it ran a trial twice
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_concurrent_processes_pop_each_queued_trial_once(tmp_path, kind):
    """Before SQLite sessions began with BEGIN IMMEDIATE, 3 processes ran 4 of 60 queued trials twice."""
    storage = f"sqlite:///{tmp_path}/q.db" if kind == "sqlite" else f"journal:///{tmp_path}/q.log"
    study = optuna.create_study(study_name="queue", storage=open_storage(storage))
    for i in range(60):
        study.enqueue_trial({"x": i / 60})
    (tmp_path / "pop.py").write_text(POP)
    workers = [subprocess.Popen([sys.executable, str(tmp_path / "pop.py"), storage]) for _ in range(3)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0, 0]
    trials = optuna.load_study(study_name="queue", storage=open_storage(storage)).trials
    assert len(trials) == 75 and all(t.state == COMPLETE for t in trials)
    assert sorted(t.params["x"] for t in trials[:60]) == [i / 60 for i in range(60)]


def ctrl_c_as_in_a_terminal() -> None:
    """A shell starts a background job (`pytest &`, as scripts do) with Ctrl-C ignored and a child inherits
    that; the run under test gets the default a user at a terminal has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_worker_writes_the_report_and_the_rerun_completes_the_budget(tmp_path, capfd):
    path = write_study(tmp_path)
    text = path.read_text().replace("finetune_steps = 2", "finetune_steps = 300")  # trials of about a second
    path.write_text(text.replace("n_trials = 4", "n_trials = 8"))  # 7 left after the first: seconds of work
    command = [sys.executable, "-m", "ranksearch", "run", str(path), "--workers", "2"]
    own_group = {"start_new_session": True, "preexec_fn": ctrl_c_as_in_a_terminal}
    run = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=tmp_path, **own_group)
    before = []
    for line in run.stdout:  # Ctrl-C reaches the whole process group, as in a terminal
        before.append(line)
        if line.startswith("worker "):  # the first finished trial: the other worker is mid-trial
            break
    assert run.poll() is None, "".join(before)  # the run must still be going when Ctrl-C comes
    os.killpg(run.pid, signal.SIGINT)
    out = run.stdout.read()
    run.stdout.close()
    assert run.wait(timeout=60) == 130, "".join(before) + out
    assert "interrupted: " in out and "run the same command again to continue" in out
    assert (tmp_path / "tiny" / "report.html").is_file()
    storage = f"sqlite:///{tmp_path}/tiny.db"
    assert RUNNING not in [t.state for t in trials_of(storage)]
    assert main(["run", str(path), "--workers", "2", "--no-report"]) == 0
    trials = trials_of(storage)
    assert_exact(trials, 8)
    assert any(t.user_attrs.get("interrupted") for t in trials)  # run again, not counted
