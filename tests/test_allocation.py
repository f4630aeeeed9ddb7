"""The allocator: per-layer choices for a budget from hand-made sensitivity curves on real layer choices. Budgets
are met, the result is compared with an exhaustive optimum, more budget never costs penalty, knobs steer it."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from torch import nn

import ranksearch as rs
from ranksearch.allocation import Allocator, Knobs, option_costs
from ranksearch.costs import count
from ranksearch.models import small_cnn
from ranksearch.sensitivity import Sensitivity, SensitivityPoint
from ranksearch.space import SearchSpace

DENSE_LOSS = 0.5
LINEAR_SHAPE = (1, 16)
CNN_SHAPE = (1, 1, 8, 8)
EIGHTHS = tuple(k / 8 for k in range(1, 8))  # SVD of a 16x16 Linear: rank k costs exactly k/8 of dense


def tie_bound(layers) -> float:
    """The most the allocator's tie-break (a tiny penalty per unit of cost saved) adds to a config."""
    return len(layers) * 1e-4 * DENSE_LOSS


def three_linears() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))


def curves(layers, penalty) -> tuple[Sensitivity, dict]:
    """A hand-made Sensitivity whose loss increase is ``penalty(layer, method, fraction, cost)``, and the
    penalty of every option (dense included, 0) by ``(layer, method, fraction)``."""
    points, table = [], {}
    for name, layer in layers.items():
        table[(name, "dense", None)] = 0.0
        for method in (m for m in layer.methods if m != "dense"):
            for fraction in layer.fractions:
                cost = layer.cost(method, fraction)
                table[(name, method, fraction)] = value = penalty(name, method, fraction, cost)
                points.append(SensitivityPoint(name, method, fraction, cost, DENSE_LOSS + value, 0.9))
    return Sensitivity(DENSE_LOSS, 0.95, points), table


def summed(table, picks) -> float:
    return sum(table[(name, *pick)] for name, pick in picks.items())


def exhaustive_optimum(costs, table, budget: float) -> float:
    """The least summed penalty of any config (every layer, every option) whose cost is within ``budget``."""
    names = list(costs.options)
    limit = budget * costs.dense_total - costs.fixed
    best = math.inf
    for combo in itertools.product(*(costs.options[n].items() for n in names)):
        if sum(cost for _, cost in combo) <= limit:
            best = min(best, sum(table[(n, *pick)] for n, (pick, _) in zip(names, combo, strict=True)))
    return best


def cnn_instance(seed: int):
    """Three layers of a small CNN, SVD and Tucker-2 at three cost levels, and seeded curves that fall with the
    cost (each (layer, method) its own scale and shape; not convex in general)."""
    model = small_cnn(in_channels=1, num_classes=10, width=4)
    space = SearchSpace(
        methods=("dense", "svd", "tucker2"), cost_fractions=(0.1, 0.25, 0.5), include=("3.0", "6.0", "10")
    )
    layers = space.layers(model, CNN_SHAPE)
    rng = random.Random(seed)
    shapes = {(n, m): (rng.uniform(0.05, 1.0), rng.choice((0.3, 1.0, 3.0))) for n in layers for m in ("svd", "tucker2")}
    sensitivity, table = curves(layers, lambda n, m, f, c: shapes[(n, m)][0] * (1 - c) ** shapes[(n, m)][1])
    return model, layers, table, Allocator(layers, sensitivity, option_costs(model, layers, CNN_SHAPE))


def test_a_convex_instance_gets_the_exhaustive_optimum():
    model = three_linears()
    layers = SearchSpace(methods=("dense", "svd"), cost_fractions=EIGHTHS).layers(model, LINEAR_SHAPE)
    assert all(layer.ranks["svd"] == tuple(range(1, 8)) for layer in layers.values())
    scale = {"0": 1.0, "2": 0.37, "4": 0.13}  # penalty a * (8 - rank)^2 / 49: convex, 0 at dense (rank 8)
    sensitivity, table = curves(layers, lambda n, m, f, c: scale[n] * (8 - round(8 * c)) ** 2 / 49)
    costs = option_costs(model, layers, LINEAR_SHAPE)
    allocator = Allocator(layers, sensitivity, costs)
    assert costs.fixed == 0 and costs.dense_total == 3 * 256 and allocator.cheapest() == pytest.approx(1 / 8)
    for budget in [k / 24 for k in range(3, 25)] + [0.2, 0.43, 0.61, 0.77, 0.9]:
        picks = allocator.picks(Knobs(budget))
        assert allocator.cost(picks) <= budget + 1e-12
        assert summed(table, picks) == pytest.approx(exhaustive_optimum(costs, table, budget), abs=1e-9), budget


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocations_meet_the_budget_within_the_lagrangian_bound_of_the_optimum(seed):
    _, layers, table, allocator = cnn_instance(seed)
    # Lagrangian relaxation is off its LP optimum in one layer only, so its feasible solution is within one
    # layer's penalty range of the optimum (the greedy top-up only lowers it); plus the tie-break's share.
    tolerance = max(max(v for k, v in table.items() if k[0] == name) for name in layers) + tie_bound(layers)
    assert allocator.cheapest() < 0.3
    for budget in [0.3 + 0.05 * k for k in range(15)]:
        picks = allocator.picks(Knobs(budget))
        assert allocator.cost(picks) <= budget + 1e-12
        optimum = exhaustive_optimum(allocator.costs, table, budget)
        assert optimum - 1e-12 <= summed(table, picks) <= optimum + tolerance, budget


@pytest.mark.parametrize("seed", [0, 3])
def test_a_larger_budget_never_yields_a_larger_penalty(seed):
    _, layers, table, allocator = cnn_instance(seed)
    penalties = [summed(table, allocator.picks(Knobs(b / 100))) for b in range(5, 101)]
    for smaller, larger in itertools.pairwise(penalties):
        assert larger <= smaller + tie_bound(layers)
    assert penalties[-1] == 0.0  # at the dense model's cost every layer stays dense


def test_picks_cost_what_the_compressed_model_costs():
    model, layers, _, allocator = cnn_instance(0)
    dense = count(model, CNN_SHAPE)
    for budget in (0.2, 0.4, 0.7):
        picks = allocator.picks(Knobs(budget))
        compressed = count(rs.apply(model, allocator.config(Knobs(budget))), CNN_SHAPE)
        assert allocator.cost(picks) == pytest.approx(compressed.macs / dense.macs, abs=1e-12)
    params = option_costs(model, layers, CNN_SHAPE, "params")
    assert params.kind == "params" and params.dense_total == dense.params
    assert params.fixed == dense.params - sum(own[("dense", None)] for own in params.options.values())


def test_preferences_steer_the_method_choice():
    model = small_cnn(in_channels=1, num_classes=10, width=4)
    space = SearchSpace(methods=("dense", "svd", "tucker2"), cost_fractions=(0.1, 0.25, 0.5), include=("*.0",))
    layers = space.layers(model, CNN_SHAPE)
    sensitivity, _ = curves(layers, lambda n, m, f, c: (1 - c) ** 2)  # both methods equally harmful per cost
    allocator = Allocator(layers, sensitivity, option_costs(model, layers, CNN_SHAPE))
    budget = (allocator.cheapest() + 1) / 2  # the convs are a small part of the model's MACs
    for favoured, other in (("svd", "tucker2"), ("tucker2", "svd")):
        knobs = Knobs(budget, preferences={favoured: -1.0, other: 1.0})
        methods = {method for method, _ in allocator.picks(knobs).values()}
        assert favoured in methods and other not in methods, (favoured, methods)


def test_depth_tilt_spends_on_late_or_early_layers():
    model = three_linears()
    layers = SearchSpace(methods=("dense", "svd"), cost_fractions=EIGHTHS).layers(model, LINEAR_SHAPE)
    sensitivity, _ = curves(layers, lambda n, m, f, c: (1 - c) ** 2)  # identical layers, identical curves
    allocator = Allocator(layers, sensitivity, option_costs(model, layers, LINEAR_SHAPE))
    own = allocator.costs.options
    for tilt in (1.0, -1.0):
        picks = allocator.picks(Knobs(0.5, depth_tilt=tilt))
        spent = [own[name][picks[name]] for name in ("0", "2", "4")]
        assert spent == sorted(spent, reverse=tilt < 0) and spent[0] != spent[-1], (tilt, spent)


def test_a_budget_below_the_cheapest_gets_the_cheapest_choices():
    _, layers, _, allocator = cnn_instance(1)
    own = allocator.costs.options
    cheapest = {name: min(own[name].values()) for name in layers}
    floor = (allocator.costs.fixed + sum(cheapest.values())) / allocator.costs.dense_total
    assert allocator.cheapest() == pytest.approx(floor, abs=1e-12)
    for budget in (0.0, floor / 2, floor * 0.999):
        picks = allocator.picks(Knobs(budget, preferences={"svd": 1.0}, depth_tilt=0.5))
        assert {name: own[name][pick] for name, pick in picks.items()} == cheapest
        assert allocator.cost(picks) == pytest.approx(floor, abs=1e-12)


def test_bad_allocation_inputs_are_refused():
    model = three_linears()
    layers = SearchSpace(methods=("svd",), cost_fractions=(0.25, 0.5)).layers(model, LINEAR_SHAPE)
    with pytest.raises(rs.RanksearchError, match="allocation cost must be one of macs, params, got 'flops'"):
        option_costs(model, layers, LINEAR_SHAPE, "flops")
    sensitivity, _ = curves({n: layer for n, layer in layers.items() if n != "2"}, lambda n, m, f, c: 1 - c)
    with pytest.raises(rs.RanksearchError, match="layer '2' has no measured option to allocate from"):
        Allocator(layers, sensitivity, option_costs(model, layers, LINEAR_SHAPE))


def test_the_top_up_finds_an_exchange_between_two_layers():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    layers = SearchSpace(methods=("dense", "svd"), cost_fractions=(0.125, 0.25, 0.375, 0.5)).layers(model, LINEAR_SHAPE)
    table = {"0": (0.97, 0.92, 0.79, 0.78), "2": (0.53, 0.43, 0.16, 0.0)}  # layer 0 is sensitive at every rank
    sensitivity, penalties = curves(layers, lambda n, m, f, c: table[n][int(8 * f) - 1])
    allocator = Allocator(layers, sensitivity, option_costs(model, layers, LINEAR_SHAPE))
    picks = allocator.picks(Knobs(11 / 16))  # room for layer 0 dense and layer 2 at 3/8, not at 1/2
    assert exhaustive_optimum(allocator.costs, penalties, 11 / 16) == pytest.approx(0.16)
    assert summed(penalties, picks) == pytest.approx(0.16), picks
