"""Contract tests run over every registered method and every layer geometry it supports."""

from __future__ import annotations

import copy
import itertools

import pytest
import tensorly as tl
import torch
from conftest import CONV_CASES, LINEAR_CASES, make_layer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ranksearch as rs
from ranksearch.decompositions import Decomposition, available_methods, get_method, relative_error
from ranksearch.decompositions._base import check_rank_tuple

CASES = [*CONV_CASES, *LINEAR_CASES]
PAIRS = [
    (method, case)
    for method in available_methods()
    for case in CASES
    if get_method(method).unsupported_reason(make_layer(case)[0]) is None
]


def mid_rank(method: Decomposition, layer: nn.Module):
    """A rank about half of the maximum in every component."""
    top = method.max_rank(layer)
    return max(1, top // 2) if isinstance(top, int) else tuple(max(1, r // 2) for r in top)


def factorize(method: Decomposition, layer: nn.Module, rank):
    rank = method.canonical_rank(layer, rank)
    return rank, rs.FactorCache().factors(layer, method, rank)


def with_weight(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    dense = copy.deepcopy(layer)
    with torch.no_grad():
        dense.weight.copy_(weight)
    return dense


def test_every_method_is_covered_by_some_case():
    assert set(available_methods()) == {m for m, _ in PAIRS} == {"svd", "tucker2", "tucker2_hooi", "cp", "tt"}


@pytest.mark.parametrize(("method_name", "case"), PAIRS)
def test_factorized_layer_equals_dense_layer_with_reconstructed_weight(method_name, case):
    """The built chain computes exactly the conv/linear of the weight its factors represent (float64)."""
    layer, x = make_layer(case)
    method = get_method(method_name)
    rank, factors = factorize(method, layer, mid_rank(method, layer))
    built = method.build(layer, factors)
    reference = with_weight(layer, method.reconstruct(layer, factors))
    torch.testing.assert_close(built(x), reference(x), rtol=1e-10, atol=1e-10)
    assert isinstance(built, rs.FactorizedLayer) and built.method == method_name and built.rank == rank


@pytest.mark.parametrize(("method_name", "case"), PAIRS)
def test_reported_cost_equals_built_module_and_flop_counter(method_name, case):
    """params = parameters of the built module; MACs = torch FlopCounterMode's FLOPs / 2."""
    layer, x = make_layer(case)
    method = get_method(method_name)
    for fraction in (0.25, 1.0):
        top = method.max_rank(layer)
        rank = max(1, int(top * fraction)) if isinstance(top, int) else tuple(max(1, int(r * fraction)) for r in top)
        rank, factors = factorize(method, layer, rank)
        built = method.build(layer, factors)
        cost = method.cost(layer, rank, x.shape)
        assert cost.params == sum(p.numel() for p in built.parameters())
        with FlopCounterMode(display=False) as counter:
            built(x)
        assert cost.macs == counter.get_total_flops() // 2
        assert cost.flops == 2 * cost.macs


@pytest.mark.parametrize(("method_name", "case"), [p for p in PAIRS if p[1] in ("rect-stride-bias", "linear-bias")])
def test_reported_macs_equal_fvcore(method_name, case):
    """fvcore counts one multiply-add as one flop: its total is our MACs."""
    from fvcore.nn import FlopCountAnalysis

    layer, x = make_layer(case, dtype=torch.float32)
    method = get_method(method_name)
    rank, factors = factorize(method, layer, mid_rank(method, layer))
    built = method.build(layer, factors)
    analysis = FlopCountAnalysis(built, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert analysis.total() == method.cost(layer, rank, x.shape).macs


@pytest.mark.parametrize(("method_name", "case"), [p for p in PAIRS if p[0] in ("svd", "tucker2", "tucker2_hooi")])
def test_full_rank_reproduces_dense_layer(method_name, case):
    method = get_method(method_name)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        layer, x = make_layer(case, dtype=dtype)
        _, factors = factorize(method, layer, method.max_rank(layer))
        out, expected = method.build(layer, factors)(x), layer(x)
        assert relative_error(expected, out) < tolerance


@pytest.mark.parametrize(("method_name", "case"), [p for p in PAIRS if p[0] in ("svd", "tucker2")])
def test_weight_error_never_increases_with_rank(method_name, case):
    layer, _ = make_layer(case)
    method = get_method(method_name)
    cache = rs.FactorCache()
    top = method.max_rank(layer)
    if isinstance(top, int):
        ranks = list(range(1, top + 1))
    else:  # grow one component at a time, then the other
        ranks = [(r, 1) for r in range(1, top[0] + 1)] + [(top[0], r) for r in range(1, top[1] + 1)]
    errors = [cache.relative_error(layer, method, method.canonical_rank(layer, r)) for r in ranks]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < 1e-12


def _exact_low_rank_weight(method_name: str, layer: nn.Module, seed: int) -> tuple[torch.Tensor, object]:
    """A weight of the layer's shape that is exactly representable at the returned rank."""
    g = torch.Generator().manual_seed(seed)
    shape = layer.weight.shape

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    if method_name == "svd":
        return (rand(shape[0], 3) @ rand(3, layer.weight[0].numel())).reshape(shape), 3
    if method_name in ("tucker2", "tucker2_hooi"):
        core = rand(3, 2, *shape[2:])
        return torch.einsum("abhw,oa,ib->oihw", core, rand(shape[0], 3), rand(shape[1], 2)), (3, 2)
    if method_name == "cp":
        factors = [rand(n, 3) for n in shape]
        return torch.einsum("or,ir,hr,wr->oihw", *factors), 3
    if method_name == "tt" and isinstance(layer, nn.Linear):
        method = get_method("tt")
        ranks = (2, 2)
        cores = method.factorize(layer, method.canonical_rank(layer, ranks), None)
        cores = tuple(rand(*c.shape) for c in cores)
        return method.reconstruct(layer, cores), ranks
    o, i, kh, kw = shape
    ranks = (2, 2, 2)
    cores = rand(i, 2), rand(2, kh, 2), rand(2, kw, 2), rand(2, o)
    return torch.einsum("ia,ahb,bwc,co->oihw", *cores), ranks


@pytest.mark.parametrize("seed", [1, 1234])
@pytest.mark.parametrize(("method_name", "case"), PAIRS)
def test_exact_low_rank_weight_is_recovered(method_name, case, seed):
    layer, _ = make_layer(case)
    weight, rank = _exact_low_rank_weight(method_name, layer, seed)
    with torch.no_grad():
        layer.weight.copy_(weight)
    method = get_method(method_name)
    rank, factors = factorize(method, layer, rank)
    tolerance = 1e-3 if method_name == "cp" else 1e-7 if method_name == "tucker2_hooi" else 1e-9
    assert relative_error(weight, method.reconstruct(layer, factors)) < tolerance


@pytest.mark.parametrize(("method_name", "case"), PAIRS)
def test_factorization_is_deterministic(method_name, case):
    layer, _ = make_layer(case, dtype=torch.float32)
    method = get_method(method_name)
    first = factorize(method, layer, mid_rank(method, layer))[1]
    torch.manual_seed(99)  # the global RNG must not matter
    second = factorize(method, layer, mid_rank(method, layer))[1]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_tensorly_backend_is_left_as_the_user_set_it():
    layer, _ = make_layer("3x3")
    tl.set_backend("numpy")
    for method in available_methods():
        factorize(get_method(method), layer, 2)
    assert tl.get_backend() == "numpy"


def test_half_precision_layers_keep_their_dtype():
    layer, x = make_layer("3x3", dtype=torch.float32)
    reference = layer(x)
    layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    for name in available_methods():
        method = get_method(name)
        built = method.build(layer, factorize(method, layer, method.max_rank(layer))[1])
        assert all(p.dtype == torch.bfloat16 for p in built.parameters())
        if name in ("svd", "tucker2"):  # full rank: close to the float32 layer, at bf16 precision
            assert relative_error(reference, built(x).float()) < 0.05


def test_tuple_ranks_clip_an_int_per_component_and_reject_bad_forms():
    assert check_rank_tuple(5, (8, 3)) == (5, 3)
    assert check_rank_tuple([2, 3], (8, 3)) == (2, 3)
    with pytest.raises(rs.ConfigError, match=r"rank 9 is outside \[1, 8\]"):
        check_rank_tuple(9, (8, 3))
    with pytest.raises(rs.ConfigError, match="sequence of 2 ints"):
        check_rank_tuple((1, 2, 3), (8, 3))
    with pytest.raises(rs.ConfigError, match=r"rank\[1\] 4 is outside \[1, 3\]"):
        check_rank_tuple((1, 4), (8, 3))


@pytest.mark.parametrize("method_name", ["svd", "tucker2", "tucker2_hooi", "cp", "tt"])
@pytest.mark.parametrize("bad", [0, -1, "3", 2.5, True, None])
def test_bad_ranks_are_rejected_with_the_range(method_name, bad):
    layer, _ = make_layer("3x3")
    with pytest.raises(rs.ConfigError, match=r"must be an int|outside \[1, "):
        get_method(method_name).canonical_rank(layer, bad)


def test_rank_above_maximum_names_the_maximum():
    layer, _ = make_layer("3x3")  # 8 x 6 x 3 x 3: svd max rank 8
    with pytest.raises(rs.ConfigError, match=r"rank 9 is outside \[1, 8\]"):
        get_method("svd").canonical_rank(layer, 9)


def test_registry_finds_by_name_or_instance_and_refuses_duplicates():
    svd = get_method("svd")
    assert get_method(svd) is svd
    with pytest.raises(rs.ConfigError, match="unknown method 'svdd'; available: cp, svd, tt, tucker2, tucker2_hooi"):
        get_method("svdd")
    with pytest.raises(RuntimeError, match="already registered"):

        class Again(Decomposition, name="svd"):  # pragma: no cover - refused at class creation
            pass


@pytest.mark.parametrize(
    ("method_name", "case"),
    [("svd", "rect-stride-bias"), ("tucker2", "3x3"), ("cp", "circular"), ("tt", "linear-bias")],
)
def test_built_modules_train_and_export(method_name, case):
    """Factorized modules are ordinary modules: gradients flow and torch.export captures them."""
    layer, x = make_layer(case, dtype=torch.float32)
    method = get_method(method_name)
    built = method.build(layer, factorize(method, layer, mid_rank(method, layer))[1])
    built(x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in built.parameters())
    exported = torch.export.export(built, (x,))
    torch.testing.assert_close(exported.module()(x), built(x))


@pytest.mark.parametrize(
    "case", [c for c in CONV_CASES if get_method("tucker2").unsupported_reason(make_layer(c)[0]) is None]
)
def test_hooi_refines_the_truncated_hosvd(case):
    layer, _ = make_layer(case)
    cache = rs.FactorCache()
    rank = mid_rank(get_method("tucker2"), layer)
    hosvd, hooi = (cache.relative_error(layer, m, rank) for m in ("tucker2", "tucker2_hooi"))
    assert hooi <= hosvd + 1e-12
