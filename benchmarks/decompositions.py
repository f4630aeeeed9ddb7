"""Benchmark of the decomposition methods on ResNet-20 and a ResNet-18 for 32x32 inputs (CPU).

Four parts, each a table:

1. the time to fill a fresh :class:`~ranksearch.FactorCache` for every compressible 3x3 conv
   (nested methods: the rank-independent SVD/HOSVD; CP and TT: one fit at ~50% of the dense MACs);
2. the time per extra rank once the cache is warm: a slice for nested methods, a new fit (a cache
   miss) for CP and TT, and a repeated request for the same rank (a hit);
3. the forward latency of each method's module against the dense conv at 25/50/75% of its MACs;
4. our Tucker-2 and CP convs against tensorly-torch's ``FactorizedConv`` at equal rank.

Ratios are the numbers to quote: absolute times move with the machine and its load. Timings of one
part are sampled round-robin so that load changes hit the dense and factorized layers alike; even so,
on a shared virtual machine batch-32 speedups repeat within about 10% between runs, and sub-millisecond
batch-1 timings within 20% (with outliers near 2x). The load of other processes is printed per part.
Usage::

    python benchmarks/decompositions.py [--quick] [--threads N] [--out FILE.csv]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import os
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import tensorly as tl
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path
from torch import nn

import ranksearch as rs
from ranksearch.decompositions import Decomposition, Rank, get_method, relative_error
from ranksearch.models import resnet18_cifar, resnet20

METHODS = ("svd", "tucker2", "cp", "tt")
FRACTIONS = (0.25, 0.5, 0.75)  # of the dense layer's MACs, for the latency and tltorch parts
BUILD_FRACTION = 0.5  # the rank that CP and TT fit while the cache is filled
EXTRA_FRACTION = 0.25  # the "different rank" requested from the warm cache
MODELS: dict[str, Callable[[], nn.Module]] = {"resnet20": resnet20, "resnet18_cifar": resnet18_cifar}
INPUT_SHAPE = (1, 3, 32, 32)
SAMPLE_SECONDS = 0.01  # one timing sample runs the statement for at least this long
MIN_SAMPLES = 5


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``(in, out, hw)`` selects the first stride-1 3x3 conv of that geometry.

    Attributes:
        cache_layers: per model, the convs whose factor cache is timed (None: every 3x3 conv).
        latency_layers: per model, the convs timed against the dense conv.
        tltorch_layers: per (model, method), the convs compared with tensorly-torch.
        batches: batch sizes of the latency part.
        min_run_time: seconds of timed runs per latency measurement.
        warmup: untimed calls before each measurement.
        cp_max_channels: parts 1-2 skip CP on convs with more channels than this (a CP-ALS fit of a
            512x512x3x3 kernel at half its MACs takes about 150 s on 2 cores).
    """

    cache_layers: dict[str, list[tuple[int, int, int]] | None]
    latency_layers: dict[str, list[tuple[int, int, int]]]
    tltorch_layers: dict[tuple[str, str], list[tuple[int, int, int]]]
    batches: tuple[int, ...]
    min_run_time: float
    warmup: int
    cp_max_channels: int


FULL = Plan(
    cache_layers={"resnet20": None, "resnet18_cifar": None},
    latency_layers={"resnet20": [(16, 16, 32), (64, 64, 8)], "resnet18_cifar": [(64, 64, 32), (256, 256, 8)]},
    tltorch_layers={
        ("resnet20", "tucker2"): [(16, 16, 32), (64, 64, 8)],
        ("resnet20", "cp"): [(16, 16, 32), (64, 64, 8)],
        ("resnet18_cifar", "tucker2"): [(64, 64, 32), (256, 256, 8)],
        ("resnet18_cifar", "cp"): [(64, 64, 32)],  # tltorch's parafac on 256x256x3x3 takes minutes
    },
    batches=(32, 1),
    min_run_time=0.3,
    warmup=3,
    cp_max_channels=256,
)
QUICK = Plan(
    cache_layers={"resnet20": None, "resnet18_cifar": [(64, 64, 32)]},
    latency_layers={"resnet20": [(16, 16, 32), (64, 64, 8)], "resnet18_cifar": [(64, 64, 32)]},
    tltorch_layers={("resnet20", "tucker2"): [(64, 64, 8)], ("resnet20", "cp"): [(64, 64, 8)]},
    batches=(32, 1),
    min_run_time=0.1,
    warmup=2,
    cp_max_channels=256,
)


@dataclass(frozen=True)
class Conv:
    """One 3x3 conv of a model, with its input shape (batch 1) and dense MACs."""

    model: str
    name: str
    module: nn.Conv2d
    input_shape: tuple[int, ...]  # (1, C, H, W)
    dense_macs: int  # at batch 1

    @property
    def geometry(self) -> tuple[int, int, int]:
        """``(in_channels, out_channels, input height)``, the key used by :class:`Plan`."""
        return self.module.in_channels, self.module.out_channels, self.input_shape[2]

    @property
    def label(self) -> str:
        """E.g. ``"64->64 @32x32"``, with ``" s2"`` for a strided conv."""
        _, channels, h, w = self.input_shape
        stride = "" if self.module.stride == (1, 1) else f" s{self.module.stride[0]}"
        return f"{channels}->{self.module.out_channels} @{h}x{w}{stride}"

    def describe(self) -> dict[str, object]:
        """The columns that name this conv in every table."""
        return {"model": self.model, "layer": self.name, "conv": self.label}


# --- machine and timing helpers ---------------------------------------------------------------------


class LoadMonitor:
    """How many cores *other* processes keep busy, from /proc/stat minus this process's CPU time."""

    def __init__(self) -> None:
        self._last = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        """(wall seconds, CPU seconds of all processes, CPU seconds of this process), None off Linux."""
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        own = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy, own.ru_utime + own.ru_stime

    def mark(self) -> float | None:
        """Mean number of cores other processes used since the previous mark (or construction)."""
        now, last = self._snapshot(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))

    def report(self, what: str) -> None:
        """Print the load of other processes since the last mark, with a warning when it is high."""
        busy = self.mark()
        if busy is None:
            return
        print(f"load: other processes kept {busy:.2f} cores busy {what}")
        if busy > 0.2:
            print("WARNING: timings are disturbed: with OpenMP's default (spinning) wait policy, multi-threaded")
            print("         SVD, Cholesky and conv calls run 10-1000x slower while another process holds a core.")
            print("         Rerun on an idle machine, or with OMP_WAIT_POLICY=PASSIVE (set before Python starts).")
        print()


def version(package: str) -> str:
    """The installed version of ``package``, or ``"not installed"``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_header(args: argparse.Namespace) -> None:
    """Device, versions and threads: the context every number below depends on."""
    print(f"# ranksearch decomposition benchmark ({'quick' if args.quick else 'full'} run)")
    print(f"date:     {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"device:   {cpu_model()} (CPU, {os.cpu_count()} logical cores), {platform.machine()}, {platform.system()}")
    print(
        f"versions: python {platform.python_version()}, torch {torch.__version__}, tensorly {tl.__version__}, "
        f"tensorly-torch {version('tensorly-torch')}, ranksearch {rs.__version__}"
    )
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"threads:  torch.get_num_threads() = {torch.get_num_threads()}, OMP_WAIT_POLICY={wait_policy}")


def seconds_of(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: Sequence[Callable[[], object]], min_run_time: float, warmup: int) -> list[float]:
    """Median seconds of one call of each of ``fns``, sampled round-robin after ``warmup`` calls each.

    Round-robin sampling exposes every function to the same load changes, which keeps their ratios
    steady on a shared machine. Each sample averages enough back-to-back calls to last
    ``SAMPLE_SECONDS``; sampling lasts ``min_run_time`` seconds per function and ``MIN_SAMPLES`` rounds.
    """
    inners = []
    for fn in fns:
        for _ in range(warmup):
            fn()
        inners.append(max(1, math.ceil(SAMPLE_SECONDS / max(seconds_of(fn), 1e-7))))
    samples: list[list[float]] = [[] for _ in fns]
    deadline = time.perf_counter() + min_run_time * len(fns)
    while len(samples[0]) < MIN_SAMPLES or time.perf_counter() < deadline:
        for fn, inner, out in zip(fns, inners, samples, strict=True):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - start) / inner)
    return [statistics.median(s) for s in samples]


def median_seconds(fn: Callable[[], object], min_run_time: float, warmup: int) -> float:
    """Median seconds of one call of ``fn`` (see :func:`interleaved_medians`)."""
    return interleaved_medians([fn], min_run_time, warmup)[0]


def forward_medians(modules: Sequence[nn.Module], x: torch.Tensor, plan: Plan) -> list[float]:
    """Median forward latency of each module on ``x``, in eval mode under ``torch.no_grad()``."""
    for module in modules:
        module.eval()
    calls = [partial(module, x) for module in modules]
    with torch.no_grad():
        return interleaved_medians(calls, plan.min_run_time, plan.warmup)


# --- layers and ranks -------------------------------------------------------------------------------


def model_convs(model_name: str) -> list[Conv]:
    """Every compressible 3x3 conv of a freshly built (seeded) model, in model order."""
    torch.manual_seed(0)
    model = MODELS[model_name]().eval()
    table = rs.count(model, INPUT_SHAPE).table.set_index("layer")
    convs = []
    for name, info in rs.compressible_layers(model).items():
        if info.kind == "Conv2d" and info.weight_shape[2:] == (3, 3):
            row = table.loc[name]
            convs.append(Conv(model_name, name, model.get_submodule(name), row["input_shape"], int(row["macs"])))
    return convs


def select(convs: list[Conv], geometries: Iterable[tuple[int, int, int]] | None) -> list[Conv]:
    """The first stride-1 conv of each ``(in, out, hw)`` geometry (all convs when ``geometries`` is None)."""
    if geometries is None:
        return convs
    chosen = []
    for geometry in geometries:
        matches = [c for c in convs if c.geometry == geometry and c.module.stride == (1, 1)]
        if not matches:
            raise SystemExit(f"no stride-1 3x3 conv with (in, out, hw) = {geometry} in {convs[0].model}")
        chosen.append(matches[0])
    return chosen


def int_rank_cap(method: Decomposition, module: nn.Module) -> int:
    """The largest int rank ``method`` accepts (an int rank means ``min(r, cap)`` per component)."""
    cap = method.max_rank(module)
    return max(cap) if isinstance(cap, tuple) else int(cap)


def rank_for_fraction(method: Decomposition, conv: Conv, fraction: float) -> Rank | None:
    """Canonical form of the largest int rank whose MACs are at most ``fraction`` of the dense conv's.

    Tucker-2 and TT take one int for every component (clipped per component). MACs grow with the
    rank, so a bisection finds it; None when even rank 1 costs more.
    """

    def macs(r: int) -> int:
        return method.cost(conv.module, method.canonical_rank(conv.module, r), conv.input_shape).macs

    budget = fraction * conv.dense_macs
    lo, hi = 0, int_rank_cap(method, conv.module)  # invariant: macs(lo) <= budget (rank 0 costs nothing)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if macs(mid) <= budget else (lo, mid - 1)
    return None if lo == 0 else method.canonical_rank(conv.module, lo)


def macs_fraction(method: Decomposition, conv: Conv, rank: Rank) -> float:
    """The factorized module's MACs over the dense conv's."""
    return method.cost(conv.module, rank, conv.input_shape).macs / conv.dense_macs


# --- part 1 and 2: the factor cache -----------------------------------------------------------------


def too_slow(method: str, conv: Conv, plan: Plan) -> bool:
    """Whether parts 1-2 skip this (method, conv): CP fits on wide convs take minutes."""
    return method == "cp" and max(conv.module.in_channels, conv.module.out_channels) > plan.cp_max_channels


def cache_build_rows(convs: list[Conv], cache: rs.FactorCache, plan: Plan) -> list[dict]:
    """Seconds of the first ``cache.factors`` call per (method, conv): the prepare step or the fit."""
    rows = []
    for name in METHODS:
        method = get_method(name)
        for conv in convs:
            rank = rank_for_fraction(method, conv, BUILD_FRACTION)
            if rank is None or too_slow(name, conv, plan):
                continue
            misses = cache.stats.misses
            seconds = seconds_of(partial(cache.factors, conv.module, method, rank))
            assert cache.stats.misses == misses + 1, "the first request of a fresh layer must be a cache miss"
            rows.append({**conv.describe(), "method": name, "rank": rank, "build_s": seconds})
    return rows


def cache_serve_rows(convs: list[Conv], cache: rs.FactorCache, plan: Plan) -> list[dict]:
    """Seconds to serve a different rank (slice or fit) and the same rank again (hit) from a warm cache."""
    rows = []
    for name in METHODS:
        method = get_method(name)
        for conv in convs:
            rank = rank_for_fraction(method, conv, BUILD_FRACTION)
            extra = rank_for_fraction(method, conv, EXTRA_FRACTION)
            if rank is None or extra is None or extra == rank or too_slow(name, conv, plan):
                continue
            if method.nested:  # a slice: repeatable, so take a median
                extra_s = median_seconds(partial(cache.factors, conv.module, method, extra), 0.02, 1)
            else:  # a fit: only the first call is a miss
                extra_s = seconds_of(partial(cache.factors, conv.module, method, extra))
            hit_s = median_seconds(partial(cache.factors, conv.module, method, rank), 0.02, 1)
            served = "slice" if method.nested else "new fit (miss)"
            rows.append(
                {
                    **conv.describe(),
                    "method": name,
                    "extra_rank": extra,
                    "extra_served_by": served,
                    "extra_s": extra_s,
                    "hit_s": hit_s,
                }
            )
    return rows


def summarize_cache(build: pd.DataFrame, serve: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method): total build seconds and mean seconds per extra rank and per hit."""
    keys = ["model", "method"]
    totals = build.groupby(keys, sort=False).agg(layers=("build_s", "size"), build_total_s=("build_s", "sum"))
    served = serve.groupby(keys, sort=False).agg(
        extra_served_by=("extra_served_by", "first"), extra_mean_ms=("extra_s", "mean"), hit_mean_us=("hit_s", "mean")
    )
    summary = totals.join(served)
    summary["extra_mean_ms"] *= 1e3
    summary["hit_mean_us"] *= 1e6
    return summary.reset_index()


# --- part 3: latency against the dense conv ---------------------------------------------------------


def factorized_variants(conv: Conv, cache: rs.FactorCache) -> list[tuple[dict, nn.Module]]:
    """Each method's module at each MACs fraction, with its rank, actual MACs fraction and weight error."""
    variants = []
    for name in METHODS:
        method = get_method(name)
        for fraction in FRACTIONS:
            rank = rank_for_fraction(method, conv, fraction)
            if rank is None:
                continue
            factors = cache.factors(conv.module, method, rank)
            info = {
                "method": name,
                "target": fraction,
                "rank": rank,
                "macs_frac": macs_fraction(method, conv, rank),
                "rel_error": relative_error(conv.module.weight, method.reconstruct(conv.module, factors)),
            }
            variants.append((info, method.build(conv.module, factors)))
    return variants


def latency_rows(convs: list[Conv], cache: rs.FactorCache, plan: Plan) -> list[dict]:
    """Per conv, batch, method and MACs fraction: latency against the dense conv, and weight error.

    ``efficiency = speedup * macs_frac`` with the module's actual MACs fraction: 1.0 means the
    module is as much faster as it is cheaper.
    """
    rows = []
    for conv in convs:
        variants = factorized_variants(conv, cache)
        for batch in plan.batches:
            x = torch.randn(batch, *conv.input_shape[1:])  # (N, C, H, W)
            dense_s, *times = forward_medians([conv.module, *(layer for _, layer in variants)], x, plan)
            for (info, _), seconds in zip(variants, times, strict=True):
                speedup = dense_s / seconds
                rows.append(
                    {
                        **conv.describe(),
                        "batch": batch,
                        **info,
                        "dense_ms": dense_s * 1e3,
                        "ms": seconds * 1e3,
                        "speedup": speedup,
                        "efficiency": speedup * info["macs_frac"],
                    }
                )
    return rows


# --- part 4: tensorly-torch at equal rank -----------------------------------------------------------

TLTORCH_FACTORIZATION = {"tucker2": "tucker", "cp": "cp"}


def import_tltorch() -> object | None:
    """The ``tltorch`` module, or None. Importing it sets tensorly's global backend: we restore it."""
    backend = tl.get_backend()
    try:
        import tltorch
    except ImportError:
        return None
    finally:
        tl.set_backend(backend)
    return tltorch


def tltorch_conv(tltorch: object, conv: Conv, method: str, rank: Rank) -> nn.Module:
    """tensorly-torch's factorized conv at our ``rank``; a Tucker keeps the spatial modes whole."""
    kwargs: dict[str, object] = {"factorization": TLTORCH_FACTORIZATION[method], "implementation": "factorized"}
    if method == "tucker2":
        kwargs.update(rank=(*rank, *conv.module.kernel_size), fixed_rank_modes="spatial")  # (r_out, r_in, kh, kw)
    else:
        kwargs.update(rank=rank)
    with warnings.catch_warnings():
        # CP ranks above a mode's size: tensorly warns, then fills the extra SVD-init columns randomly
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        return tltorch.FactorizedConv.from_conv(conv.module, **kwargs)


def hooi_columns(conv: Conv, name: str, rank: Rank) -> dict[str, float]:
    """For Tucker-2: error and fit time of our HOOI-refined variant (same layers, so same latency)."""
    if name != "tucker2":
        return {}
    hooi = get_method("tucker2_hooi")
    fresh = rs.FactorCache()
    fit_s = seconds_of(partial(fresh.factors, conv.module, hooi, rank))
    error = relative_error(conv.module.weight, hooi.reconstruct(conv.module, fresh.factors(conv.module, hooi, rank)))
    return {"ours_hooi_err": error, "ours_hooi_fit_s": fit_s}


def tltorch_rows(tltorch: object, convs: dict[str, list[Conv]], plan: Plan) -> list[dict]:
    """Our Tucker-2 / CP conv against tensorly-torch's at equal rank: fit time, weight error, latency.

    Both sides fit from scratch (ours in a fresh cache). ``ours_over_tltorch`` < 1 means ours is faster.
    Call under tensorly's PyTorch backend: tensorly-torch's decompositions and forward passes use it.
    """
    rows = []
    for (model, name), geometries in plan.tltorch_layers.items():
        method = get_method(name)
        for conv in select(convs[model], geometries):
            for fraction in FRACTIONS:
                rank = rank_for_fraction(method, conv, fraction)
                if rank is None:
                    continue
                fresh = rs.FactorCache()
                ours_fit_s = seconds_of(partial(fresh.factors, conv.module, method, rank))
                factors = fresh.factors(conv.module, method, rank)
                start = time.perf_counter()
                theirs = tltorch_conv(tltorch, conv, name, rank)
                theirs_fit_s = time.perf_counter() - start
                theirs_weight = theirs.weight.to_tensor()  # (O, I, kh, kw)
                ours = method.build(conv.module, factors)
                common = {
                    **conv.describe(),
                    "method": name,
                    "target": fraction,
                    "rank": rank,
                    "ours_err": relative_error(conv.module.weight, method.reconstruct(conv.module, factors)),
                    "tltorch_err": relative_error(conv.module.weight, theirs_weight),
                    "ours_fit_s": ours_fit_s,
                    "tltorch_fit_s": theirs_fit_s,
                    **hooi_columns(conv, name, rank),
                }
                for batch in plan.batches:
                    x = torch.randn(batch, *conv.input_shape[1:])  # (N, C, H, W)
                    ours_s, theirs_s = forward_medians([ours, theirs], x, plan)
                    rows.append(
                        {
                            **common,
                            "batch": batch,
                            "ours_ms": ours_s * 1e3,
                            "tltorch_ms": theirs_s * 1e3,
                            "ours_over_tltorch": ours_s / theirs_s,
                        }
                    )
    return rows


# --- printing and the command line ------------------------------------------------------------------


def show(title: str, table: pd.DataFrame) -> None:
    """Print a titled table with three significant digits."""
    print(f"## {title}")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    print()


def by_target(table: pd.DataFrame, index: list[str], values: list[str]) -> pd.DataFrame:
    """One column per (value, MACs fraction), named like ``speedup@25%``."""
    wide = table.pivot(index=index, columns="target", values=values)
    wide.columns = [f"{value}@{target:.0%}" for value, target in wide.columns]
    return wide


def latency_summary(latency: pd.DataFrame) -> pd.DataFrame:
    """Dense latency, then speedup and efficiency per (conv, batch, method), one column per MACs fraction."""
    table = by_target(latency, ["model", "conv", "batch", "method"], ["speedup", "efficiency"])
    dense = latency.groupby(["model", "conv", "batch", "method"], sort=False)["dense_ms"].first()
    return table.join(dense).reindex(dense.index)[["dense_ms", *table.columns]]


def error_summary(latency: pd.DataFrame) -> pd.DataFrame:
    """Rank, actual MACs fraction and relative weight error per (conv, method), one column per MACs fraction."""
    first = latency[latency["batch"] == latency["batch"].iloc[0]]
    return by_target(first, ["model", "conv", "method"], ["rank", "macs_frac", "rel_error"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--quick``, ``--threads`` and ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 plus one ResNet-18 conv, shorter timings")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--out", type=Path, help="write every result row to this CSV file")
    return parser.parse_args(argv)


def part_cache(convs: dict[str, list[Conv]], cache: rs.FactorCache, plan: Plan) -> dict[str, pd.DataFrame]:
    """Parts 1-2: fill the cache (timed per conv), then time extra ranks and hits."""
    timed = {model: select(convs[model], plan.cache_layers[model]) for model in MODELS}
    build = pd.DataFrame([row for model in MODELS for row in cache_build_rows(timed[model], cache, plan)])
    per_conv = build.pivot(index=["model", "layer", "conv"], columns="method", values="build_s")[list(METHODS)]
    show("1. seconds to fill a fresh factor cache, per conv (CP/TT: one fit at ~50% of the MACs)", per_conv)
    skipped = sum(too_slow("cp", conv, plan) for model in MODELS for conv in timed[model])
    if skipped:
        print(f"CP skipped on {skipped} convs wider than {plan.cp_max_channels} channels (minutes per fit).\n")
    serve = pd.DataFrame([row for model in MODELS for row in cache_serve_rows(timed[model], cache, plan)])
    title = "1-2. per method: total build seconds; then per extra rank (~25% of MACs) and per hit, warm cache"
    show(title, summarize_cache(build, serve))
    print("CP and TT are fitted per rank: an extra rank is a new fit (a cache miss), not a slice.\n")
    return {"cache_build": build, "cache_serve": serve}


def part_latency(convs: dict[str, list[Conv]], cache: rs.FactorCache, plan: Plan) -> dict[str, pd.DataFrame]:
    """Part 3: each method's module against the dense conv at 25/50/75% of its MACs."""
    rows = [
        row for model in MODELS for row in latency_rows(select(convs[model], plan.latency_layers[model]), cache, plan)
    ]
    latency = pd.DataFrame(rows)
    title = "3. speedup = dense / method latency; efficiency = speedup x MACs fraction (1.0 = ideal)"
    show(title, latency_summary(latency))
    show("3. rank, actual MACs fraction and relative weight error per target MACs fraction", error_summary(latency))
    return {"latency": latency}


def part_tltorch(convs: dict[str, list[Conv]], plan: Plan) -> dict[str, pd.DataFrame]:
    """Part 4: our Tucker-2 and CP convs against tensorly-torch's, when it is installed."""
    tltorch = import_tltorch()
    if tltorch is None:
        print("## 4. tltorch not installed: skipped\n")
        return {}
    with tl.backend_context("pytorch"):  # tensorly-torch's global backend, as its import sets it
        comparison = pd.DataFrame(tltorch_rows(tltorch, convs, plan))
    title = "4. ours vs tensorly-torch FactorizedConv (implementation='factorized') at equal rank"
    show(title, comparison.drop(columns="layer").set_index(["model", "conv", "method", "target", "batch"]))
    print(
        "ours_over_tltorch = our latency / tltorch's (< 1: ours is faster); *_err: relative weight error; "
        "ours_hooi_*: our tucker2_hooi (HOOI-refined, same layers and latency as tucker2).\n"
    )
    return {"tltorch": comparison}


def main(argv: list[str] | None = None) -> None:
    """Run the four parts, print their tables and optionally write the rows to CSV."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print_header(args)
    plan = QUICK if args.quick else FULL
    monitor = LoadMonitor()
    time.sleep(1.0)
    monitor.report("in the second before the run")
    start = time.perf_counter()
    convs = {model: model_convs(model) for model in MODELS}
    cache = rs.FactorCache()
    tables = part_cache(convs, cache, plan)
    monitor.report("during parts 1-2")
    tables |= part_latency(convs, cache, plan)
    monitor.report("during part 3")
    tables |= part_tltorch(convs, plan)
    monitor.report("during part 4")
    print(f"total: {time.perf_counter() - start:.0f} s; factor cache: {cache.stats}")
    if args.out is not None:
        pd.concat([t.assign(part=part) for part, t in tables.items()], ignore_index=True).to_csv(args.out, index=False)
        print(f"rows written to {args.out}")


if __name__ == "__main__":
    main()
