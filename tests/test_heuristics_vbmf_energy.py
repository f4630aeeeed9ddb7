"""The spectral baselines: EVBMF ranks (Kim et al. 2016, weakened as in MUSCO) and energy-kept ranks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ranksearch as rs
from ranksearch.errors import ConfigError, RanksearchError, UnsupportedLayerError
from ranksearch.heuristics._energy import energy_config, energy_rank
from ranksearch.heuristics._vbmf import _evbmf, vbmf_config, vbmf_rank, weaken_rank

SHAPES = [(100, 80), (80, 100), (60, 200), (200, 60), (50, 50)]


def low_rank_plus_noise(m: int, n: int, rank: int, sigma: float, seed: int) -> torch.Tensor:
    """``(m, n)``: ``rank`` components with singular values 3 to 6 times the noise edge, plus N(0, sigma^2)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
    edge = sigma * (math.sqrt(m) + math.sqrt(n))  # largest singular value of the noise alone, asymptotically
    signal = torch.linspace(3, 6, rank, dtype=torch.float64) * edge
    return (u * signal) @ v.T + sigma * torch.randn(m, n, generator=g, dtype=torch.float64)


# --- vbmf_rank ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 5, 10])
def test_evbmf_recovers_the_rank_and_the_noise_variance(shape, rank):
    """Exact rank, with sigma^2 estimated or given; the estimate within 15% (EVB's finite-size bias)."""
    for seed in range(3):
        matrix = low_rank_plus_noise(*shape, rank, sigma=0.1, seed=seed)
        assert vbmf_rank(matrix) == rank
        assert vbmf_rank(matrix, sigma2=0.01) == rank
        estimate = _evbmf(torch.linalg.svdvals(matrix).numpy(), shape, None)
        assert estimate.rank == rank and estimate.sigma2 == pytest.approx(0.01, rel=0.15)


@pytest.mark.parametrize("shape", [(100, 80), (60, 200), (50, 50), (40, 30)])
def test_pure_noise_has_evbmf_rank_zero(shape):
    """EVB's threshold x_evb lies above the Marchenko-Pastur edge (1 + sqrt(alpha))^2, so pure noise keeps no
    component, whether sigma^2 is estimated (then close to the truth) or given. The theory is asymptotic;
    these shapes and seeds are large enough."""
    for seed in range(5):
        matrix = 0.3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert vbmf_rank(matrix) == 0
        assert vbmf_rank(matrix, sigma2=0.09) == 0
        assert _evbmf(torch.linalg.svdvals(matrix).numpy(), shape, None).sigma2 == pytest.approx(0.09, rel=0.15)


def test_an_all_zero_or_noise_free_matrix():
    assert vbmf_rank(torch.zeros(20, 30)) == 0
    g = torch.Generator().manual_seed(0)
    exact = torch.randn(40, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 60, generator=g, dtype=torch.float64)
    assert vbmf_rank(exact) == 4  # round-off is the only "noise"


def test_estimated_noise_caps_the_rank_as_the_paper_says():
    """With sigma^2 estimated, at most ceil(L / (1 + alpha)) - 1 = 24 components of a 50x50 matrix; given, all 30."""
    matrix = low_rank_plus_noise(50, 50, 30, sigma=0.1, seed=0)
    assert vbmf_rank(matrix) <= 24
    assert vbmf_rank(matrix, sigma2=0.01) == 30


def test_float32_input_gives_the_same_rank():
    matrix = low_rank_plus_noise(100, 80, 5, sigma=0.1, seed=1)
    assert vbmf_rank(matrix.float()) == vbmf_rank(matrix) == 5


def test_weakening_moves_the_rank_towards_full_as_musco():
    """r = floor(r_evbmf + w (R - r_evbmf)); MUSCO's own factor is 1 - w."""
    matrix = low_rank_plus_noise(100, 80, 5, sigma=0.1, seed=0)  # r_evbmf = 5, R = 80
    assert vbmf_rank(matrix, weakening=0.0) == 5
    assert vbmf_rank(matrix, weakening=1.0) == 80
    assert vbmf_rank(matrix, weakening=0.5) == 42  # floor(5 + 37.5)
    assert vbmf_rank(matrix, weakening=0.25) == 23  # floor(5 + 18.75)
    assert vbmf_rank(matrix.T, weakening=0.5) == 42  # the full rank is min(m, n) either way
    assert weaken_rank(0, 100, 0.29) == 29  # not 28 from 0.29 * 100 = 28.999999999999996
    assert weaken_rank(0, 100, 0.0) == 0
    with pytest.raises(ConfigError, match=r"rank must be in \[0, full_rank=10\], got 11"):
        weaken_rank(11, 10, 0.5)


@pytest.mark.parametrize("weakening", [-0.1, 1.5, math.nan, True, "0.5"])
def test_a_bad_weakening_is_a_clear_error(weakening):
    with pytest.raises(ConfigError, match=r"weakening must be a number in \[0, 1\]"):
        vbmf_rank(torch.randn(10, 10), weakening=weakening)


@pytest.mark.parametrize("sigma2", [0.0, -1.0, math.nan, math.inf])
def test_a_bad_sigma2_is_a_clear_error(sigma2):
    with pytest.raises(ConfigError, match="sigma2 must be a finite number > 0"):
        vbmf_rank(torch.randn(10, 10), sigma2=sigma2)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (torch.randn(10), "2-D tensor, got shape \\(10,\\)"),
        (torch.randn(3, 4, 5), "2-D tensor, got shape \\(3, 4, 5\\)"),
        (torch.randn(0, 5), "non-empty"),
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), "finite"),
        ([[1.0, 2.0]], "torch.Tensor, got list"),
    ],
)
def test_a_bad_matrix_is_a_clear_error(matrix, message):
    with pytest.raises(RanksearchError, match=message):
        vbmf_rank(matrix)


# --- energy_rank -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("energy", "rank"), [(9 / 14, 1), (0.5, 1), (0.65, 2), (13 / 14, 2), (0.93, 3), (1.0, 3)])
def test_energy_rank_on_a_hand_made_spectrum(energy, rank):
    """s = [3, 2, 1]: cumulative energy 9, 13, 14 out of 14."""
    assert energy_rank(torch.tensor([3.0, 2.0, 1.0]), energy) == rank
    assert energy_rank(torch.tensor([1.0, 3.0, 2.0]), energy) == rank  # sorted first


def test_energy_rank_is_at_least_one():
    assert energy_rank(torch.zeros(4), 0.5) == 1
    assert energy_rank(torch.tensor([5.0, 0.0]), 1.0) == 1


@pytest.mark.parametrize("energy", [0, 0.0, 1.2, -0.5, math.nan, None])
def test_a_bad_energy_is_a_clear_error(energy):
    with pytest.raises(ConfigError, match=r"energy must be a number in \(0, 1\]"):
        energy_rank(torch.tensor([3.0, 2.0, 1.0]), energy)


@pytest.mark.parametrize(
    "values", [torch.ones(2, 2), torch.ones(0), torch.tensor([1.0, -1.0]), torch.tensor([math.inf])]
)
def test_bad_singular_values_are_a_clear_error(values):
    with pytest.raises(ConfigError, match="singular_values must be"):
        energy_rank(values, 0.9)


# --- configs on a model ------------------------------------------------------------------------------

TUCKER = {"conv1": (6, 3), "conv2": (8, 5)}  # (r_out, r_in) of the Tucker-2 kernels
SVD = {"conv1": 6, "conv2": 8, "conv3": 6, "fc": 4}  # rank of each folded weight
NOISE = 1e-4  # entry-wise noise std; the signal has unit Frobenius norm


class Net(nn.Module):
    """Two 3x3 convs with Tucker-2 kernels, a 1x1 conv and a Linear of known SVD rank, and a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 24, 1)
        self.fc = nn.Linear(24, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(self.conv3(x).mean(dim=(2, 3)))


def orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=g))[0]


def tucker_kernel(out_ch: int, in_ch: int, ranks: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    core = torch.randn(*ranks, 3, 3, generator=g)
    kernel = torch.einsum("abhw,oa,ib->oihw", core, orthonormal(out_ch, ranks[0], g), orthonormal(in_ch, ranks[1], g))
    return kernel / kernel.norm()


def low_rank_weight(shape: tuple[int, ...], rank: int, g: torch.Generator) -> torch.Tensor:
    matrix = torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, math.prod(shape[1:]), generator=g)
    return (matrix / matrix.norm()).reshape(shape)


@pytest.fixture(scope="module")
def net() -> Net:
    g = torch.Generator().manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.conv1.weight.copy_(tucker_kernel(16, 8, TUCKER["conv1"], g))
        model.conv2.weight.copy_(tucker_kernel(32, 16, TUCKER["conv2"], g))
        model.conv3.weight.copy_(low_rank_weight((24, 32, 1, 1), SVD["conv3"], g))
        model.fc.weight.copy_(low_rank_weight((20, 24), SVD["fc"], g))
        for layer in (model.conv1, model.conv2, model.conv3, model.fc):
            layer.weight.add_(NOISE * torch.randn(layer.weight.shape, generator=g))
    return model.eval()


def expected(method: str, names=None) -> rs.CompressionConfig:
    ranks = TUCKER if method == "tucker2" else SVD
    return rs.CompressionConfig({n: (method, r) for n, r in ranks.items() if names is None or n in names})


@pytest.mark.parametrize("method", ["tucker2", "svd"])
def test_configs_find_the_constructed_ranks(net, method):
    """Tucker-2 gives (r_out, r_in) and skips the 1x1 conv and the Linear; svd covers all four layers."""
    assert vbmf_config(net, method=method) == expected(method)
    # noise: < 5e-5 of each spectrum's energy; the weakest signal component: > 2.5e-2 (1 - 0.999 = 1e-3 between)
    assert energy_config(net, 0.999, method=method) == expected(method)


@pytest.mark.parametrize("method", ["tucker2", "svd"])
def test_the_configs_apply_and_keep_the_output_shape(net, method):
    x = torch.randn(2, 8, 6, 6)
    for cfg in (vbmf_config(net, method=method, weakening=0.3), energy_config(net, 0.9, method=method)):
        assert rs.apply(net, cfg)(x).shape == net(x).shape == (2, 20)


def test_weakened_configs_stay_within_the_maximum_rank(net):
    layers = rs.compressible_layers(net)
    full = vbmf_config(net, method="tucker2", weakening=1.0)
    assert full == rs.CompressionConfig({n: ("tucker2", layers[n].max_ranks["tucker2"]) for n in TUCKER})
    half = vbmf_config(net, method="tucker2", weakening=0.5)
    r_out, r_in = TUCKER["conv2"]
    assert half["conv2"] == ("tucker2", ((r_out + 32) // 2, (r_in + 16) // 2))


def test_layers_restricts_the_config(net):
    assert vbmf_config(net, method="svd", layers=["fc", "conv2"]) == expected("svd", {"fc", "conv2"})
    assert list(energy_config(net, 0.999, layers=["fc", "conv2"])) == ["conv2", "fc"]  # model order
    assert energy_config(net, 0.999, method="tucker2", layers=["conv2"]) == expected("tucker2", {"conv2"})
    with pytest.raises(ConfigError, match="layers is empty"):
        vbmf_config(net, layers=[])


def test_a_pure_noise_layer_gets_rank_one():
    """EVBMF finds no component in a pure-noise weight; a layer cannot have rank 0, so the config uses 1."""
    model = nn.Sequential(nn.Linear(60, 80))
    with torch.no_grad():
        model[0].weight.normal_(generator=torch.Generator().manual_seed(0))
    assert vbmf_rank(model[0].weight) == 0
    assert vbmf_config(model, method="svd") == rs.CompressionConfig({"0": ("svd", 1)})


@pytest.mark.parametrize("method", ["cp", "tt", "bogus"])
def test_an_unsupported_method_lists_the_supported_ones(net, method):
    for make in (lambda: vbmf_config(net, method=method), lambda: energy_config(net, 0.9, method=method)):
        with pytest.raises(ConfigError, match=rf"method '{method}' is not supported.*supported: svd, tucker2"):
            make()


@pytest.mark.parametrize(
    ("layers", "error", "message"),
    [
        (["fc"], UnsupportedLayerError, r"layer 'fc': method 'tucker2' does not support it: Linear is not supported"),
        (["conv3"], UnsupportedLayerError, r"layer 'conv3': method 'tucker2' does not support it: 1x1 kernel"),
        (["bn"], ConfigError, r"layer 'bn' is a BatchNorm2d, not a Conv2d or Linear layer"),
        (["conv9"], ConfigError, r"unknown layer 'conv9'"),
        ("conv1", ConfigError, r"layers must be a collection of layer names, got the string 'conv1'"),
    ],
)
def test_a_named_layer_that_cannot_be_used_is_a_clear_error(net, layers, error, message):
    for make in (
        lambda: vbmf_config(net, layers=layers),
        lambda: energy_config(net, 0.9, method="tucker2", layers=layers),
    ):
        with pytest.raises(error, match=message):
            make()


def test_a_model_without_any_supporting_layer_is_a_clear_error():
    with pytest.raises(ConfigError, match="no layer of the model supports method 'tucker2'"):
        vbmf_config(nn.Sequential(nn.Linear(4, 4)))


def test_a_non_finite_weight_names_the_layer():
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
    with pytest.raises(ConfigError, match=r"layer '0': weight has non-finite values"):
        energy_config(model, 0.9)


def test_bad_arguments_of_the_configs_are_clear_errors(net):
    with pytest.raises(ConfigError, match="weakening must be"):
        vbmf_config(net, weakening=2.0)
    with pytest.raises(ConfigError, match="energy must be"):
        energy_config(net, 0.0)
