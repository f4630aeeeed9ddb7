"""Contract tests run over every registered method and every layer geometry it supports.

Nothing here names the methods a contract test runs on: the (method, case) pairs come from the registry
and per-method facts from the method's own attributes (``nested``, ``exact_at_max_rank``,
``exact_recovery_tolerance``) and hooks (``exact_low_rank_example``). The last tests register a
throwaway method and run every contract test on it, so a new method is covered with no test of its own.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import pkgutil
import re
from collections.abc import Callable, Sequence

import pytest
import tensorly as tl
import torch
from _helpers import (
    CONV_CASES,
    LINEAR_CASES,
    make_layer,
    method_case_pairs,
    mid_rank,
    statistics_if_needed,
    supported_cases,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ranksearch as rs
import ranksearch.decompositions as decompositions
from ranksearch.decompositions import (
    Cost,
    Decomposition,
    FactorizedLayer,
    Rank,
    available_methods,
    get_method,
    relative_error,
    unregister,
)
from ranksearch.decompositions._base import check_rank_tuple

PAIRS = method_case_pairs()

# Every contract test, with the selection of (method, case) it applies to; the throwaway method runs them all.
CONTRACT: list[tuple[Callable[..., None], Callable[[Decomposition, str], bool]]] = []


def contract(applies: Callable[[Decomposition, str], bool] = lambda method, case: True):
    """Parametrize a ``test(method_name, case)`` over the registered pairs it ``applies`` to, and record it."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        CONTRACT.append((test, applies))
        pairs = [(m, c) for m, c in PAIRS if applies(get_method(m), c)]
        return pytest.mark.parametrize(("method_name", "case"), pairs)(test)

    return decorate


def first_supported_case(method: Decomposition, case: str) -> bool:
    """Select one case per method, for the tests whose subject is the method rather than the geometry."""
    return case == supported_cases(method)[0]


def export_cases(method: Decomposition, case: str) -> bool:
    """One conv and one linear case per method (where it takes them), rotating over the geometries."""
    index = available_methods().index(method.name)
    picks = []
    for group in (CONV_CASES, LINEAR_CASES):
        mine = [c for c in supported_cases(method) if c in group]
        if mine:
            picks.append(mine[index % len(mine)])
    return case in picks


def factorize(method: Decomposition, layer: nn.Module, rank):
    rank = method.canonical_rank(layer, rank)
    return rank, rs.FactorCache().factors(layer, method, rank, statistics_if_needed(method, layer))


def output_error_of(layer: nn.Module, method: Decomposition, factors, statistics) -> float:
    """Relative expected output error ``tr(dW C dW^T) / tr(W C W^T)`` summed over groups (float64)."""
    groups = statistics.groups
    weight = layer.weight.detach().double().reshape(groups, -1, statistics.dim)
    approx = method.reconstruct(layer, factors).double().reshape(weight.shape)
    diff = weight - approx
    error = torch.einsum("god,gde,goe->", diff, statistics.second_moment, diff)
    return float(error / torch.einsum("god,gde,goe->", weight, statistics.second_moment, weight))


def with_weight(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    dense = copy.deepcopy(layer)
    with torch.no_grad():
        dense.weight.copy_(weight)
    return dense


def test_every_method_is_covered_by_some_case():
    assert available_methods() and {m for m, _ in PAIRS} == set(available_methods())


def test_every_module_of_the_package_registers_its_method():
    """A method file that ``decompositions/__init__.py`` forgets to import would never be registered."""
    registered = {type(get_method(m)).__module__ for m in available_methods()}
    for module in pkgutil.iter_modules(decompositions.__path__):
        if not module.name.startswith("_"):
            assert f"{decompositions.__name__}.{module.name}" in registered, f"{module.name}.py registers no method"


@contract()
def test_factorized_layer_equals_dense_layer_with_reconstructed_weight(method_name, case):
    """The built chain computes exactly the conv/linear of the weight its factors represent (float64)."""
    layer, x = make_layer(case)
    method = get_method(method_name)
    rank, factors = factorize(method, layer, mid_rank(method, layer))
    built = method.build(layer, factors)
    reference = with_weight(layer, method.reconstruct(layer, factors))
    torch.testing.assert_close(built(x), reference(x), rtol=1e-10, atol=1e-10)
    assert isinstance(built, rs.FactorizedLayer) and built.method == method_name and built.rank == rank


@contract()
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


@contract(lambda method, case: case in ("rect-stride-bias", "linear-bias"))
def test_reported_macs_equal_fvcore(method_name, case):
    """fvcore counts one multiply-add as one flop: its total is our MACs."""
    from fvcore.nn import FlopCountAnalysis

    layer, x = make_layer(case, dtype=torch.float32)
    method = get_method(method_name)
    rank, factors = factorize(method, layer, mid_rank(method, layer))
    built = method.build(layer, factors)
    analysis = FlopCountAnalysis(built, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert analysis.total() == method.cost(layer, rank, x.shape).macs


@contract(lambda method, case: method.exact_at_max_rank)
def test_full_rank_reproduces_dense_layer(method_name, case):
    method = get_method(method_name)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        layer, x = make_layer(case, dtype=dtype)
        _, factors = factorize(method, layer, method.max_rank(layer))
        out, expected = method.build(layer, factors)(x), layer(x)
        assert relative_error(expected, out) < tolerance


@contract(lambda method, case: method.nested)
def test_weight_error_never_increases_with_rank(method_name, case):
    layer, _ = make_layer(case)
    method = get_method(method_name)
    cache = rs.FactorCache()
    top = method.max_rank(layer)
    if isinstance(top, int):
        ranks = list(range(1, top + 1))
    else:  # grow one component at a time, from all ones up to the maximum
        ranks = [
            tuple(top[:k]) + (r,) + (1,) * (len(top) - k - 1) for k in range(len(top)) for r in range(1, top[k] + 1)
        ]
    statistics = statistics_if_needed(method, layer)
    if statistics is None:
        errors = [cache.relative_error(layer, method, method.canonical_rank(layer, r)) for r in ranks]
    else:  # a data-aware method's truncation orders by output error, not weight error
        errors = [
            output_error_of(layer, method, cache.factors(layer, method, r, statistics), statistics) for r in ranks
        ]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(errors))
    if method.exact_at_max_rank:
        assert errors[-1] < 1e-12


@contract()
def test_exact_low_rank_weight_is_recovered(method_name, case):
    """Each method's own exact low-rank example is recovered at its rank, for two seeds."""
    method = get_method(method_name)
    for seed in (1, 1234):
        layer, _ = make_layer(case)
        weight, rank = method.exact_low_rank_example(layer, seed)
        assert weight.shape == layer.weight.shape and weight.dtype == torch.float64
        torch.testing.assert_close(method.exact_low_rank_example(layer, seed)[0], weight, rtol=0, atol=0)
        with torch.no_grad():
            layer.weight.copy_(weight)
        rank, factors = factorize(method, layer, rank)
        assert relative_error(weight, method.reconstruct(layer, factors)) < method.exact_recovery_tolerance


@contract()
def test_factorization_is_deterministic(method_name, case):
    layer, _ = make_layer(case, dtype=torch.float32)
    method = get_method(method_name)
    first = factorize(method, layer, mid_rank(method, layer))[1]
    torch.manual_seed(99)  # the global RNG must not matter
    second = factorize(method, layer, mid_rank(method, layer))[1]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@contract(first_supported_case)
def test_tensorly_backend_is_left_as_the_user_set_it(method_name, case):
    layer, _ = make_layer(case)
    tl.set_backend("numpy")
    factorize(get_method(method_name), layer, 2)
    assert tl.get_backend() == "numpy"


@contract(first_supported_case)
def test_half_precision_layers_keep_their_dtype(method_name, case):
    layer, x = make_layer(case, dtype=torch.float32)
    reference = layer(x)
    layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    method = get_method(method_name)
    built = method.build(layer, factorize(method, layer, method.max_rank(layer))[1])
    assert all(p.dtype == torch.bfloat16 for p in built.parameters())
    if method.exact_at_max_rank:  # full rank: close to the float32 layer, at bf16 precision
        assert relative_error(reference, built(x).float()) < 0.05


@contract(first_supported_case)
def test_bad_ranks_are_rejected_with_the_range(method_name, case):
    layer, _ = make_layer(case)
    for bad in (0, -1, "3", 2.5, True, None):
        with pytest.raises(rs.ConfigError, match=r"must be an int|outside \[1, "):
            get_method(method_name).canonical_rank(layer, bad)


@contract(export_cases)
def test_built_modules_train_and_export(method_name, case):
    """Factorized modules are ordinary modules: gradients flow and torch.export captures them."""
    layer, x = make_layer(case, dtype=torch.float32)
    method = get_method(method_name)
    built = method.build(layer, factorize(method, layer, mid_rank(method, layer))[1])
    built(x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in built.parameters())
    exported = torch.export.export(built, (x,))
    torch.testing.assert_close(exported.module()(x), built(x))


def test_rank_above_maximum_names_the_maximum():
    layer, _ = make_layer("3x3")  # 8 x 6 x 3 x 3: svd max rank 8
    with pytest.raises(rs.ConfigError, match=r"rank 9 is outside \[1, 8\]"):
        get_method("svd").canonical_rank(layer, 9)


def test_tuple_ranks_clip_an_int_per_component_and_reject_bad_forms():
    assert check_rank_tuple(5, (8, 3)) == (5, 3)
    assert check_rank_tuple([2, 3], (8, 3)) == (2, 3)
    with pytest.raises(rs.ConfigError, match=r"rank 9 is outside \[1, 8\]"):
        check_rank_tuple(9, (8, 3))
    with pytest.raises(rs.ConfigError, match="sequence of 2 ints"):
        check_rank_tuple((1, 2, 3), (8, 3))
    with pytest.raises(rs.ConfigError, match=r"rank\[1\] 4 is outside \[1, 3\]"):
        check_rank_tuple((1, 4), (8, 3))


@pytest.mark.parametrize("case", supported_cases("tucker2"))
def test_hooi_refines_the_truncated_hosvd(case):
    layer, _ = make_layer(case)
    cache = rs.FactorCache()
    rank = mid_rank(get_method("tucker2"), layer)
    hosvd, hooi = (cache.relative_error(layer, m, rank) for m in ("tucker2", "tucker2_hooi"))
    assert hooi <= hosvd + 1e-12


# --- the registry ------------------------------------------------------------------------------------


def test_registry_finds_by_name_or_instance_and_refuses_duplicates():
    svd = get_method("svd")
    assert get_method(svd) is svd
    available = re.escape(", ".join(available_methods()))
    with pytest.raises(rs.ConfigError, match=f"^unknown method 'svdd'; available: {available}$"):
        get_method("svdd")
    with pytest.raises(RuntimeError, match="already registered"):

        class Again(Decomposition, name="svd"):  # pragma: no cover - refused at class creation
            pass

    assert get_method("svd") is svd


THROWAWAY = "throwaway_svd"


def register_throwaway() -> type[Decomposition]:
    """Define (and so register) a minimal method: truncated SVD of Linear weights, in plain torch.

    It is all a new method's author writes: the hooks, its attributes and its exact low-rank example.
    """

    class ThrowawaySVD(Decomposition, name=THROWAWAY):
        nested = True  # every rank slices one SVD

        def unsupported_reason(self, module: nn.Module) -> str | None:
            return None if isinstance(module, nn.Linear) else f"{type(module).__name__} is not supported (Linear only)"

        def max_rank(self, module: nn.Module) -> int:
            return min(module.weight.shape)

        def prepare(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            u, s, vh = torch.linalg.svd(module.weight.detach().double(), full_matrices=False)
            return u * s, vh  # (O, K), (K, I)

        def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> tuple[torch.Tensor, ...]:
            left, right = prepared
            dtype = module.weight.dtype
            return left[:, :rank].to(dtype), right[:rank].to(dtype)

        def reconstruct(self, module: nn.Module, factors: Sequence[torch.Tensor]) -> torch.Tensor:
            left, right = factors
            return left @ right

        def build(self, module: nn.Module, factors: Sequence[torch.Tensor]) -> FactorizedLayer:
            left, right = factors
            first = nn.Linear(right.shape[1], right.shape[0], bias=False, dtype=module.weight.dtype)
            second = nn.Linear(left.shape[1], left.shape[0], bias=module.bias is not None, dtype=module.weight.dtype)
            with torch.no_grad():
                first.weight.copy_(right)
                second.weight.copy_(left)
                if module.bias is not None:
                    second.bias.copy_(module.bias)
            return FactorizedLayer(first, second, method=self.name, rank=left.shape[1])

        def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
            out_features, in_features = module.weight.shape
            rows = torch.Size(input_shape).numel() // in_features
            bias = 0 if module.bias is None else out_features
            return Cost(rows * rank * (in_features + out_features), rank * (in_features + out_features) + bias)

        def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
            generator = torch.Generator().manual_seed(seed)
            out_features, in_features = module.weight.shape
            left, right = (
                torch.randn(*s, generator=generator, dtype=torch.float64) for s in ((out_features, 2), (2, in_features))
            )
            return left @ right, 2

    return ThrowawaySVD


@pytest.fixture
def throwaway():
    """The throwaway method's name, registered for the length of one test."""
    register_throwaway()
    try:
        yield THROWAWAY
    finally:
        unregister(THROWAWAY)


def test_a_method_registered_later_is_held_to_every_contract_test(throwaway):
    assert throwaway in available_methods() and throwaway not in {m for m, _ in PAIRS}  # absent at collection
    pairs = [(m, c) for m, c in method_case_pairs() if m == throwaway]
    assert [c for _, c in pairs] == list(LINEAR_CASES)  # the registry-driven pairs pick it up, Linear only
    per_method = {
        name
        for name, test in globals().items()
        if name.startswith("test_") and "method_name" in inspect.signature(test).parameters
    }
    assert per_method == {test.__name__ for test, _ in CONTRACT}  # every per-method test here is a contract test
    method = get_method(throwaway)
    for test, applies in CONTRACT:
        ran = [case for _, case in pairs if applies(method, case)]
        for case in ran:
            test(throwaway, case)
        assert ran, f"{test.__name__} does not apply to the throwaway method"


def test_an_unregistered_method_is_an_unknown_name():
    cls = register_throwaway()
    try:
        assert get_method(THROWAWAY).name == THROWAWAY
        with pytest.raises(RuntimeError, match="already registered"):
            register_throwaway()
    finally:
        removed = unregister(THROWAWAY)
    assert type(removed) is cls and THROWAWAY not in available_methods()
    available = re.escape(", ".join(available_methods()))
    message = f"unknown method '{THROWAWAY}'; available: {available}"
    with pytest.raises(rs.ConfigError, match=f"^{message}$"):
        get_method(THROWAWAY)
    with pytest.raises(rs.ConfigError, match=f"^{message}$"):
        unregister(THROWAWAY)
    with pytest.raises(rs.ConfigError, match=f"layer 'fc': {message} or 'dense'$"):
        rs.CompressionConfig({"fc": (THROWAWAY, 2)})
    with pytest.raises(TypeError, match="takes a method name"):
        unregister(get_method("svd"))
    register_throwaway()  # the name is free again
    unregister(THROWAWAY)


def test_a_method_without_an_exact_low_rank_example_says_what_is_missing():
    cls = register_throwaway()
    try:
        del cls.exact_low_rank_example
        with pytest.raises(NotImplementedError, match=f"{THROWAWAY!r} .*does not implement exact_low_rank_example"):
            get_method(THROWAWAY).exact_low_rank_example(make_layer("linear-bias")[0], 0)
    finally:
        unregister(THROWAWAY)
