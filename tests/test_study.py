"""RankSearch: a tiny study end to end, resume, reproducibility, failures, and bad input."""

from __future__ import annotations

import optuna
import pytest

import ranksearch as rs
from ranksearch.evaluator import EvaluatorSettings
from ranksearch.record import param_name
from ranksearch.space import SearchSpace
from ranksearch.study import RankSearch

FAST = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1)
SPACE = SearchSpace(rank_fractions=(0.25, 0.5, 0.75))
ATTRS = {
    "config",
    "macs",
    "params",
    "macs_ratio",
    "params_ratio",
    "accuracy",
    "accuracy_zero_shot",
    "accuracy_recalibrated",
    "accuracy_finetuned",
    "finetune_skipped",
    "failure",
    "layer_errors",
    "seconds",
}


def dominates(a, b, directions) -> bool:
    """Reference: ``a`` is no worse than ``b`` everywhere and better somewhere."""
    sign = [1 if d == "maximize" else -1 for d in directions]
    no_worse = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return no_worse and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def make_search(task, **kwargs) -> RankSearch:
    """A per-layer search (these tests inspect its per-layer parameters; test_allocate_strategy.py tests
    the default ``allocate`` strategy)."""
    model, train_loader, val_loader = task
    options = {"storage": None, "space": SPACE, "evaluator": FAST, "study_name": "tiny", "strategy": "per-layer"}
    options.update(kwargs)
    return RankSearch(model, train_loader, val_loader, **options)


def test_study_completes_with_a_non_dominated_front_and_every_attribute(tiny_task):
    search = make_search(tiny_task)
    search.optimize(8, show_progress=False)
    trials = search.completed_trials()
    assert len(trials) == 8
    first = trials[0]
    assert first.values[1] == 1.0 and all(v == "dense" for k, v in first.params.items() if k.endswith(".method"))
    assert trials[1].params[param_name("3.0")] == "tucker2"  # the uniform warm starts come next
    for trial in trials:
        assert set(trial.user_attrs) >= ATTRS
        assert trial.values[0] == trial.user_attrs["accuracy"] and trial.values[1] == trial.user_attrs["macs_ratio"]
    front = search.pareto_front()
    assert len(front) >= 1 and list(front.columns[:3]) == ["trial", "accuracy", "macs"]
    assert search.study.metric_names == ["accuracy", "macs"]  # optuna-dashboard shows these names
    everything = search.trials_dataframe()
    directions = ["maximize", "minimize"]
    for _, row in front.iterrows():
        mine = (row["accuracy"], row["macs"])
        assert not any(
            dominates((a, m), mine, directions) for a, m in zip(everything["accuracy"], everything["macs"], strict=True)
        )
    dominated = everything[~everything["is_pareto"]]
    for _, row in dominated.iterrows():
        assert any(
            dominates((a, m), (row["accuracy"], row["macs"]), directions)
            for a, m in zip(front["accuracy"], front["macs"], strict=True)
        )
    assert search.config(int(front["trial"][0])) == rs.CompressionConfig.from_dict(
        trials[int(front["trial"][0])].user_attrs["config"]
    )


def test_resume_adds_trials_without_repeating(tiny_task, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    make_search(tiny_task, storage=storage).optimize(4, show_progress=False)
    resumed = make_search(tiny_task, storage=storage)
    assert len(resumed.completed_trials()) == 4 and resumed.remaining(6) == 2
    resumed.optimize(resumed.remaining(6), show_progress=False)
    trials = resumed.study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    dense_trials = [t for t in trials if t.values[1] == 1.0]
    assert len(dense_trials) == 1  # warm starts are enqueued once, not again on resume


def test_same_seed_reproduces_the_first_trials(tiny_task):
    runs = []
    for _ in range(2):
        search = make_search(tiny_task, seed=3)
        search.optimize(6, show_progress=False)
        runs.append([(t.params, t.values) for t in search.completed_trials()])
    assert runs[0] == runs[1]


def test_failed_trials_are_recorded_and_the_study_goes_on(tiny_task, capsys):
    model, train_loader, val_loader = tiny_task
    search = RankSearch(model, train_loader, val_loader, storage=None, space=SPACE, evaluator=FAST)
    search.evaluator.loss_fn = lambda logits, _: logits.sum() * float("nan")
    search.optimize(3)
    trials = search.study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(trials) == 3 and search.remaining(3) == 0
    assert trials[0].user_attrs["failure"] == "FloatingPointError: fine-tune loss became nan at step 0"
    assert "fail: FloatingPointError" in capsys.readouterr().out
    assert search.pareto_front().empty


def test_progress_lines_show_best_pareto_size_and_eta(tiny_task, capsys):
    make_search(tiny_task).optimize(2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("[1/2] trial 0: accuracy=") and "| pareto 1 |" in lines[0] and "ETA" in lines[0]


def test_an_existing_study_with_other_objectives_is_refused(tiny_task, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    make_search(tiny_task, storage=storage).optimize(1, show_progress=False)
    with pytest.raises(rs.RanksearchError, match=r"exists with different objectives: stored .*'macs'.*asked"):
        make_search(tiny_task, storage=storage, objectives=("accuracy", "params"))
    with pytest.raises(rs.RanksearchError, match=r"exists with different evaluator: .*'finetune_steps': 2"):
        make_search(
            tiny_task, storage=storage, evaluator=EvaluatorSettings(finetune_steps=3, bn_batches=1, eval_batches=1)
        )
    make_search(
        tiny_task,
        storage=storage,
        evaluator=EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1, threads=1),
    )  # machine settings may change


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objectives": ("accuracy",)}, r"at least two distinct objectives, got \['accuracy'\]"),
        (
            {"objectives": ("accuracy", "flops")},
            "unknown objective 'flops'; available: accuracy, macs, params, latency",
        ),
        ({"objectives": ("accuracy", "latency", "latency")}, "at least two distinct objectives"),
        ({"objectives": ("macs", "params")}, "objectives must include 'accuracy'"),
        ({"sampler": "cmaes"}, "unknown sampler 'cmaes'; available: tpe, nsga2, nsga3, gp, random"),
        ({"storage": "nosuchdb://host/x"}, "cannot open storage 'nosuchdb://host/x'"),
        ({"storage": "runs/x.db"}, "is not a storage URL"),
    ],
)
def test_bad_search_settings(tiny_task, kwargs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        make_search(tiny_task, **kwargs)


@pytest.mark.parametrize("sampler", ["nsga2", "nsga3", "gp", "random"])
def test_other_samplers_run(tiny_task, sampler):
    search = make_search(tiny_task, sampler=sampler)
    search.optimize(5, show_progress=False)
    assert len(search.completed_trials()) == 5


def test_bad_trial_numbers_and_budgets(tiny_task):
    search = make_search(tiny_task)
    with pytest.raises(rs.RanksearchError, match="no trial 7 in study 'tiny'"):
        search.config(7)
    with pytest.raises(rs.RanksearchError, match="n_trials must be an int >= 0, got -2"):
        search.optimize(-2)


def test_a_config_proposed_twice_is_not_evaluated_twice(tiny_task):
    space = SearchSpace(methods=("svd",), rank_fractions=(0.5,), include=("3.0",))  # one possible config
    search = make_search(tiny_task, space=space, sampler="random")
    search.optimize(3, show_progress=False)
    trials = search.completed_trials()
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, 0, 0]
    assert trials[1].values == trials[0].values and trials[2].user_attrs["config"] == trials[0].user_attrs["config"]
    assert list(search.pareto_front()["trial"]) == [0]
