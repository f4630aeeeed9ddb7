"""SearchSpace: which layers are searched, the rank grids, and bad settings."""

from __future__ import annotations

import re

import pytest
from torch import nn

import ranksearch as rs
from ranksearch.decompositions import available_methods
from ranksearch.models import resnet20
from ranksearch.space import SearchSpace, _round_rank


def test_rank_grid_is_fractions_of_max_rank_rounded_to_the_multiple():
    assert [_round_rank(f, 64, 1) for f in (0.1, 0.25, 1.0)] == [7, 16, 64]
    assert [_round_rank(f, 64, 8) for f in (0.1, 0.25, 0.3)] == [8, 16, 16]
    assert _round_rank(0.5, 6, 8) == 3  # a layer smaller than the multiple is not rounded up past its max
    space = SearchSpace(methods=("dense", "svd", "tucker2"), rank_fractions=(0.25, 0.5), rank_multiple=8)
    layers = space.layers(resnet20())
    conv = layers["layers.2.0.conv2"]  # 64 x 64 x 3 x 3
    assert conv.methods == ("dense", "svd", "tucker2")
    assert conv.ranks == {"svd": (16, 32), "tucker2": ((16, 16), (32, 32))}
    assert conv.rank("tucker2", 0.5) == (32, 32) and conv.rank("dense", 0.5) is None
    assert layers["fc"].methods == ("dense", "svd")  # tucker2 does not apply to Linear


def test_include_exclude_and_overrides():
    space = SearchSpace(
        include=("layers.2.*", "fc"), exclude=("*.conv1",), overrides={"fc": ("dense",), "layers.2.2.*": ("svd",)}
    )
    layers = space.layers(resnet20())
    assert set(layers) == {"layers.2.0.conv2", "layers.2.1.conv2", "layers.2.2.conv2"}  # fc can only stay dense
    assert layers["layers.2.2.conv2"].methods == ("svd",)


def test_uniform_picks_use_the_first_allowed_method_per_layer():
    space = SearchSpace(rank_fractions=(0.25, 0.5))
    layers = space.layers(resnet20())
    picks = space.uniform_picks(layers, ("tucker2", "svd"), 0.3)
    assert picks["layers.0.0.conv1"] == ("tucker2", 0.25) and picks["fc"] == ("svd", 0.25)
    config = SearchSpace.to_config(layers, picks)
    assert config["layers.0.0.conv1"] == ("tucker2", (4, 4)) and config["fc"] == ("svd", 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"methods": ("svd", "qr")},
            f"unknown method 'qr' in the search space; available: dense, {re.escape(', '.join(available_methods()))}",
        ),
        ({"methods": ()}, "needs at least one method"),
        ({"rank_fractions": ()}, "rank_fractions must not be empty"),
        ({"rank_fractions": (0.5, 1.5)}, r"rank fractions must be numbers in \(0, 1\], got 1.5"),
        ({"rank_fractions": (0.0,)}, r"rank fractions must be numbers in \(0, 1\], got 0.0"),
        ({"rank_fractions": (0.5, 0.5)}, "rank_fractions has duplicates"),
        ({"rank_multiple": 0}, "rank_multiple must be an int >= 1, got 0"),
        ({"overrides": {"fc": ("lowrank",)}}, "unknown method 'lowrank'"),
    ],
)
def test_bad_spaces_are_refused(kwargs, message):
    with pytest.raises(rs.ConfigError, match=message):
        SearchSpace(**kwargs)


def test_a_model_with_nothing_to_search_is_refused():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten())
    with pytest.raises(rs.ConfigError, match=r"no layer to search: .*compressible: none"):
        SearchSpace().layers(model)
    with pytest.raises(rs.ConfigError, match=r"no layer to search: .*compressible: fc"):
        SearchSpace(exclude=("fc",)).layers(nn.ModuleDict({"fc": nn.Linear(4, 4)}))
