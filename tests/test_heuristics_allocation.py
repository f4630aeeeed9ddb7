"""Error-balanced allocation: budgets met per ranksearch.count, tightness, brute-force optimality, equal errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import ranksearch as rs
from ranksearch.heuristics import energy_config, uniform_config, vbmf_config
from ranksearch.heuristics._allocation import error_balanced_allocation, error_balanced_config
from ranksearch.latency import layer_inputs

SHAPE = (1, 3, 16, 16)


class TinyNet(nn.Module):
    """Three 3x3 convs and a Linear head: 221,344 MACs at 1x3x16x16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


class Twice(nn.Module):
    """A conv called twice per forward pass: its MACs count twice, its parameters once."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(torch.relu(self.shared(torch.relu(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def grid_ranks(top: int, grid: int) -> list[int]:
    """The svd ranks at fractions i / grid of ``top``, rounded up (the documented candidate grid)."""
    return sorted({math.ceil(i * top / grid) for i in range(1, grid + 1)})


def with_entry(config: rs.CompressionConfig, name: str, entry: tuple) -> rs.CompressionConfig:
    return rs.CompressionConfig({**dict(config.items()), name: entry})


@pytest.mark.parametrize("budget", [0.2, 0.35, 0.5, 0.8])
def test_macs_budget_is_met_exactly_per_count(model, budget):
    cache = rs.FactorCache()
    dense = rs.count(model, SHAPE)
    allocation = error_balanced_allocation(model, budget, input_shape=SHAPE, cache=cache)
    small = rs.apply(model, allocation.config, cache=cache)
    report = rs.count(small, SHAPE)
    assert report.macs <= budget * dense.macs
    assert report.macs == allocation.total  # the analytic total is exact, not an estimate
    assert allocation.dense_total == dense.macs and allocation.fraction == report.macs / dense.macs
    assert list(allocation.config) == ["conv1", "conv2", "conv3", "fc"]  # every layer recorded, dense ones too
    for name, layer in allocation.layers.items():
        expected = 0.0 if layer.rank is None else cache.relative_error(model.get_submodule(name), "svd", layer.rank)
        assert layer.error == expected
    assert allocation.max_error == max(allocation.errors.values())
    assert error_balanced_config(model, budget, input_shape=SHAPE, cache=cache) == allocation.config


def test_params_budget_is_met_exactly_per_count(model):
    dense = rs.count(model, SHAPE)
    allocation = error_balanced_allocation(model, 0.4, input_shape=SHAPE, cost="params")
    report = rs.count(rs.apply(model, allocation.config), SHAPE)
    assert report.params <= 0.4 * dense.params
    assert report.params == allocation.total and allocation.dense_total == dense.params


def test_layer_called_twice_counts_its_macs_twice():
    torch.manual_seed(0)
    net = Twice()
    for cost in ("macs", "params"):
        allocation = error_balanced_allocation(net, 0.5, input_shape=(2, 3, 8, 8), cost=cost)
        report = rs.count(rs.apply(net, allocation.config), (2, 3, 8, 8))
        assert getattr(report, cost) == allocation.total <= 0.5 * allocation.dense_total


@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_no_layer_can_move_to_a_better_candidate_within_the_budget(model, budget):
    """Tightness: for every layer, the cheapest candidate with a smaller error breaks the budget (per count)."""
    cache = rs.FactorCache()
    dense_macs = rs.count(model, SHAPE).macs
    allocation = error_balanced_allocation(model, budget, input_shape=SHAPE, cache=cache)
    inputs = layer_inputs(model, SHAPE)
    method = rs.get_method("svd")
    for name, layer in allocation.layers.items():
        if layer.rank is None:
            continue  # dense: nothing better
        module = model.get_submodule(name)
        better = [(method.cost(module, r, inputs[name]).macs, r) for r in range(1, method.max_rank(module) + 1)]
        better = [(macs, r) for macs, r in better if cache.relative_error(module, method, r) < layer.error]
        better.append((layer.dense_cost, None))
        _, rank = min(better, key=lambda pair: pair[0])
        moved = with_entry(allocation.config, name, ("dense", None) if rank is None else ("svd", rank))
        assert rs.count(rs.apply(model, moved, cache=cache), SHAPE).macs > budget * dense_macs, name


def test_max_error_is_optimal_against_brute_force(model):
    """Every combination of 3 layers x (4 grid ranks + dense), costs from count on the applied model."""
    cache = rs.FactorCache()
    names = ["conv1", "conv2", "conv3"]
    dense_macs = rs.count(model, SHAPE).macs
    choices = {
        name: [("svd", r) for r in grid_ranks(rs.get_method("svd").max_rank(model.get_submodule(name)), 4)]
        + [("dense", None)]
        for name in names
    }
    combos = []
    for entries in itertools.product(*choices.values()):
        config = rs.CompressionConfig(dict(zip(names, entries, strict=True)))
        macs = rs.count(rs.apply(model, config, cache=cache), SHAPE).macs
        error = max(
            0.0 if rank is None else cache.relative_error(model.get_submodule(name), "svd", rank)
            for name, (_, rank) in config.items()
        )
        combos.append((macs, error))
    assert len(combos) == 125
    for budget in (0.3, 0.45, 0.6, 0.8):
        best = min(error for macs, error in combos if macs <= budget * dense_macs)
        for spend in (True, False):
            allocation = error_balanced_allocation(
                model, budget, input_shape=SHAPE, layers=names, grid=4, cache=cache, spend_leftover=spend
            )
            assert allocation.max_error == best, (budget, spend)
            assert allocation.total <= budget * dense_macs


def test_errors_are_equalized_within_one_grid_step(model):
    """Without the leftover step each compressed layer sits at the threshold: err(r) <= max < err(previous rank).

    So every layer's error is within one grid step of the max error (the gap err(previous) - err(r)).
    """
    cache = rs.FactorCache()
    grid = 8
    allocation = error_balanced_allocation(model, 0.4, input_shape=SHAPE, grid=grid, cache=cache, spend_leftover=False)
    interior = 0
    for name, layer in allocation.layers.items():
        assert layer.error <= allocation.max_error
        if layer.rank is None:
            continue
        module = model.get_submodule(name)
        ranks = grid_ranks(rs.get_method("svd").max_rank(module), grid)
        assert layer.rank in ranks
        position = ranks.index(layer.rank)
        if position > 0:
            interior += 1
            previous = cache.relative_error(module, "svd", ranks[position - 1])
            assert allocation.max_error - layer.error < previous - layer.error, name
    assert interior >= 2  # the check is not vacuous
    spent = error_balanced_allocation(model, 0.4, input_shape=SHAPE, grid=grid, cache=cache)
    assert spent.max_error == allocation.max_error  # the leftover never raises (or lowers) the max error
    assert allocation.total <= spent.total and all(spent.errors[n] <= allocation.errors[n] for n in allocation.errors)


def test_tucker2_ranks_are_proportional_to_the_max_ranks(model):
    cache = rs.FactorCache()
    dense_macs = rs.count(model, SHAPE).macs
    allocation = error_balanced_allocation(model, 0.5, input_shape=SHAPE, method="tucker2", cache=cache)
    assert list(allocation.config) == ["conv1", "conv2", "conv3"]  # the Linear head is not a tucker2 layer
    tucker2 = rs.get_method("tucker2")
    for name, (method, rank) in allocation.config.items():
        if method == "dense":
            continue
        assert method == "tucker2"
        tops = tucker2.max_rank(model.get_submodule(name))
        steps = max(tops)
        assert rank in {tuple(math.ceil(j * t / steps) for t in tops) for j in range(1, steps + 1)}, (name, rank)
    report = rs.count(rs.apply(model, allocation.config, cache=cache), SHAPE)
    assert report.macs == allocation.total <= 0.5 * dense_macs
    assert allocation.config["conv1"][1] != allocation.config["conv3"][1]  # per-layer ranks, not one global rank


def test_layers_restriction_keeps_the_others_dense_and_counts_them(model):
    cache = rs.FactorCache()
    dense_macs = rs.count(model, SHAPE).macs
    allocation = error_balanced_allocation(model, 0.5, input_shape=SHAPE, layers=["conv3", "conv1"], cache=cache)
    assert list(allocation.config) == ["conv1", "conv3"]  # model order
    small = rs.apply(model, allocation.config, cache=cache)
    assert type(small.conv2) is nn.Conv2d and type(small.fc) is nn.Linear
    assert rs.count(small, SHAPE).macs == allocation.total <= 0.5 * dense_macs
    error_balanced_allocation(model, 0.3, input_shape=SHAPE, cache=cache)  # fine with every layer...
    with pytest.raises(rs.RanksearchError, match=r"not achievable .* on 2 layer\(s\): the smallest achievable is 0\.3"):
        error_balanced_allocation(model, 0.3, input_shape=SHAPE, layers=["conv1", "conv3"], cache=cache)


def test_impossible_budget_names_the_smallest_achievable_fraction(model):
    dense_macs = rs.count(model, SHAPE).macs
    rank_one = rs.CompressionConfig({name: ("svd", 1) for name in ("conv1", "conv2", "conv3", "fc")})
    smallest = rs.count(rs.apply(model, rank_one), SHAPE).macs / dense_macs  # rank 1 is the cheapest here
    shown = math.ceil(smallest * 10_000) / 10_000
    with pytest.raises(rs.RanksearchError, match=rf"budget 0\.01 .* the smallest achievable is {shown:.4f}"):
        error_balanced_allocation(model, 0.01, input_shape=SHAPE)
    allocation = error_balanced_allocation(model, shown, input_shape=SHAPE)  # the printed value is achievable
    assert all(rank == 1 for _, rank in allocation.config.values())


def test_budget_one_keeps_every_layer_dense(model):
    allocation = error_balanced_allocation(model, 1.0, input_shape=SHAPE)
    assert dict(allocation.config) == {name: ("dense", None) for name in ("conv1", "conv2", "conv3", "fc")}
    assert allocation.max_error == 0.0 and allocation.total == allocation.dense_total


def test_cached_decompositions_are_reused_across_budgets(model):
    cache = rs.FactorCache()
    error_balanced_allocation(model, 0.5, input_shape=SHAPE, cache=cache)
    misses = cache.stats.misses
    assert misses == 4  # one SVD per layer serves every rank
    error_balanced_allocation(model, 0.3, input_shape=SHAPE, cache=cache)
    assert cache.stats.misses == misses


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(budget=0.0), r"budget must be a fraction .* in \(0, 1\], got 0\.0"),
        (dict(budget=1.5), r"in \(0, 1\], got 1\.5"),
        (dict(budget=float("nan")), r"in \(0, 1\], got nan"),
        (dict(budget=True), r"in \(0, 1\], got True"),
        (dict(budget="0.5"), r"in \(0, 1\], got '0\.5'"),
        (dict(cost="flops"), r"unknown cost 'flops'; expected one of 'macs', 'params'"),
        (dict(method="nope"), r"unknown method 'nope'; available: .*svd"),
        (dict(method="cp"), r"method 'cp' fits one decomposition per rank: pass grid="),
        (dict(grid=0), r"grid must be a positive int"),
        (dict(input_shape=(1, 3, 0, 16)), r"input_shape must be a sequence of positive ints"),
        (dict(layers=["conv9"]), r"unknown layer 'conv9'.*did you mean"),
        (dict(layers="conv1"), r"layers must be a collection of layer names, got the string 'conv1'"),
        (dict(layers=[]), r"layers is empty"),
        (dict(layers=["fc"], method="tucker2"), r"layer 'fc': method 'tucker2' does not support it"),
    ],
)
def test_bad_arguments_are_named(model, kwargs, message):
    arguments = {"budget": 0.5, "input_shape": SHAPE, **kwargs}
    budget = arguments.pop("budget")
    with pytest.raises(rs.RanksearchError, match=message):
        error_balanced_allocation(model, budget, **arguments)


def test_model_without_supported_layers_is_an_error():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with pytest.raises(rs.ConfigError, match="no layer of the model supports method 'tucker2'"):
        error_balanced_allocation(net, 0.5, input_shape=(1, 12), method="tucker2")


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (["conv9"], r"unknown layer 'conv9': the model has no such module; did you mean .*'conv1'"),
        (["fc"], r"layer 'fc': method 'tucker2' does not support it"),
        ("conv1", r"layers must be a collection of layer names, got the string 'conv1'"),
        ([], r"layers is empty"),
    ],
)
def test_every_heuristic_checks_its_layers_alike(model, layers, message):
    makers = (
        lambda: error_balanced_allocation(model, 0.5, input_shape=SHAPE, method="tucker2", layers=layers),
        lambda: uniform_config(model, fraction=0.5, method="tucker2", layers=layers),
        lambda: energy_config(model, 0.9, method="tucker2", layers=layers),
        lambda: vbmf_config(model, method="tucker2", layers=layers),
    )
    for make in makers:
        with pytest.raises(rs.ConfigError, match=message):
            make()


def test_named_layers_are_taken_once_in_model_order(model):
    config = uniform_config(model, fraction=0.5, layers=["fc", "conv1", "fc"])
    assert list(config) == ["conv1", "fc"]
    allocation = error_balanced_allocation(model, 0.9, input_shape=SHAPE, layers=["fc", "conv1", "fc"])
    assert list(allocation.layers) == ["conv1", "fc"]
