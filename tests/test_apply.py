"""apply(): compressed copies of arbitrary models, the factor cache, and errors that name the layer."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import ranksearch as rs
from ranksearch.models import resnet20


class Nested(nn.Module):
    """Layers inside Sequential, ModuleList and ModuleDict containers, and a plain attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(2)])
        self.heads = nn.ModuleDict({"main": nn.Linear(8, 6), "aux-head": nn.Linear(8, 2)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return torch.cat([self.heads["main"](x), self.heads["aux-head"](x)], dim=1)


FULL_RANK = rs.CompressionConfig(
    {
        "stem.0": ("svd", 8),
        "blocks.0.0": ("tucker2", 8),
        "blocks.1.0": ("tt", 24),
        "heads.main": ("svd", 6),
        "heads.aux-head": ("svd", 2),
    }
)


def test_nested_containers_are_replaced_and_the_original_is_untouched():
    model = Nested().double()
    before = copy.deepcopy(model.state_dict())
    small = rs.apply(model, FULL_RANK)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(small(x), model(x), rtol=1e-9, atol=1e-9)  # full ranks are exact
    for name in FULL_RANK:
        assert isinstance(small.get_submodule(name), rs.FactorizedLayer)
        assert type(model.get_submodule(name)) in (nn.Conv2d, nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_result_deepcopies_and_its_state_dict_reloads_into_a_fresh_apply():
    model = Nested()
    config = rs.CompressionConfig({"blocks.0.0": ("cp", 4), "heads.main": ("tt", 2), "stem.0": ("svd", 3)})
    small = rs.apply(model, config)
    twin = copy.deepcopy(small)
    buffer = io.BytesIO()
    torch.save(small.state_dict(), buffer)
    buffer.seek(0)
    fresh = rs.apply(Nested(), config)  # other weights, same architecture
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh(x), small(x))
    torch.testing.assert_close(twin(x), small(x))


def test_device_dtype_and_mode_are_kept():
    model = Nested().to(torch.float64).eval()
    small = rs.apply(model, rs.CompressionConfig({"blocks.0.0": ("tucker2", 4), "heads.main": ("svd", 2)}))
    assert all(p.dtype == torch.float64 for p in small.parameters())
    assert not any(m.training for m in small.modules())


def test_cache_serves_slices_and_never_another_weight():
    model = resnet20()
    cache = rs.FactorCache()
    rs.apply(model, rs.CompressionConfig({"layers.1.1.conv1": ("svd", 8)}), cache=cache)
    assert (cache.stats.misses, cache.stats.hits) == (1, 0)
    rs.apply(model, rs.CompressionConfig({"layers.1.1.conv1": ("svd", 20)}), cache=cache)
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)  # another rank: a slice of the same SVD
    with torch.no_grad():
        model.get_submodule("layers.1.1.conv1").weight.mul_(2)  # in place: same tensor, new contents
    small = rs.apply(model, rs.CompressionConfig({"layers.1.1.conv1": ("svd", 32)}), cache=cache)
    assert cache.stats.misses == 2
    torch.testing.assert_close(
        small.get_submodule("layers.1.1.conv1")[1].weight.flatten(1)
        @ small.get_submodule("layers.1.1.conv1")[0].weight.flatten(1),
        model.get_submodule("layers.1.1.conv1").weight.flatten(1),
        rtol=1e-4,
        atol=1e-4,
    )


def test_identical_weights_share_cache_entries_and_fitted_ranks_are_memoized():
    model = Nested()
    with torch.no_grad():
        model.blocks[1][0].weight.copy_(model.blocks[0][0].weight)
    cache = rs.FactorCache()
    config = rs.CompressionConfig({"blocks.0.0": ("cp", 3), "blocks.1.0": ("cp", 3)})
    rs.apply(model, config, cache=cache)
    rs.apply(model, config, cache=cache)
    assert (cache.stats.misses, cache.stats.hits) == (1, 3)


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"stem.1": ("svd", 2)}, rs.ConfigError, "layer 'stem.1' is a ReLU, not a Conv2d or Linear layer"),
        (
            {"stem.00": ("svd", 2)},
            rs.ConfigError,
            "unknown layer 'stem.00': the model has no such module; did you mean",
        ),
        ({"heads.main": ("cp", 2)}, rs.UnsupportedLayerError, "layer 'heads.main': method 'cp' does not support it"),
        ({"heads.main": ("svd", 7)}, rs.ConfigError, r"layer 'heads.main': svd rank 7 is outside \[1, 6\]"),
        ({"heads.main": ("svd", 0)}, rs.ConfigError, r"layer 'heads.main': svd rank 0 is outside \[1, 6\]"),
        (
            {"blocks.0.0": ("tucker2", (9, 1))},
            rs.ConfigError,
            r"layer 'blocks.0.0': tucker2 rank \(r_out, r_in\)\[0\] 9",
        ),
        ({"blocks.0.0": ("svd", (2, 2))}, rs.ConfigError, "layer 'blocks.0.0': svd rank must be an int, got"),
    ],
)
def test_bad_configs_name_the_layer(config, error, message):
    with pytest.raises(error, match=message):
        rs.apply(Nested(), rs.CompressionConfig(config))


def test_layers_that_cannot_be_compressed_say_why():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Conv2d(4, 4, 3, groups=4))
    model[1].weight = model[0].weight
    with pytest.raises(rs.UnsupportedLayerError, match=r"layer '0' cannot be compressed: weight shared"):
        rs.apply(model, rs.CompressionConfig({"0": ("svd", 2)}))
    with pytest.raises(rs.UnsupportedLayerError, match=r"layer '2': method 'svd' does not support it: grouped.*gain"):
        rs.apply(model, rs.CompressionConfig({"2": ("svd", 2)}))


def test_non_finite_weights_are_refused():
    model = Nested()
    with torch.no_grad():
        model.heads["main"].weight[0, 0] = float("nan")
    with pytest.raises(rs.ConfigError, match=r"layer 'heads\.main': weight has non-finite values"):
        rs.apply(model, rs.CompressionConfig({"heads.main": ("svd", 2)}))


def test_config_must_be_a_compression_config():
    with pytest.raises(rs.RanksearchError, match="config must be a CompressionConfig, got dict"):
        rs.apply(Nested(), {"stem.0": ("svd", 2)})


def test_the_cache_canonicalizes_and_validates_ranks():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    cache = rs.FactorCache()
    first = cache.factors(conv, "tucker2", 8)
    again = cache.factors(conv, "tucker2", (8, 8))
    assert cache.stats.misses == 1 and all(a.data_ptr() == b.data_ptr() for a, b in zip(first, again, strict=True))
    for method, bad in (("svd", 0), ("svd", 1000), ("cp", 0), ("tucker2", (100, 100)), ("tt", (1, 2))):
        with pytest.raises(rs.ConfigError):
            cache.factors(conv, method, bad)
    left, right = cache.factors(conv, "svd", 4)
    assert left.shape == (16, 4) and right.shape == (4, 144) and left._base is not None  # views, not copies
