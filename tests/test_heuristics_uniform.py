"""The uniform baseline (by kept-rank fraction or by a MACs/params target), snapping a config onto the
search grid, and baselines as warm-start trials."""

from __future__ import annotations

import pytest

import ranksearch as rs
import ranksearch.heuristics
from ranksearch.evaluator import EvaluatorSettings
from ranksearch.heuristics import uniform_config
from ranksearch.models import build_model
from ranksearch.record import param_name
from ranksearch.space import SearchSpace
from ranksearch.study import RankSearch

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet20")


def test_a_kept_rank_fraction_gives_every_layer_the_same_share(resnet):
    cfg = uniform_config(resnet, fraction=0.25, method="svd")
    layers = rs.compressible_layers(resnet)
    assert set(cfg) == set(layers)
    for name, (method, rank) in cfg.items():
        top = layers[name].max_ranks["svd"]
        assert method == "svd" and rank == max(1, -(-top // 4))  # ceil(top / 4)


@pytest.mark.parametrize("method", ["svd", "tucker2"])
@pytest.mark.parametrize("target", [0.25, 0.5, 0.75])
def test_a_macs_target_is_met_from_below_and_tightly(resnet, method, target):
    dense = rs.count(resnet, SHAPE).macs
    cfg = uniform_config(resnet, cost_fraction=target, input_shape=SHAPE, method=method)
    share = rs.count(rs.apply(resnet, cfg), SHAPE).macs / dense
    assert share <= target  # exact count of the applied model
    assert share > target - 0.08  # tight up to the rank rounding of the smallest layers (stated tolerance)


def test_a_params_target(resnet):
    cfg = uniform_config(resnet, cost_fraction=0.5, cost="params", input_shape=SHAPE)
    assert rs.count(rs.apply(resnet, cfg), SHAPE).params <= 0.5 * rs.count(resnet, SHAPE).params


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of fraction"),
        ({"fraction": 0.5, "cost_fraction": 0.5}, "exactly one of fraction"),
        ({"fraction": 0}, r"fraction must be a number in \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction must be a number in \(0, 1\]"),
        ({"cost_fraction": 0.5}, "needs the model's input_shape"),
        ({"cost_fraction": 0.5, "input_shape": SHAPE, "cost": "flops"}, "cost must be 'macs' or 'params'"),
        ({"cost_fraction": 0.001, "input_shape": SHAPE}, r"cannot reach macs 0.001 of dense; the least is 0\.\d+"),
        ({"fraction": 0.5, "method": "svd9"}, "unknown method 'svd9'"),
        ({"fraction": 0.5, "layers": ["nope"]}, "unknown layer 'nope': the model has no such module"),
        (
            {"fraction": 0.5, "method": "cp", "layers": ["fc"]},
            "layer 'fc': method 'cp' does not support it",
        ),
    ],
)
def test_bad_uniform_requests(resnet, kwargs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        uniform_config(resnet, **kwargs)


def test_snap_takes_the_nearest_grid_rank_and_keeps_unknown_layers_dense(tiny_task):
    model = tiny_task[0]
    space = SearchSpace(methods=("dense", "svd", "tucker2"), rank_fractions=(0.25, 0.5, 1.0))
    layers = space.layers(model)
    name = next(iter(layers))
    grid = layers[name].ranks["tucker2"]
    config = rs.CompressionConfig({name: ("tucker2", grid[1])})
    picks = space.snap(layers, config)
    assert picks[name] == ("tucker2", 0.5)
    top = layers[name].ranks["svd"][-1]
    assert space.snap(layers, rs.CompressionConfig({name: ("svd", top)}))[name] == ("svd", 1.0)
    assert all(picks[n] == ("dense", None) for n in layers if n != name)
    assert space.snap(layers, rs.CompressionConfig({name: ("cp", 3)}))[name] == ("dense", None)  # cp not allowed


def test_heuristic_configs_are_enqueued_as_warm_starts(tiny_task):
    model, train_loader, val_loader = tiny_task
    space = SearchSpace(methods=("dense", "svd", "tucker2"), rank_fractions=(0.25, 0.5))
    baseline = uniform_config(model, fraction=0.5, method="svd", layers=list(space.layers(model)))
    search = RankSearch(
        model, train_loader, val_loader, storage=None, space=space, warm_start=(), strategy="per-layer",
        evaluator=EvaluatorSettings(finetune_steps=1, bn_batches=1, eval_batches=1), warm_start_configs=[baseline],
    )  # fmt: skip
    search.optimize(2, show_progress=False)
    second = search.completed_trials()[1]  # after the dense model
    assert all(second.params[param_name(n)] == "svd" for n in space.layers(model))
    assert all(second.params[param_name(n, "svd")] == 0.5 for n in space.layers(model))


def test_heuristic_configs_meet_their_budgets(resnet):
    found = rs.heuristics.heuristic_configs(resnet, SHAPE, (0.25, 0.5))
    names = [(name, budget) for name, budget, _ in found]
    assert (
        ("uniform tucker2", 0.25) in names and ("error-balanced svd", 0.5) in names and ("vbmf tucker2", None) in names
    )
    dense = rs.count(resnet, SHAPE).macs
    for name, budget, config in found:
        if budget is not None:
            assert rs.count(rs.apply(resnet, config), SHAPE).macs <= budget * dense, name


def test_a_study_file_can_warm_start_with_the_baselines(tmp_path, capsys):
    from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)

    from ranksearch.cli import main

    path = write_study(tmp_path)
    path.write_text(
        path.read_text().replace("n_trials = 4", "n_trials = 6\nwarm_start = []\nwarm_start_heuristics = [0.5]")
    )
    assert main(["run", str(path), "--no-report"]) == 0
    from ranksearch.study import load_results

    results = load_results(f"sqlite:///{tmp_path}/tiny.db", "tiny")
    # after the dense model, the first baseline that fits this tiny model: Tucker-2 cannot reach 50% (its Linear
    # layers hold most MACs), so uniform SVD at 50% of the MACs, snapped to the grid
    second = results.trials.iloc[1]
    assert second["methods"] == "svd:5" and second["macs_ratio"] == pytest.approx(0.5, abs=0.05)


def test_layers_the_forward_never_calls_stay_dense_and_out_of_the_search():
    """A Linear whose weight is read directly (as Swin's attention reads qkv.weight) and a train-only head: no
    MACs to save. uniform_config warns and leaves them dense; the search space leaves them out."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ReadsWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.called = nn.Linear(32, 32)
            self.read = nn.Linear(32, 32)  # used through F.linear on its weight, never called
            self.aux = nn.Linear(32, 10)  # train mode only

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.linear(self.called(x), self.read.weight, self.read.bias)
            return self.aux(y) if self.training else y

    model = ReadsWeights().eval()
    with pytest.warns(UserWarning, match=r"leaves 2 layer\(s\) dense: the forward pass never calls them.*read, aux"):
        config = uniform_config(model, cost_fraction=0.5, input_shape=(1, 32), method="svd")
    assert set(config) == {"called"}
    assert set(SearchSpace().layers(model, (1, 32))) == {"called"}
    assert set(SearchSpace().layers(model)) == {"called", "read", "aux"}  # without a forward pass: all
