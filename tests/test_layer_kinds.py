"""The layer kinds real models hold beyond ungrouped Conv2d and Linear: Conv1d, grouped and depthwise
convolutions, Hugging Face's Conv1D (GPT-2's transposed Linear), Bilinear; and the dense weight a
factorized layer answers for code that reads ``layer.weight``.

Every (registered method, layer kind) pair is read from the registry. Tolerances: float64 relative
error 1e-10 (rounding), float32 1e-4.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _helpers import make_layer, method_case_pairs, mid_rank, statistics_if_needed
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ranksearch as rs
from ranksearch.decompositions import available_methods, get_method, is_hf_conv1d, relative_error


class Conv1D(nn.Module):
    """A stand-in with the semantics of ``transformers.pytorch_utils.Conv1D``: ``x @ W + b``, W is (nx, nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.nf)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(shape)


KINDS = {  # name -> (layer factory, input shape)
    "conv1d": (lambda: nn.Conv1d(6, 8, 3, padding=1, bias=False), (2, 6, 11)),
    "conv1d-stride-dilated-reflect": (
        lambda: nn.Conv1d(5, 7, 4, stride=2, padding=3, dilation=2, padding_mode="reflect"),
        (2, 5, 17),
    ),
    "conv1d-same-even": (lambda: nn.Conv1d(4, 6, 4, padding="same"), (3, 4, 9)),
    "grouped-conv2d": (lambda: nn.Conv2d(8, 12, 3, padding=1, groups=4), (2, 8, 7, 9)),
    "grouped-conv1d-stride": (lambda: nn.Conv1d(8, 8, 3, stride=2, groups=2, bias=False), (2, 8, 13)),
    "depthwise-multiplier": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4, padding_mode="circular"), (2, 4, 6, 6)),
    "hf-conv1d": (lambda: Conv1D(20, 12), (3, 5, 12)),
}


def make(kind: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory, shape = KINDS[kind]
    layer = factory().to(dtype)
    return layer, torch.randn(*shape, dtype=dtype)


def pairs() -> list[tuple[str, str]]:
    return [(m, k) for m in available_methods() for k in KINDS if get_method(m).unsupported_reason(make(k)[0]) is None]


PAIRS = pairs()


def half_rank(method, layer):
    top = method.max_rank(layer)
    return max(1, top // 2) if isinstance(top, int) else tuple(max(1, r // 2) for r in top)


def factors_at(method, layer, rank):
    rank = method.canonical_rank(layer, rank)
    return rank, rs.FactorCache().factors(layer, method, rank, statistics_if_needed(method, layer))


def test_the_methods_that_take_each_kind():
    takes = {k: {m for m, kind in PAIRS if kind == k} for k in KINDS}
    for kind in ("conv1d", "conv1d-stride-dilated-reflect", "conv1d-same-even"):
        assert {"svd", "tucker2", "cp", "tt"} <= takes[kind]
    for kind in ("grouped-conv2d", "grouped-conv1d-stride", "depthwise-multiplier"):
        assert {"svd", "tucker2"} <= takes[kind] and not {"cp", "tt"} & takes[kind]
    assert {"svd", "tt"} <= takes["hf-conv1d"] and not {"tucker2", "cp"} & takes["hf-conv1d"]
    layer = make("grouped-conv2d")[0]
    assert get_method("cp").unsupported_reason(layer) == "grouped convolution (groups=4) is not supported"
    assert get_method("tucker2").unsupported_reason(make("hf-conv1d")[0]) == (
        "Conv1D (Hugging Face: a Linear layer) is not supported (Conv1d and Conv2d only)"
    )
    assert get_method("cp").unsupported_reason(nn.Conv1d(4, 4, 1)) == (
        "kernel size 1: nothing to factorize spatially (use svd)"
    )


@pytest.mark.parametrize(("method_name", "kind"), [(m, k) for m, k in PAIRS if get_method(m).exact_at_max_rank])
def test_full_rank_reproduces_the_dense_layer(method_name, kind):
    """Every method whose maximum is a complete rank (not CP's budget cap) is exact there; so is ``.weight``."""
    method = get_method(method_name)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        layer, x = make(kind, dtype)
        _, factors = factors_at(method, layer, method.max_rank(layer))
        built = method.build(layer, factors)
        assert relative_error(layer(x), built(x)) < tolerance
        assert relative_error(layer.weight, built.weight) < tolerance


@pytest.mark.parametrize(("method_name", "kind"), PAIRS)
def test_built_layer_is_the_dense_layer_of_its_weight(method_name, kind):
    """At half rank the chain computes the layer holding ``reconstruct(factors)``, which ``.weight`` answers."""
    layer, x = make(kind)
    method = get_method(method_name)
    rank, factors = factors_at(method, layer, half_rank(method, layer))
    built = method.build(layer, factors)
    weight = method.reconstruct(layer, factors)
    reference = copy.deepcopy(layer)
    with torch.no_grad():
        reference.weight.copy_(weight)
    torch.testing.assert_close(built(x), reference(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(built.weight, weight, rtol=1e-10, atol=1e-10)
    assert built.weight.shape == layer.weight.shape and not built.weight.requires_grad
    assert built.bias is built[-1].bias and built.rank == rank


@pytest.mark.parametrize(("method_name", "kind"), PAIRS)
def test_reported_cost_equals_built_module_and_flop_counter(method_name, kind):
    layer, x = make(kind)
    method = get_method(method_name)
    for rank in (1, half_rank(method, layer), method.max_rank(layer)):
        rank, factors = factors_at(method, layer, rank)
        built = method.build(layer, factors)
        cost = method.cost(layer, rank, x.shape)
        assert cost.params == sum(p.numel() for p in built.parameters())
        with FlopCounterMode(display=False) as counter:
            built(x)
        assert cost.macs == counter.get_total_flops() // 2


@pytest.mark.parametrize(("method_name", "kind"), PAIRS)
def test_exact_low_rank_weight_is_recovered(method_name, kind):
    method = get_method(method_name)
    for seed in (1, 1234):
        layer, _ = make(kind)
        weight, rank = method.exact_low_rank_example(layer, seed)
        assert weight.shape == layer.weight.shape
        with torch.no_grad():
            layer.weight.copy_(weight)
        _, factors = factors_at(method, layer, rank)
        assert relative_error(weight, method.reconstruct(layer, factors)) < method.exact_recovery_tolerance


def test_hf_conv1d_is_recognized_by_its_layout_only():
    assert is_hf_conv1d(Conv1D(4, 3)) and not is_hf_conv1d(nn.Linear(3, 4))
    odd = Conv1D(4, 3)
    odd.nf = 5  # the weight is (3, 4): not Hugging Face's layout
    assert not is_hf_conv1d(odd)
    model = nn.ModuleDict({"good": Conv1D(4, 3), "odd": odd})
    assert list(rs.compressible_layers(model)) == ["good"]
    assert rs.skipped_layers(model) == {
        "odd": "a Conv1D without Hugging Face's layout (int nf, weight (nx, nf), bias (nf,)) is not supported"
    }


def test_hf_conv1d_svd_transposes_the_weight_and_counts_its_macs():
    layer, x = make("hf-conv1d")  # nx = 12, nf = 20
    svd = get_method("svd")
    assert svd.max_rank(layer) == 12
    cost = svd.cost(layer, 5, x.shape)
    assert cost.macs == 15 * (12 * 5 + 5 * 20) and cost.params == 5 * (12 + 20) + 20
    built = svd.build(layer, factors_at(svd, layer, 12)[1])
    assert [tuple(m.weight.shape) for m in built] == [(12, 12), (20, 12)] and built.weight.shape == (12, 20)


def test_grouped_ranks_are_per_group():
    layer, _ = make("grouped-conv2d")  # 8 -> 12 in 4 groups: per group (3, 2, 3, 3)
    assert get_method("svd").max_rank(layer) == 3 and get_method("tucker2").max_rank(layer) == (3, 2)
    with pytest.raises(rs.ConfigError, match=r"rank 4 is outside \[1, 3\]"):
        get_method("svd").canonical_rank(layer, 4)
    built = get_method("svd").build(layer, factors_at(get_method("svd"), layer, 2)[1])
    assert [m.groups for m in built] == [4, 4] and [m.out_channels for m in built] == [8, 12]


def test_depthwise_and_other_layers_that_cannot_pay_are_skipped_with_the_reason():
    model = nn.ModuleDict(
        {
            "depthwise": nn.Conv2d(8, 8, 3, groups=8),
            "bilinear": nn.Bilinear(4, 4, 4),
            "conv3d": nn.Conv3d(2, 2, 3),
            "transposed1d": nn.ConvTranspose1d(2, 2, 3),
        }
    )
    skipped = rs.skipped_layers(model)
    assert skipped["bilinear"] == "Bilinear is not supported"
    assert skipped["transposed1d"] == "transposed convolution is not supported"
    assert skipped["conv3d"] == "Conv3d is not supported (Conv1d and Conv2d only)"
    depthwise = (
        "grouped convolution (groups=8, 1 input channel(s) per group): even rank 1 per group holds as many "
        "weights as the dense kernel, nothing to gain"
    )
    reasons = dict(part.split(": ", 1) for part in skipped["depthwise"].split("; "))
    assert reasons["svd"] == reasons["tucker2"] == depthwise
    assert reasons["cp"] == reasons["tt"] == "grouped convolution (groups=8) is not supported"
    with pytest.raises(rs.UnsupportedLayerError, match=r"layer 'depthwise': method 'svd' does not support it: grouped"):
        rs.apply(model, rs.CompressionConfig({"depthwise": ("svd", 1)}))


def test_conv1d_cost_refuses_a_wrong_input_shape():
    layer, _ = make("conv1d")
    with pytest.raises(rs.ConfigError, match=r"a Conv1d input shape must be \(N, C, L\), got \(2, 6, 4, 4\)"):
        get_method("svd").cost(layer, 2, (2, 6, 4, 4))


def test_models_of_every_kind_compress_at_full_rank():
    """apply() on a model with each kind, SVD at full rank: the same function (float32, 1e-5 absolute)."""
    model = nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1),
        nn.Conv1d(8, 8, 3, padding=1, groups=2),
        nn.Flatten(1),
        Conv1D(16, 8 * 6),
    ).eval()
    x = torch.randn(2, 4, 6)
    layers = rs.compressible_layers(model)
    assert {n: info.kind for n, info in layers.items()} == {"0": "Conv1d", "1": "Conv1d", "3": "Conv1D"}
    assert layers["3"].weight_shape == (48, 16)
    config = rs.CompressionConfig({n: ("svd", info.max_ranks["svd"]) for n, info in layers.items()})
    compressed = rs.apply(model, config)
    torch.testing.assert_close(compressed(x), model(x), rtol=0, atol=1e-5)
    assert compressed[3].weight.shape == (48, 16) and compressed[3].weight.dtype == torch.float32


@pytest.mark.parametrize(("method_name", "case"), method_case_pairs())
def test_every_factorized_layer_answers_its_dense_weight(method_name, case):
    """On the contract tests' Conv2d and Linear geometries too (CP's depthwise pair, TT's TT-matrix...)."""
    layer, _ = make_layer(case)
    method = get_method(method_name)
    _, factors = factors_at(method, layer, mid_rank(method, layer))
    built = method.build(layer, factors)
    torch.testing.assert_close(built.weight, method.reconstruct(layer, factors), rtol=1e-10, atol=1e-10)
    assert built.bias is built[-1].bias


def test_the_dense_weight_property_is_not_a_parameter():
    layer, x = make("conv1d-stride-dilated-reflect", torch.float32)
    svd = get_method("svd")
    built = svd.build(layer, factors_at(svd, layer, 3)[1])
    names = [n for n, _ in built.named_parameters()]
    assert names == ["0.weight", "1.weight", "1.bias"] and list(built.state_dict()) == names
    clone = copy.deepcopy(built)
    torch.testing.assert_close(clone.weight, built.weight)
    with pytest.raises(AttributeError):
        built.weight = torch.zeros(1)
    scripted = torch.jit.script(built)
    torch.testing.assert_close(scripted(x), built(x))


def test_the_cost_grid_of_conv1d_and_hf_conv1d_layers_is_in_macs():
    """The search space prices Conv1d and HF Conv1D options by their MACs on the traced input (not by params),
    and none costs more than its dense layer; the latency table keys them apart from Conv2d/Linear."""
    from ranksearch.latency._estimator import _geometry, layer_inputs

    model = nn.Sequential(nn.Conv1d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(1), Conv1D(24, 32 * 20)).eval()
    shape = (1, 16, 20)
    inputs = layer_inputs(model, shape)
    assert inputs == {"0": (1, 16, 20), "3": (1, 640)}
    dense = {"0": 20 * 32 * 16 * 3, "3": 640 * 24}
    assert {n: rs.count(nn.Sequential(model.get_submodule(n)), s).macs for n, s in inputs.items()} == dense
    choices = rs.SearchSpace(methods=("dense", "svd", "tucker2")).layers(model, shape)
    assert set(choices) == {"0", "3"}
    for name, layer in choices.items():
        for method in [m for m in layer.methods if m != "dense"]:
            for rank in layer.ranks[method]:
                cost = get_method(method).cost(model.get_submodule(name), rank, inputs[name]).macs
                assert cost < dense[name], (name, method, rank)
    assert _geometry(model[0]).startswith("conv1d(16->32") and "hf-conv1d" in _geometry(model[3])
