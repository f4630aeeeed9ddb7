"""SearchSpace's cost grid: each (method, level) rank is the largest whose layer costs at most that level of the
dense layer, rank multiples are kept, methods never cheaper than dense are dropped, no option costs more than
the dense layer; which grid a space gets; bad grid settings."""

from __future__ import annotations

import functools

import pytest
import torch
from _helpers import CASES, make_layer
from torch import nn

import ranksearch as rs
from ranksearch.costs import count
from ranksearch.decompositions import available_methods, get_method
from ranksearch.layers import probe_shape
from ranksearch.space import DEFAULT_COST_FRACTIONS, DEFAULT_FRACTIONS, SearchSpace, _round_rank

ALL_METHODS = ("dense", *available_methods())
TOL = 1e-12  # cost fractions are ratios of exact integer counts


def single_layer(case: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A one-layer model (the layer is called ``"0"``) of a ``_helpers`` case, and its input shape."""
    layer, x = make_layer(case, dtype=torch.float32)
    return nn.Sequential(layer), tuple(x.shape)


def cost_of(module: nn.Module, method: str, rank, shape: tuple[int, ...], kind: str) -> float:
    """The method's cost of ``rank`` as a fraction of the dense layer's, from ``Decomposition.cost``."""
    return getattr(get_method(method).cost(module, rank, shape), kind) / dense_cost(module, tuple(shape), kind)


@functools.cache
def dense_cost(module: nn.Module, shape: tuple[int, ...], kind: str) -> int:
    """The dense layer's cost, counted by running it (``ranksearch.costs.count``)."""
    return getattr(count(nn.Sequential(module), shape), kind)


def path_ranks(module: nn.Module, method: str, multiple: int, steps: int = 4001) -> list:
    """The distinct ranks the grid moves along (one kept-rank fraction for every component), finely sampled."""
    decomposition = get_method(method)
    top = decomposition.max_rank(module)
    ranks = {}
    for i in range(steps):
        f = i / (steps - 1)
        rank = (
            _round_rank(f, top, multiple) if isinstance(top, int) else tuple(_round_rank(f, t, multiple) for t in top)
        )
        ranks.setdefault(decomposition.canonical_rank(module, rank), None)
    return list(ranks)


def check_cost_grid(model: nn.Module, shape: tuple[int, ...] | None, space: SearchSpace) -> tuple[int, int]:
    """Every option of ``space`` on ``model``'s layer ``"0"`` meets its level (or is the smallest rank) and is
    the largest sampled rank that does; returns how many options met their level and how many could not."""
    kind = "macs" if shape is not None else "params"
    module = model.get_submodule("0")
    probe = shape or probe_shape(module)
    choices = space.layers(model, shape)["0"]
    met = unmet = 0
    for method in (m for m in choices.methods if m != "dense"):
        path = path_ranks(module, method, space.rank_multiple)
        path_costs = [cost_of(module, method, r, probe, kind) for r in path]
        for level, rank, stored in zip(choices.fractions, choices.ranks[method], choices.costs[method], strict=True):
            cost = cost_of(module, method, rank, probe, kind)
            assert stored == pytest.approx(cost, abs=TOL) and choices.cost(method, level) == stored
            assert cost < 1.0, (method, level, rank, cost)  # never costlier than the dense layer
            within = [c for c in path_costs if c <= level + TOL]
            if within:  # the largest rank that meets the level
                assert cost <= level + TOL and cost >= max(within) - TOL, (method, level, rank, cost)
                met += 1
            else:  # none does: the smallest rank
                assert rank == path[0], (method, level, rank)
                unmet += 1
    return met, unmet


@pytest.mark.parametrize("case", ["3x3", "rect-stride-bias", "linear-bias", "linear-nobias-3d"])
@pytest.mark.parametrize("macs", [True, False], ids=["macs", "params"])
def test_cost_grid_ranks_are_the_largest_that_meet_their_level(case, macs):
    model, shape = single_layer(case)
    space = SearchSpace(methods=ALL_METHODS, cost_fractions=(0.02, 0.1, 0.3, 0.55, 0.9))
    met, unmet = check_cost_grid(model, shape if macs else None, space)
    assert met > 0 and unmet > 0  # 0.02 is below every method's smallest rank on these small layers


@pytest.mark.parametrize(
    ("layer", "shape"),
    [(nn.Conv2d(24, 32, 3, padding=1), (1, 24, 9, 9)), (nn.Linear(48, 40), (1, 48))],
    ids=["conv", "linear"],
)
def test_cost_grid_ranks_keep_the_rank_multiple(layer, shape):
    model = nn.Sequential(layer)
    space = SearchSpace(methods=ALL_METHODS, cost_fractions=(0.1, 0.3, 0.6), rank_multiple=4)
    assert sum(check_cost_grid(model, shape, space)) > 0
    choices = space.layers(model, shape)["0"]
    for method in (m for m in choices.methods if m != "dense"):
        top = get_method(method).max_rank(layer)
        for rank in choices.ranks[method]:
            ranks, tops = (rank, top) if isinstance(rank, tuple) else ((rank,), (top,))
            for r, t in zip(ranks, tops, strict=True):
                assert r % 4 == 0 or r == t or t < 4, (method, rank, top)


@pytest.mark.parametrize("case", CASES)
def test_no_option_on_the_default_cost_grid_costs_more_than_the_dense_layer(case):
    model, shape = single_layer(case)
    module = model.get_submodule("0")
    for rank_multiple in (1, 4):
        space = SearchSpace(methods=ALL_METHODS, rank_multiple=rank_multiple)
        assert space.grid == "cost" and space.fractions == DEFAULT_COST_FRACTIONS
        for input_shape, kind in ((shape, "macs"), (None, "params")):
            probe = input_shape or probe_shape(module)
            choices = space.layers(model, input_shape)["0"]
            assert choices.grid == "cost" and choices.cost("dense", None) == 1.0
            for method in (m for m in choices.methods if m != "dense"):
                for level, rank in zip(choices.fractions, choices.ranks[method], strict=True):
                    assert cost_of(module, method, rank, probe, kind) < 1.0, (kind, method, level, rank)
                    assert choices.cost(method, level) < 1.0


def test_a_method_never_cheaper_than_dense_is_dropped_for_that_layer():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(8, 8))
    on_ranks = SearchSpace(methods=("dense", "svd", "tt"), grid="rank").layers(model)
    on_costs = SearchSpace(methods=("dense", "svd", "tt")).layers(model)
    assert on_ranks["0"].methods == ("dense", "svd", "tt") and on_costs["0"].methods == ("dense", "svd")
    assert "tt" not in on_costs["0"].ranks and "tt" not in on_costs["0"].costs
    tt_smallest = get_method("tt").canonical_rank(model[0], 1)
    assert cost_of(model[0], "tt", tt_smallest, (1, 3), "params") >= 1.0  # why it is dropped
    assert "2" in on_ranks and "2" not in on_costs  # Linear(2, 2): no method is cheaper, only dense is left
    assert on_costs["4"].methods == ("dense", "svd", "tt")
    with pytest.raises(rs.ConfigError, match=r"no layer to search: .*compressible: 0"):
        SearchSpace(methods=("dense", "tt"), include=("0",)).layers(model)


def test_grid_defaults_to_cost_unless_rank_fractions_are_given():
    assert SearchSpace().grid == "cost" and SearchSpace().fractions == DEFAULT_COST_FRACTIONS
    ranked = SearchSpace(rank_fractions=(0.25, 0.5))
    assert ranked.grid == "rank" and ranked.fractions == (0.25, 0.5)
    assert SearchSpace(grid="rank").fractions == DEFAULT_FRACTIONS  # the rank grid's default fractions
    explicit = SearchSpace(rank_fractions=(0.25,), cost_fractions=(0.2, 0.4), grid="cost")
    assert explicit.grid == "cost" and explicit.fractions == (0.2, 0.4)
    model = nn.Sequential(nn.Linear(16, 16))
    layer = ranked.layers(model, (1, 16))["0"]
    assert layer.grid == "rank" and layer.ranks["svd"] == (4, 8) and layer.costs["svd"] == (0.5, 1.0)
    layer = SearchSpace(cost_fractions=(0.25, 0.5)).layers(model, (1, 16))["0"]
    assert layer.grid == "cost" and layer.ranks["svd"] == (2, 4) and layer.costs["svd"] == (0.25, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid": "log"}, r"grid must be one of cost, rank, got 'log'"),
        ({"grid": ""}, r"grid must be one of cost, rank, got ''"),
        ({"cost_fractions": ()}, r"cost_fractions must not be empty"),
        ({"cost_fractions": (0.5, 1.0)}, r"cost[_ ]fractions must be numbers in \(0, 1\), got 1.0"),
        ({"cost_fractions": (0.0,)}, r"cost[_ ]fractions must be numbers in \(0, 1\), got 0.0"),
        ({"cost_fractions": (-0.1,)}, r"cost[_ ]fractions must be numbers in \(0, 1\), got -0.1"),
        ({"cost_fractions": (True,)}, r"cost[_ ]fractions must be numbers in \(0, 1\), got True"),
        ({"cost_fractions": ("0.5",)}, r"cost[_ ]fractions must be numbers in \(0, 1\), got '0.5'"),
        ({"cost_fractions": (float("nan"),)}, r"cost[_ ]fractions must be numbers in \(0, 1\), got nan"),
        ({"cost_fractions": (0.25, 0.25)}, r"cost_fractions has duplicates: \[0.25, 0.25\]"),
        ({"grid": "cost", "cost_fractions": (1.5,)}, r"cost[_ ]fractions must be numbers in \(0, 1\), got 1.5"),
    ],
)
def test_bad_grid_settings_are_refused(kwargs, message):
    with pytest.raises(rs.ConfigError, match=message):
        SearchSpace(**kwargs)


def test_rank_grid_fraction_times_max_rank_is_not_bumped_by_float_noise():
    # 0.07 * 100 == 7.000000000000001 in floating point, so ceil gives 8; 0.14 * 50 and 0.55 * 100 likewise.
    assert [_round_rank(0.07, 100, 1), _round_rank(0.14, 50, 1), _round_rank(0.55, 100, 1)] == [7, 7, 55]
