"""The ``allocate`` strategy end to end on the tiny task (costs under dense and under targets, one-shot trials
first, sensitivity stored once, fixed configs as given, identity of older studies, bad input) and the
fine-tune's distillation from the dense model."""

from __future__ import annotations

import copy
import dataclasses
import math

import optuna
import pytest
import torch
import torch.nn.functional as F

import ranksearch as rs
from ranksearch.allocation import Knobs
from ranksearch.config import CompressionConfig
from ranksearch.costs import count
from ranksearch.evaluator import Evaluator, EvaluatorSettings
from ranksearch.objectives import check_strategy, check_targets
from ranksearch.record import IDENTITY_ATTR
from ranksearch.screening import ProxySettings
from ranksearch.sensitivity import Sensitivity
from ranksearch.space import DEFAULT_COST_FRACTIONS, SearchSpace
from ranksearch.study import _allocate, _proxy_budget

PROXY = ProxySettings(bn_batches=1, eval_samples=60)
TRAINING_STEP_SECONDS = _proxy_budget.training_step_seconds
COMPLETE = optuna.trial.TrialState.COMPLETE


def allocate(task, make_search, **kwargs):
    """An ``allocate`` search on the default (cost) grid with a small proxy; ``kwargs`` override."""
    return make_search(task, **{"strategy": "allocate", "space": SearchSpace(), "proxy": PROXY, **kwargs})


def check_allocated(search, trial) -> None:
    """An allocated trial: its recorded grid fractions give its config, and the proxy attributes agree (a
    uniform start: the uniform config the proxy ranks best at its target)."""
    if trial.user_attrs.get("uniform_start"):
        check_uniform_start(search, trial)
        return
    config = search.config(trial.number)
    fractions = trial.user_attrs["fractions"]
    assert set(fractions) == {name for name, (method, _) in config.items() if method != "dense"}
    for name, (method, rank) in config.items():
        if method != "dense":
            assert (
                fractions[name] in DEFAULT_COST_FRACTIONS and search.layers[name].rank(method, fractions[name]) == rank
            )
    assert ("proxy_loss" in trial.user_attrs) == (trial.user_attrs["screened"] > 1)


def proxy_ranking(search, budget):
    """At ``budget``: the uniform configs and their proxy losses (the uniform starts' proxy)."""
    screen = search.proposer._uniform_screen()
    configs = search.proposer.uniform_configs(budget)
    return configs, [screen.score(c).loss for c in configs]


def check_uniform_start(search, trial) -> None:
    """The trial measured, of the uniform baselines at its target, the one with the least proxy loss."""
    target = trial.params.get("target", trial.params.get("budget"))
    configs, losses = proxy_ranking(search, target)
    best = min(range(len(configs)), key=lambda i: (losses[i], i))
    assert search.config(trial.number) == configs[best] == CompressionConfig.from_dict(trial.user_attrs["fixed_config"])
    assert trial.user_attrs["screened"] == len(configs) >= 2 and trial.user_attrs["proxy_loss"] == losses[best]
    assert trial.user_attrs["macs_ratio"] <= target + 1e-12
    assert len({method for method, _ in configs[best].values()}) == 1  # one method, one kept-rank fraction


def check_uniform_starts(search, trials, budgets) -> None:
    """Right after the one-shots, a uniform start at each budget that a uniform config reaches (none at all
    where looking for them would cost more than a trial)."""
    starts = [t for t in trials if t.user_attrs.get("uniform_start")]
    looked = search.study.user_attrs["uniform_start_check"]["ran"]
    expected = [b for b in budgets if looked and search.proposer.uniform_configs(b)]
    assert [t.params.get("target", t.params.get("budget")) for t in starts] == expected
    assert [t.number for t in starts] == list(range(len(budgets), len(budgets) + len(starts)))


@pytest.fixture(autouse=True)
def costly_trials(monkeypatch):
    """Training steps timed at a minute each: screening and the uniform starts' check cost less than a trial, as
    on ResNet-20 (on the tiny task they would not: the gates' own tests time them otherwise)."""
    monkeypatch.setattr(_proxy_budget, "training_step_seconds", lambda evaluator: 60.0)


def test_allocated_trials_cost_less_than_dense_and_meet_their_targets(tiny_task, make_search):
    search = allocate(tiny_task, make_search, targets={"macs": [0.5, 0.3]}, screen=3)
    search.optimize(5, show_progress=False)
    trials = search.study.get_trials()
    assert [t.state for t in trials] == [COMPLETE] * 5
    assert [t.number for t in trials if t.user_attrs.get("one_shot")] == [0, 1]  # one per target, first
    assert [(t.params["target"], t.params["slack"]) for t in trials[:2]] == [(0.3, 1.0), (0.5, 1.0)]
    assert all(v == 0.0 for t in trials[:2] for k, v in t.params.items() if k.startswith(("preference.", "depth")))
    check_uniform_starts(search, trials, [0.3, 0.5])
    for trial in trials:
        macs = trial.user_attrs["macs_ratio"]
        assert macs < 1.0 and trial.values[1] == macs
        assert macs <= trial.params["target"] + 1e-12 and macs <= trial.params["target"] * trial.params["slack"] + 1e-12
        # the allocation, the uniform configs that fit, then variants (one-shot trials: the allocation alone);
        # configs measured before are left out
        assert 1 <= trial.user_attrs["screened"] <= (5 if trial.user_attrs.get("uniform_start") else 3)
        if trial.user_attrs.get("one_shot"):
            assert trial.user_attrs["screened"] == 1 and "proxy_loss" not in trial.user_attrs
            allocated = search.proposer._allocator.config(Knobs(trial.params["target"]))
            assert search.config(trial.number) == allocated
        check_allocated(search, trial)
    stored = Sensitivity.from_dict(search.study.user_attrs["sensitivity"])
    assert {p.layer for p in stored.points} == set(search.layers) and stored.probes > 0


def test_a_free_budget_starts_with_one_shots_at_ten_25_and_50_percent(tiny_task, make_search):
    search = allocate(tiny_task, make_search, screen=2)
    search.optimize(7, show_progress=False)  # the one-shots, the uniform starts, one sampled trial
    trials = search.study.get_trials(states=(COMPLETE,))
    assert [t.params["budget"] for t in trials[:3]] == [0.1, 0.25, 0.5]
    assert [bool(t.user_attrs.get("one_shot")) for t in trials] == [True] * 3 + [False] * 4
    check_uniform_starts(search, trials, [0.1, 0.25, 0.5])
    for trial in trials:
        assert trial.state == COMPLETE and "target" not in trial.params
        assert trial.user_attrs["macs_ratio"] <= trial.params["budget"] + 1e-12 < 1.0
        check_allocated(search, trial)


def test_the_proxys_best_uniform_config_is_queued_at_each_target_not_weighed_against_the_allocation(
    tiny_task, make_search
):
    search = allocate(tiny_task, make_search, targets={"macs": [0.3, 0.5]}, screen=2)
    uniform = {c.to_json() for b in (0.3, 0.5) for c in search.proposer.uniform_configs(b)}
    favourite = {b: search.proposer.uniform_configs(b)[-1].to_json() for b in (0.3, 0.5)}  # not the first: ranked
    screen = search.proposer._uniform_screen()  # the uniform starts' proxy (the sensitivity pass has its own)
    real, scored = screen.score, []

    def ranked(config):  # the favourite first at each budget, the other uniform configs after it
        scored.append(config.to_json())
        score = real(config)
        return dataclasses.replace(score, loss=0.5 if config.to_json() in favourite.values() else 1.0 + score.loss)

    screen.score = ranked
    search.prepare(log=lambda line: None)
    assert set(scored) == uniform  # the uniform configs alone: the allocations are not scored against them
    queued = search.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    starts = [t for t in queued if t.user_attrs.get("uniform_start")]
    assert [t.number for t in starts] == [2, 3]  # after the one-shots
    fixed = [CompressionConfig.from_dict(t.user_attrs["fixed_config"]).to_json() for t in starts]
    assert fixed == [favourite[0.3], favourite[0.5]] and all(t.user_attrs["proxy_loss"] == 0.5 for t in starts)
    search.optimize(4, show_progress=False)
    assert [t.params["target"] for t in search.study.get_trials()[2:]] == [0.3, 0.5]
    for trial in search.study.get_trials()[2:]:
        check_uniform_start(search, trial)  # the proxy's best of them (under the same patched proxy)


@pytest.mark.parametrize("step_seconds", [60.0, 1e-9])
def test_uniform_starts_are_looked_for_only_where_that_costs_less_than_a_trial(
    tiny_task, make_search, monkeypatch, step_seconds
):
    monkeypatch.setattr(_proxy_budget, "training_step_seconds", lambda evaluator: step_seconds)
    search = allocate(tiny_task, make_search, targets={"macs": [0.3, 0.5]}, screen=2)
    scored = []
    screen = search.proposer._uniform_screen()
    real = screen.score
    screen.score = lambda config: scored.append(config) or real(config)
    lines = []
    search.prepare(log=lines.append)
    decision = search.study.user_attrs["uniform_start_check"]
    sensitivity = Sensitivity.from_dict(search.study.user_attrs["sensitivity"])
    assert (search.proposer._uniform_configs == {}) == (not decision["ran"])  # a check not run builds none
    proxies = len(search.proposer.methods()) * 2
    assert proxies >= 4 and sensitivity.probes > 0
    assert decision["check_seconds"] == pytest.approx(proxies * sensitivity.seconds / sensitivity.probes, rel=1e-12)
    assert decision["trial_seconds"] == pytest.approx(step_seconds * search.evaluator.settings.finetune_steps)
    assert decision["ran"] == (step_seconds == 60.0)
    built = sum(len(search.proposer.uniform_configs(b)) for b in (0.3, 0.5))
    assert len(scored) == (built if decision["ran"] else 0)  # a check not run scores nothing
    assert any(
        line.startswith("uniform starts: " + ("ranking" if decision["ran"] else "not looked for")) for line in lines
    )
    queued = search.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    starts = [t for t in queued if t.user_attrs.get("uniform_start")]
    assert len(starts) == (2 if decision["ran"] else 0)


@pytest.mark.parametrize(
    ("asked", "proxy_seconds", "trial", "screen"),
    [(8, 1.0, 100.0, 8), (8, 1.0, 10.0, 5), (8, 1.0, 4.0, 2), (8, 1.0, 3.9, 1), (1, 1.0, 100.0, 1), (8, 0.0, 1.0, 8)],
)
def test_screening_costs_at_most_half_a_full_evaluation(asked, proxy_seconds, trial, screen):
    decision = _proxy_budget.screen_decision(asked, proxy_seconds, trial)
    assert decision == {"asked": asked, "screen": screen, "proxy_seconds": proxy_seconds, "trial_seconds": trial}


@pytest.mark.parametrize("affordable", [0, 3])  # (all it asks for: the tests above, whose trials are costly)
def test_a_new_study_screens_what_it_affords_and_a_resumed_one_what_it_stored(
    tiny_task, make_search, monkeypatch, tmp_path, affordable
):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = allocate(tiny_task, make_search, targets={"macs": [0.3, 0.5]}, screen=5, storage=storage)
    proxy = search.proposer._proxy_screen().dense.seconds  # the screening proxy, timed on the dense model
    steps = search.evaluator.settings.finetune_steps
    step = (affordable + 0.5) * proxy / (_proxy_budget.SCREEN_SHARE * steps)  # affords `affordable` candidates
    monkeypatch.setattr(_proxy_budget, "training_step_seconds", lambda evaluator: step)
    lines = []
    search.prepare(log=lines.append)
    expected = {0: 1, 3: 3}[affordable]
    stored = search.study.user_attrs["screen_check"]
    assert stored["screen"] == search.proposer.screen_size == expected and stored["asked"] == 5
    assert stored["trial_seconds"] == pytest.approx(steps * step) and stored["proxy_seconds"] == proxy
    assert any(line.startswith(f"screening: {expected} of the 5") for line in lines)
    search.optimize(4, show_progress=False)
    trials = search.study.get_trials(states=(COMPLETE,))
    searched = [t for t in trials if not {"one_shot", "fixed_config"} & t.user_attrs.keys()]
    assert searched and all(1 <= t.user_attrs["screened"] <= expected for t in searched)
    assert all(("proxy_loss" in t.user_attrs) == (t.user_attrs["screened"] > 1) for t in searched)
    monkeypatch.setattr(_proxy_budget, "training_step_seconds", lambda evaluator: 1e9)  # decided once: stored
    resumed = allocate(tiny_task, make_search, targets={"macs": [0.3, 0.5]}, screen=5, storage=storage)
    resumed.prepare(log=lambda line: None)
    assert resumed.proposer.screen_size == expected


def test_a_trial_whose_candidates_were_all_measured_takes_an_unmeasured_variant(tiny_task, make_search):
    search = allocate(tiny_task, make_search, targets={"macs": [0.5]}, screen=2)
    search.optimize(2, show_progress=False)  # the one-shot trial and the uniform start
    assert [t.user_attrs.keys() & {"one_shot", "uniform_start"} for t in search.study.get_trials()] == [
        {"one_shot"},
        {"uniform_start"},
    ]
    asked = []

    def seen(config) -> bool:  # the trial's own candidates (asked first) count as measured, later ones do not
        asked.append(config)
        return len(asked) <= 2

    search.proposer.seen = seen
    search.optimize(1, show_progress=False)
    trial = search.study.get_trials()[-1]
    config = search.config(trial.number)
    assert len(asked) > 2 and config in asked[2:] and config not in asked[:2]
    assert trial.user_attrs["screened"] == 1 and "proxy_loss" not in trial.user_attrs  # the only one: not screened
    assert trial.user_attrs["macs_ratio"] <= 0.5 + 1e-12


def test_a_training_step_is_timed_on_a_copy_of_the_dense_model(tiny_task, make_search):
    search = allocate(tiny_task, make_search, targets={"macs": [0.5]})
    before = copy.deepcopy(search.evaluator.model.state_dict())
    seconds = TRAINING_STEP_SECONDS(search.evaluator)  # the real one (the autouse fixture patches the module's)
    assert 0 < seconds < 10 and math.isfinite(seconds)
    after = search.evaluator.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in search.evaluator.model.parameters())


def test_without_uniform_starts_the_search_follows_the_one_shots(tiny_task, make_search, monkeypatch):
    monkeypatch.setattr(_allocate, "UNIFORM_STARTS", False)
    search = allocate(tiny_task, make_search, targets={"macs": [0.4]}, screen=2)
    search.optimize(2, show_progress=False)
    assert [sorted(t.user_attrs.keys() & {"one_shot", "uniform_start"}) for t in search.study.get_trials()] == [
        ["one_shot"],
        [],
    ]


def test_sensitivity_is_measured_once_and_not_again_on_resume(tiny_task, make_search, tmp_path, monkeypatch):
    calls = []
    measure = _allocate.measure_sensitivity
    monkeypatch.setattr(
        _allocate, "measure_sensitivity", lambda *a, **k: calls.append(a[0].settings) or measure(*a, **k)
    )
    options = {"storage": f"sqlite:///{tmp_path}/study.db", "targets": {"macs": [0.4]}, "screen": 2}
    first = allocate(tiny_task, make_search, **options)
    assert calls == [] and "sensitivity" not in first.study.user_attrs  # nothing measured on construction
    lines = []
    first.prepare(log=lines.append)
    # the pass's own, lighter proxy: ProxySettings.sensitivity_* (the screening keeps bn_batches, eval_samples)
    assert calls == [ProxySettings(2, 256, 2, 256)] and lines[0].startswith("sensitivity: scoring each of 5 layers")
    first.prepare(log=lines.append)
    first.optimize(2, show_progress=False)
    stored = first.study.user_attrs["sensitivity"]
    lighter = dataclasses.replace(PROXY, sensitivity_bn_batches=1, sensitivity_eval_samples=30)
    resumed = allocate(tiny_task, make_search, **options, proxy=lighter)  # the pass's settings: not the identity
    resumed.optimize(1, show_progress=False)
    assert len(calls) == 1 and resumed.study.user_attrs["sensitivity"] == stored
    trials = resumed.study.get_trials()
    assert [t.state for t in trials] == [COMPLETE] * 3
    assert any(v != 0.0 for k, v in trials[2].params.items() if k.startswith("preference."))  # not a new one-shot
    for changed, key in (({"targets": {"macs": [0.3]}}, "targets"), ({"screen": 3}, "screen")):
        with pytest.raises(rs.RanksearchError, match=f"exists with different {key}: "):
            allocate(tiny_task, make_search, **{**options, **changed})
    with pytest.raises(rs.RanksearchError, match="exists with different strategy: stored allocate, asked per-layer"):
        allocate(tiny_task, make_search, **{**options, "strategy": "per-layer"})


def test_warm_start_configs_are_evaluated_as_given(tiny_task, make_search):
    given = CompressionConfig({"6.0": ("svd", 3), "10": ("svd", 5)})  # rank 5 of layer 10 is on no grid level
    search = allocate(tiny_task, make_search, targets={"macs": [0.4]}, screen=2, warm_start_configs=[given])
    assert 5 not in search.layers["10"].ranks["svd"]
    search.optimize(2, show_progress=False)
    one_shot, fixed = search.study.get_trials(states=(COMPLETE,))
    assert one_shot.user_attrs["one_shot"] and "fixed_config" not in one_shot.user_attrs
    assert "uniform_start" not in fixed.user_attrs  # the given configs come before the uniform starts
    assert CompressionConfig.from_dict(fixed.user_attrs["fixed_config"]) == given and search.config(1) == given
    assert fixed.user_attrs["screened"] == 1 and "proxy_loss" not in fixed.user_attrs
    model = tiny_task[0]
    macs = count(rs.apply(model, given), (1, 1, 8, 8)).macs / count(model, (1, 1, 8, 8)).macs
    assert fixed.user_attrs["macs_ratio"] == pytest.approx(macs, abs=1e-12)


def test_warm_start_configs_work_when_no_one_shot_budget_is_reachable(tiny_task, make_search):
    given = CompressionConfig({"12": ("svd", 2)})
    search = allocate(tiny_task, make_search, space=SearchSpace(include=("12",)), warm_start_configs=[given])
    assert search.proposer.floor > 0.5  # the head is a sliver of the MACs: no 10/25/50% one-shot is reachable
    assert [t.user_attrs.get("fixed_config") for t in search.study.get_trials()] == [given.to_dict()]


def test_a_duplicate_in_a_resumed_study_is_not_marked_one_shot(tiny_task, make_search, tmp_path, monkeypatch):
    monkeypatch.setattr(_allocate, "UNIFORM_STARTS", False)  # its rank is on no grid level: not a duplicate
    # One searched layer with one level: every allocation at a 90% target is the same config.
    space = SearchSpace(methods=("dense", "svd"), cost_fractions=(0.3,), include=("10",))
    options = {"space": space, "targets": {"macs": [0.9]}, "screen": 1}
    same_process = allocate(tiny_task, make_search, **options)
    same_process.optimize(2, show_progress=False)
    first, duplicate = same_process.study.get_trials()
    assert duplicate.user_attrs["duplicate_of"] == 0 and "one_shot" not in duplicate.user_attrs
    storage = f"sqlite:///{tmp_path}/study.db"
    allocate(tiny_task, make_search, storage=storage, **options).optimize(1, show_progress=False)
    resumed = allocate(tiny_task, make_search, storage=storage, **options)
    resumed.optimize(1, show_progress=False)
    first, duplicate = resumed.study.get_trials()
    assert duplicate.user_attrs["duplicate_of"] == 0 and first.user_attrs["one_shot"]
    assert "one_shot" not in duplicate.user_attrs  # it was sampled, not enqueued


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "greedy"}, r"unknown strategy 'greedy'; available: allocate, per-layer"),
        ({"strategy": None}, r"unknown strategy None; available: allocate, per-layer"),
        ({"targets": {"flops": [0.5]}}, r"unknown target cost 'flops'; available: macs, params, latency"),
        ({"targets": {"macs": [0.5, 1.0]}}, r"targets macs must be fractions of dense in \(0, 1\), got 1.0"),
        ({"targets": {"params": [0]}}, r"targets params must be fractions of dense in \(0, 1\), got 0"),
        ({"targets": {"macs": [True]}}, r"targets macs must be fractions of dense in \(0, 1\), got True"),
        ({"targets": {"macs": []}}, r"targets macs must be a non-empty list of fractions, got \[\]"),
        ({"targets": {"macs": "0.5"}}, r"targets macs must be a non-empty list of fractions, got '0.5'"),
        ({"targets": [0.5]}, r"targets must map a cost to fractions, e.g. \{macs = \[0.1, 0.25\]\}, got \[0.5\]"),
        ({"screen": 0}, r"screen must be an int >= 1 \(candidates per trial\), got 0"),
        ({"screen": True}, r"screen must be an int >= 1 \(candidates per trial\), got True"),
        ({"screen": 2.0}, r"screen must be an int >= 1 \(candidates per trial\), got 2.0"),
    ],
)
def test_bad_strategy_targets_and_screen_are_refused(tiny_task, make_search, kwargs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        allocate(tiny_task, make_search, **kwargs)


def test_targets_are_checked_sorted_and_deduplicated():
    assert check_targets(None) == {} and check_targets({}) == {}
    assert check_targets({"macs": [0.5, 0.1, 0.5], "latency": 0.3}) == {"macs": (0.1, 0.5), "latency": (0.3,)}
    assert check_strategy("per-layer") == "per-layer"


def test_a_study_stored_before_the_new_keys_resumes_as_a_rank_grid_per_layer_study(tiny_task, make_search, tmp_path):
    storage = f"sqlite:///{tmp_path}/old.db"
    labels_only = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1, distill=0.0)  # as then
    options = {"storage": storage, "strategy": "per-layer", "space": SearchSpace(rank_fractions=(0.25, 0.5)),
               "evaluator": labels_only}  # fmt: skip
    make_search(tiny_task, **options).optimize(1, show_progress=False)
    study = optuna.load_study(study_name="tiny", storage=storage)
    identity = {k: v for k, v in study.user_attrs[IDENTITY_ATTR].items() if k not in ("grid", "strategy", "targets")}
    identity["evaluator"] = {k: v for k, v in identity["evaluator"].items() if not k.startswith("distill")}
    study.set_user_attr(IDENTITY_ATTR, identity)  # what a study stored before these keys existed holds
    resumed = make_search(tiny_task, **options)
    resumed.optimize(1, show_progress=False)
    assert len(resumed.completed_trials()) == 2
    refused = [
        ({"strategy": "allocate"}, "strategy: stored per-layer, asked allocate"),
        ({"space": SearchSpace()}, "grid: stored rank, asked cost"),
        ({"targets": {"macs": [0.5]}}, r"targets: stored \{\}, asked \{'macs': \[0.5\]\}"),
        ({"evaluator": EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1, distill=0.5)}, "evaluator"),
    ]
    for changed, message in refused:
        with pytest.raises(rs.RanksearchError, match=f"exists with different {message}"):
            make_search(tiny_task, **{**options, **changed})


# --- distillation in the fine-tune ---------------------------------------------------------------------------

CONFIG = CompressionConfig({"3.0": ("svd", 1), "6.0": ("tucker2", (2, 1)), "10": ("svd", 3)})


def finetune_by_hand(model, evaluator) -> None:
    """The evaluator's fine-tune written out: SGD with cosine decay on (1 - w) * CE + w * T^2 * KL(dense || model)."""
    s = evaluator.settings
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    model.train()
    for step, (inputs, targets) in enumerate(evaluator.train_batches[: s.finetune_steps]):
        for group in optimizer.param_groups:
            group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * step / s.finetune_steps))
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        if s.distill:
            loss = (1 - s.distill) * loss + s.distill * s.distill_temperature**2 * kl(evaluator, step, logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def kl(evaluator, step: int, logits: torch.Tensor) -> torch.Tensor:
    """KL(dense || student) at the distillation temperature, summed over classes, mean over the batch."""
    t = evaluator.settings.distill_temperature
    teacher = F.softmax(evaluator.teacher_logits()[step] / t, dim=1)
    return (teacher * (teacher.log() - F.log_softmax(logits / t, dim=1))).sum(1).mean()


@pytest.mark.parametrize(("distill", "exact"), [(0.0, True), (0.5, False), (1.0, False)])
def test_the_fine_tune_loss_blends_labels_and_distillation(tiny_task, distill, exact):
    model, train_loader, val_loader = tiny_task
    settings = EvaluatorSettings(finetune_steps=3, bn_batches=1, eval_batches=1, lr=0.05, distill=distill)
    evaluator = Evaluator(model, train_loader, val_loader, dataclasses.replace(settings, distill_temperature=3.0))
    student = rs.apply(model, CONFIG, cache=evaluator.cache)
    by_hand = copy.deepcopy(student)
    evaluator.finetune(student)
    finetune_by_hand(by_hand, evaluator)
    for (name, mine), theirs in zip(by_hand.state_dict().items(), student.state_dict().values(), strict=True):
        if exact:  # distill = 0 is the plain label loss, to the bit
            assert torch.equal(mine, theirs), name
        else:
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=2e-5, msg=name)


def test_distillation_moves_the_student_towards_the_dense_logits(tiny_task):
    model, train_loader, val_loader = tiny_task
    settings = EvaluatorSettings(
        finetune_steps=1, bn_batches=2, eval_batches=1, lr=0.02, momentum=0.0, distill=1.0, distill_temperature=2.0
    )
    evaluator = Evaluator(model, train_loader, val_loader, settings)
    teacher = evaluator.teacher_logits()
    again = evaluator.teacher_logits()  # computed once, for the fine-tune batches
    assert len(teacher) == 1 and all(a is b for a, b in zip(again, teacher, strict=True))
    inputs = evaluator.train_batches[0][0]
    with torch.no_grad():
        torch.testing.assert_close(teacher[0], copy.deepcopy(model).eval()(inputs), rtol=0, atol=1e-6)
    student = rs.apply(model, CONFIG, cache=evaluator.cache)
    assert not evaluator.recalibrate(student, batches=0) and not evaluator.recalibrate(torch.nn.Linear(2, 2))
    assert evaluator.recalibrate(student)

    def divergence() -> float:
        student.eval()
        with torch.no_grad():
            return kl(evaluator, 0, student(inputs)).item()

    before = divergence()
    evaluator.finetune(student)
    assert divergence() < before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distill": 1.5}, r"evaluator setting distill must be a number in \[0, 1\], got 1.5"),
        ({"distill": -0.1}, r"evaluator setting distill must be a number in \[0, 1\], got -0.1"),
        ({"distill": True}, r"evaluator setting distill must be a number in \[0, 1\], got True"),
        ({"distill": "0.5"}, r"evaluator setting distill must be a number in \[0, 1\], got '0.5'"),
        ({"distill_temperature": 0}, r"distill_temperature must be a finite number > 0, got 0"),
        ({"distill_temperature": -1.0}, r"distill_temperature must be a finite number > 0, got -1.0"),
        ({"distill_temperature": math.inf}, r"distill_temperature must be a finite number > 0, got inf"),
        ({"distill_temperature": math.nan}, r"distill_temperature must be a finite number > 0, got nan"),
        ({"distill_temperature": True}, r"distill_temperature must be a finite number > 0, got True"),
    ],
)
def test_bad_distillation_settings_are_refused(kwargs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        EvaluatorSettings(**kwargs)


def test_trials_screen_the_uniform_config_of_each_method_at_their_budget(tiny_task, make_search):
    search = allocate(tiny_task, make_search, targets={"macs": [0.4]}, screen=8)
    proposer = search.proposer
    proposer.prepare()
    options, cost = proposer.costs.options, proposer._allocator.cost
    base = proposer._allocator.picks(Knobs(0.4))
    uniform = proposer._uniform(base, 0.4)
    assert uniform and len(uniform) <= len(proposer.methods())
    for picks in uniform:
        assert cost(picks) <= 0.4 + 1e-12
        shared = [
            (m, f) for m, f in set(picks.values()) if all(picks[n] == (m, f) for n in picks if (m, f) in options[n])
        ]
        method, level = max(shared, key=lambda pick: sum(pick in options[n] for n in picks))
        higher = sorted(f for f in {f for c in options.values() for m, f in c if m == method} if f > level)
        if higher:  # the next level up does not fit the budget
            up = {n: (method, higher[0]) if p == (method, level) else p for n, p in picks.items()}
            assert cost(up) > 0.4


def test_the_gp_sampler_searches_the_knobs_past_its_random_start(tiny_task, make_search):
    search = allocate(tiny_task, make_search, targets={"macs": [0.5, 0.3]}, screen=1, sampler="gp", seed=3)
    assert isinstance(search.study.sampler, optuna.samplers.GPSampler)
    search.optimize(12, show_progress=False)  # the GP's 10 random start-up trials, then two it proposes
    trials = search.study.get_trials()
    assert [t.state for t in trials] == [COMPLETE] * 12
    for trial in trials:
        assert trial.user_attrs["macs_ratio"] <= trial.params["target"] * trial.params["slack"] + 1e-12
        assert -1.0 <= trial.params["depth_tilt"] <= 1.0
