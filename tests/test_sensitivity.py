"""The proxy (Screen: BatchNorm recalibration, a few validation samples, no fine-tune) and the per-layer
sensitivity curves measured with it: every distinct rank or every other one, interpolation, storage."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import ranksearch as rs
from ranksearch.evaluator import Evaluator, EvaluatorSettings
from ranksearch.screening import ProxySettings, Screen
from ranksearch.sensitivity import Sensitivity, SensitivityPoint, measure_sensitivity
from ranksearch.space import SearchSpace

FAST = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1)
PROXY = ProxySettings(bn_batches=2, eval_samples=50)
SPACE = SearchSpace(
    methods=("dense", "svd", "tucker2"), cost_fractions=(0.05, 0.1, 0.2, 0.35, 0.5, 0.7), include=("6.0", "10")
)


@pytest.fixture(scope="module")
def screened(tiny_task):
    """(screen, layers, sensitivity every rank, sensitivity every other rank) on the tiny task."""
    model, train_loader, val_loader = tiny_task
    screen = Screen(Evaluator(model, train_loader, val_loader, FAST), PROXY)
    layers = SPACE.layers(model, screen.evaluator.dense.input_shape)
    return screen, layers, measure_sensitivity(screen, layers, stride=1), measure_sensitivity(screen, layers)


def test_dense_proxy_is_the_cross_entropy_of_the_first_samples(tiny_task):
    """The dense model is scored like every compressed one: after the same BatchNorm recalibration."""
    model, train_loader, val_loader = tiny_task
    evaluator = Evaluator(model, train_loader, val_loader, FAST)
    inputs, targets = evaluator.val_batches[0]
    assert len(targets) == 120
    model = copy.deepcopy(model)
    evaluator.recalibrate(model, PROXY.bn_batches)
    model.eval()
    for samples in (50, 120, 1000):  # more samples than the evaluator holds: all of them
        screen = Screen(evaluator, ProxySettings(eval_samples=samples))
        kept = min(samples, 120)
        with torch.no_grad():
            logits = model(inputs[:kept])
        assert sum(len(t) for _, t in screen.batches) == kept
        assert screen.dense.loss == pytest.approx(F.cross_entropy(logits, targets[:kept]).item(), abs=1e-6)
        accuracy = (logits.argmax(1) == targets[:kept]).float().mean().item()
        assert screen.dense.metric == pytest.approx(accuracy, abs=1e-6) and screen.dense.seconds >= 0


def test_a_score_recalibrates_batchnorm_without_fine_tuning_or_touching_the_model(screened, tiny_task):
    screen, _, _, _ = screened
    config = rs.CompressionConfig({"3.0": ("svd", 2), "6.0": ("tucker2", (3, 2))})
    before = {k: v.clone() for k, v in screen.evaluator.model.state_dict().items()}
    score = screen.score(config)
    assert all(torch.equal(v, before[k]) for k, v in screen.evaluator.model.state_dict().items())
    by_hand = rs.apply(tiny_task[0], config)
    norms = [m for m in by_hand.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the recalibration batches
    by_hand.train()
    with torch.no_grad():
        for inputs, _ in screen.evaluator.train_batches[:2]:  # PROXY.bn_batches
            by_hand(inputs)
        by_hand.eval()
        inputs, targets = screen.evaluator.val_batches[0]
        loss = F.cross_entropy(by_hand(inputs[:50]), targets[:50]).item()
    assert score.loss == pytest.approx(loss, abs=1e-5) and score.loss != pytest.approx(screen.dense.loss, abs=1e-3)
    with pytest.raises(rs.ConfigError, match="12"):
        screen.score(rs.CompressionConfig({"12": ("svd", 99)}))


def test_stride_one_measures_every_distinct_rank(screened):
    screen, layers, every, _ = screened
    curves = [(n, m) for n, layer in layers.items() for m in layer.methods if m != "dense"]
    assert set(curves) == {("6.0", "svd"), ("6.0", "tucker2"), ("10", "svd")}
    distinct = {curve: set(layers[curve[0]].ranks[curve[1]]) for curve in curves}
    assert every.probes == sum(len(ranks) for ranks in distinct.values())
    assert len(every.points) == len(curves) * len(SPACE.cost_fractions) and all(p.measured for p in every.points)
    assert every.dense_loss == screen.dense.loss and every.dense_metric == screen.dense.metric
    for p in every.points:
        layer = layers[p.layer]
        assert p.cost == layer.cost(p.method, p.fraction)
        config = rs.CompressionConfig({p.layer: (p.method, layer.rank(p.method, p.fraction))})
        assert p.loss == pytest.approx(screen.score(config).loss, abs=1e-6)
    increase = every.increase()
    assert set(increase) == {(p.layer, p.method, p.fraction) for p in every.points}
    assert all(v == max(0.0, p.loss - every.dense_loss) for p, v in zip(every.points, increase.values(), strict=True))
    assert every.methods() == ("svd", "tucker2") and list(every.frame().columns)[-1] == "loss_increase"


def test_stride_two_measures_every_other_rank_and_interpolates_in_log_cost(screened):
    _, layers, every, other = screened
    reference = {(p.layer, p.method, p.fraction): p for p in every.points}
    for name, method in {(p.layer, p.method) for p in other.points}:
        layer = layers[name]
        points = [p for p in other.points if (p.layer, p.method) == (name, method)]
        by_rank = {layer.rank(method, p.fraction): p for p in points}
        ordered = sorted(by_rank, key=lambda r: by_rank[r].cost)
        wanted = set(ordered[::2]) | {ordered[-1]}  # every other distinct rank, the cheapest and costliest
        assert {r for r, p in by_rank.items() if p.measured} == wanted
        measured = sorted((p for p in points if p.measured), key=lambda p: p.cost)
        for p in points:
            if p.measured:  # the same proxy as with stride 1
                assert p.loss == pytest.approx(reference[(name, method, p.fraction)].loss, abs=1e-6)
                continue
            below = max((q for q in measured if q.cost <= p.cost), key=lambda q: q.cost)
            above = min((q for q in measured if q.cost >= p.cost), key=lambda q: q.cost)
            w = (math.log(p.cost) - math.log(below.cost)) / (math.log(above.cost) - math.log(below.cost))
            assert p.loss == pytest.approx((1 - w) * below.loss + w * above.loss, abs=1e-9)
            assert p.metric == pytest.approx((1 - w) * below.metric + w * above.metric, abs=1e-9)
    assert 0 < other.probes < every.probes
    assert sum(p.measured for p in other.points) < len(other.points)


def test_methods_limit_the_curves_and_progress_counts_every_probe(screened):
    screen, layers, every, _ = screened
    calls = []
    only = measure_sensitivity(screen, layers, methods=("tucker2",), stride=1, progress=lambda *a: calls.append(a))
    assert {(p.layer, p.method) for p in only.points} == {("6.0", "tucker2")}
    assert calls == [(i, only.probes) for i in range(1, only.probes + 1)]
    expected = {(p.layer, p.method, p.fraction): p.loss for p in every.points}
    assert all(p.loss == pytest.approx(expected[(p.layer, p.method, p.fraction)], abs=1e-6) for p in only.points)


def test_curves_survive_a_json_round_trip(screened):
    _, _, _, other = screened
    stored = json.loads(json.dumps(other.to_dict()))
    assert Sensitivity.from_dict(stored) == other
    assert any(not p.measured for p in Sensitivity.from_dict(stored).points)
    assert Sensitivity.from_dict({"dense_loss": 1, "dense_metric": 0.5, "points": []}).probes == 0


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"dense_loss": 1.0, "dense_metric": 0.5},
        {"dense_loss": 1.0, "dense_metric": 0.5, "points": [["3.0", "svd", 0.1, 0.2, 1.0]]},
        {"dense_loss": 1.0, "dense_metric": 0.5, "points": [["3.0", "svd", "a", 0.2, 1.0, 0.5, True]]},
        {"dense_loss": 1.0, "dense_metric": 0.5, "points": 3},
        {"dense_loss": None, "dense_metric": 0.5, "points": []},
        {"dense_loss": 1.0, "dense_metric": 0.5, "points": [], "probes": "many"},
        None,
        [1, 2],
    ],
)
def test_malformed_stored_curves_are_refused(data):
    with pytest.raises(rs.RanksearchError, match="stored sensitivity curves are malformed: "):
        Sensitivity.from_dict(data)


def test_bad_stride_and_proxy_settings_are_refused(screened):
    screen, layers, _, _ = screened
    for stride in (0, -1, 1.5, True):
        with pytest.raises(rs.RanksearchError, match=rf"sensitivity stride must be an int >= 1, got {stride!r}"):
            measure_sensitivity(screen, layers, stride=stride)
    bad = (("bn_batches", 0), ("eval_samples", True), ("eval_samples", 2.5), ("sensitivity_bn_batches", 0),
           ("sensitivity_eval_samples", "256"))  # fmt: skip
    for name, value in bad:
        with pytest.raises(rs.RanksearchError, match=rf"proxy setting {name} must be an int >= 1, got {value!r}"):
            ProxySettings(**{name: value})
    assert SensitivityPoint("a", "svd", 0.1, 0.1, 1.0, 0.5).measured  # measured unless said otherwise


def test_score_model_scores_a_model_built_elsewhere_as_score_does(screened):
    screen, _, _, _ = screened
    config = rs.CompressionConfig({"3.0": ("svd", 2), "6.0": ("tucker2", (3, 2))})
    model = screen.evaluator.compress(config.resolve(screen.evaluator.model))
    by_config, by_model = screen.score(config), screen.score_model(model)
    assert (by_model.loss, by_model.metric) == (by_config.loss, by_config.metric)
    # without recalibration the statistics are the dense layers' own: another proxy
    fresh = screen.evaluator.compress(config.resolve(screen.evaluator.model))
    assert screen.score_model(fresh, recalibrate=False).loss != by_config.loss
