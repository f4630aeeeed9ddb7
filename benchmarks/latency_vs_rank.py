"""Latency against rank for a few factorized layers: where hardware-aligned ranks run faster ("steps").

On CUDA tensor cores at 16-bit, matrix sizes that are multiples of 8 or 16 run much faster than their
neighbours (a bfloat16 SVD-factorized Linear 1024->4096 on an H100: 0.42x the dense speed at rank 201,
1.71x at rank 208), so latency is a staircase in the rank, not the straight line MACs predict; CPU
kernels that block channels by 8 or 16 (oneDNN) can show steps too. This script shows the staircase, or
its absence, on the machine it runs on. For each layer

* a 3x3 Conv2d 256->256 at 8x8 (a ResNet-18 stage at CIFAR resolution), svd and tucker2;
* a 3x3 Conv2d 64->64 at 32x32, svd and tucker2;
* a Linear 1024->4096, svd;

it times every rank of a window (default 47-81, 15-49 and 191-225: three multiples of 16 with both
neighbours) and every 8th rank up to the maximum; each factorized layer is built with ``rs.apply`` on a
one-layer Sequential and timed with ``ranksearch.latency.measure_seconds`` (a median of repeats,
CUDA-synchronized). It prints

1. per layer and method: rank, MACs fraction of the dense layer, latency, speed-up against the dense
   layer (timed in the same run, through the sweep), the spread over rounds, and whether the rank is a
   multiple of 8 / 16;
2. the step size per layer and method, from the latencies ``t(r)``: at every aligned rank ``r`` with both
   neighbours timed, ``below = t(r - d) / t(r)``, ``above = t(r + d) / t(r)`` and ``step = (below +
   above) / 2``, medians over ``r`` (see :func:`step_rows`); 1.0 means no step;
3. per MACs budget: the largest rank within it, the largest multiples of 8 and 16 within it, and the
   largest rank timed that runs no slower than the first.

The sweep runs several rounds (alternately up and down the ranks) and keeps each rank's median round
(see :func:`sweep_layer`), so one slow spell of a shared machine does not show. Tucker-2 takes an int rank
``r`` as ``(r, r)``. The load of other processes is printed per layer: on a shared CPU, rerun when it
warns, or pass ``--threads 1`` (a single thread does not stall when the other core is busy).

On a 2-core Xeon VM (float32, batch 32; full run 1.5 min, ``--quick`` 5 s) the convs step at multiples
of 16 (oneDNN's channel blocks: rank 16k + 1 costs 1.2-1.4x rank 16k, rank 16k - 1 the same as 16k),
and the Linear (a GEMM) has no step to speak of (aligned ranks 2-5% faster than their neighbours).

Usage::

    python benchmarks/latency_vs_rank.py [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--batch N]
        [--threads N] [--layers conv256 conv64 linear] [--window LO:HI] [--stride N] [--budgets 0.1,0.25,0.5]
        [--rounds N] [--repeats N] [--cudnn-benchmark] [--quick] [--csv PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path
from decompositions import LoadMonitor
from torch import nn

import ranksearch as rs
from ranksearch.decompositions import Decomposition, get_method
from ranksearch.errors import RanksearchError
from ranksearch.latency import LatencySettings, device_name, measure_seconds

STEPS = ((8, 1), (16, 1), (16, 8))  # (multiple, neighbour distance) pairs of the step summary
DEFAULT_BUDGETS = (0.1, 0.25, 0.5)
DENSE_EVERY = 16  # the dense layer is timed again after this many factorized ones


@dataclass(frozen=True)
class Layer:
    """One layer to sweep.

    Attributes:
        key: its name on the command line (``--layers``).
        label: how tables name it.
        build: makes the (seeded) dense layer on the CPU in float32.
        sample_shape: one input sample's shape (the batch is prepended).
        methods: the decomposition methods swept.
        window: the ranks ``[lo, hi]`` timed one by one (clipped to the method's maximum).
    """

    key: str
    label: str
    build: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]
    methods: tuple[str, ...]
    window: tuple[int, int]


LAYERS = (
    Layer(
        "conv256",
        "conv3x3 256->256 @8x8",
        lambda: nn.Conv2d(256, 256, 3, padding=1),
        (256, 8, 8),
        ("svd", "tucker2"),
        (47, 81),
    ),
    Layer(
        "conv64",
        "conv3x3 64->64 @32x32",
        lambda: nn.Conv2d(64, 64, 3, padding=1),
        (64, 32, 32),
        ("svd", "tucker2"),
        (15, 49),
    ),
    Layer("linear", "linear 1024->4096", lambda: nn.Linear(1024, 4096), (1024,), ("svd",), (191, 225)),
)


@dataclass(frozen=True)
class Plan:
    """How densely and how long one run measures."""

    window: tuple[int, int] | None  # None: each layer's own window
    quick: bool
    rounds: int  # sweeps over every rank; each rank keeps its median
    stride: int | None  # every stride-th rank up to the maximum; None: 8 (quick: a quarter and half of it)
    budgets: tuple[float, ...]


def int_rank_cap(method: Decomposition, module: nn.Module) -> int:
    """The largest int rank ``method`` accepts (an int rank means ``min(r, cap)`` per component)."""
    cap = method.max_rank(module)
    return max(cap) if isinstance(cap, tuple) else int(cap)


def sweep_ranks(top: int, window: tuple[int, int], plan: Plan) -> list[int]:
    """Every rank of the window and every stride-th rank up to ``top``.

    Quick: the window's middle multiple of 16 with its two neighbours, and a quarter and half of ``top``.
    """
    lo, hi = window
    if plan.quick:
        middle = 16 * round((lo + hi) / 32)
        coarse = set(range(plan.stride, top + 1, plan.stride)) if plan.stride else {top // 4, top // 2}
        return sorted({r for r in (middle - 1, middle, middle + 1) if 1 <= r <= top} | coarse - {0})
    ranks = set(range(max(1, lo), min(hi, top) + 1))
    ranks |= set(range(plan.stride or 8, top + 1, plan.stride or 8))
    return sorted(ranks)


def dense_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of the dense layer for ``input_shape`` (batch included)."""
    return rs.count(nn.Sequential(module), input_shape).macs


def sweep_layer(layer: Layer, settings: LatencySettings, plan: Plan) -> tuple[pd.DataFrame, list[float]]:
    """Time the dense layer and every (method, rank) of the sweep; the per-rank rows and the dense timings.

    The sweep runs ``plan.rounds`` times, alternately up and down the ranks, so neighbouring ranks are
    timed seconds apart and each rank at several moments: a rank keeps the median of its rounds
    (``spread``: slowest / fastest round), which a slow spell of a shared machine in one round does not
    move. The dense layer is timed at the start of every round and after every ``DENSE_EVERY`` ranks;
    the speed-up divides the median of all its timings by the rank's median.
    """
    torch.manual_seed(0)
    module = layer.build().eval()
    model = nn.Sequential(module)
    input_shape = (settings.batch_size, *layer.sample_shape)
    macs = dense_macs(module, input_shape)
    cache = rs.FactorCache()  # one SVD / HOSVD per method; every rank is a slice of it
    points = []  # (method, rank, canonical rank)
    for name in layer.methods:
        method = get_method(name)
        for rank in sweep_ranks(int_rank_cap(method, module), plan.window or layer.window, plan):
            points.append((method, rank, method.canonical_rank(module, rank)))
    samples: dict[tuple[str, int], list[float]] = {(method.name, rank): [] for method, rank, _ in points}
    dense = []
    for round_ in range(plan.rounds):
        dense.append(measure_seconds(model, input_shape, settings))
        for timed, (method, rank, canonical) in enumerate(points if round_ % 2 == 0 else points[::-1], 1):
            compressed = rs.apply(model, rs.CompressionConfig({"0": (method.name, canonical)}), cache=cache)
            samples[method.name, rank].append(measure_seconds(compressed, input_shape, settings))
            if timed % DENSE_EVERY == 0:
                dense.append(measure_seconds(model, input_shape, settings))
    dense.append(measure_seconds(model, input_shape, settings))
    dense_ms = statistics.median(dense) * 1e3
    rows = []
    for method, rank, canonical in points:
        seconds = samples[method.name, rank]
        ms = statistics.median(seconds) * 1e3
        rows.append(
            {
                "layer": layer.label,
                "method": method.name,
                "rank": rank,
                "canonical_rank": "x".join(map(str, canonical)) if isinstance(canonical, tuple) else str(canonical),
                "macs_frac": method.cost(module, canonical, input_shape).macs / macs,
                "ms": ms,
                "speedup": dense_ms / ms,
                "spread": max(seconds) / min(seconds),
                "x8": rank % 8 == 0,
                "x16": rank % 16 == 0,
                "dense_ms": dense_ms,
            }
        )
    return pd.DataFrame(rows), dense


def step_rows(table: pd.DataFrame) -> list[dict]:
    """Per (layer, method, multiple, distance): how much faster aligned ranks run than their neighbours.

    With ``t(r)`` the median latency of rank ``r``, for each rank ``r`` that is a multiple and whose
    neighbours ``r - d`` and ``r + d`` were both timed: ``below = t(r - d) / t(r)``, ``above = t(r + d) /
    t(r)`` and ``step = (below + above) / 2``; the
    medians over such ``r`` are kept, with the min and max of ``step``. A smooth (linear) trend reads
    ``step`` 1.0. Kernels that pad to the next multiple give a staircase (``below`` ~1, ``above`` > 1);
    a slow fallback for unaligned sizes makes aligned ranks faster than both sides (both > 1).
    """
    rows = []
    for (label, method), group in table.groupby(["layer", "method"], sort=False):
        ms = dict(zip(group["rank"], group["ms"], strict=True))
        for multiple, distance in STEPS:
            aligned = [r for r in ms if r % multiple == 0 and r - distance in ms and r + distance in ms]
            if not aligned:
                continue
            below = [ms[r - distance] / ms[r] for r in aligned]
            above = [ms[r + distance] / ms[r] for r in aligned]
            steps = [(b + a) / 2 for b, a in zip(below, above, strict=True)]
            rows.append(
                {
                    "layer": label,
                    "method": method,
                    "aligned": f"r%{multiple}==0",
                    "vs": f"r+-{distance}",
                    "n": len(aligned),
                    "ranks": ",".join(map(str, aligned)) if len(aligned) <= 4 else f"{aligned[0]}..{aligned[-1]}",
                    "step": statistics.median(steps),
                    "below": statistics.median(below),
                    "above": statistics.median(above),
                    "min": min(steps),
                    "max": max(steps),
                }
            )
    return rows


def budget_rows(table: pd.DataFrame, budgets: Sequence[float]) -> list[dict]:
    """Per (layer, method, MACs budget): which timed rank to pick.

    ``largest``: the largest rank within the budget (what a MACs-only search picks); ``x8`` / ``x16``: the
    largest multiple of 8 / 16 within it; ``no_slower``: the largest rank timed, any MACs, that runs no
    slower than ``largest`` (above ``largest``: rank the hardware gives away). Each with its speed-up.
    """
    rows = []
    for (label, method), group in table.groupby(["layer", "method"], sort=False):
        group = group.set_index("rank").sort_index()
        for budget in budgets:
            within = group[group["macs_frac"] <= budget]
            if within.empty:
                continue
            largest = int(within.index.max())
            row = {"layer": label, "method": method, "budget": budget, "largest": largest}
            row["speedup"] = group.at[largest, "speedup"]
            for multiple in (8, 16):
                aligned = within[within.index % multiple == 0]
                pick = int(aligned.index.max()) if not aligned.empty else None
                row[f"x{multiple}"] = pick
                row[f"speedup_x{multiple}"] = None if pick is None else group.at[pick, "speedup"]
            free = int(group[group["ms"] <= group.at[largest, "ms"]].index.max())
            row |= {"no_slower": free, "its_macs": group.at[free, "macs_frac"]}
            row["its_speedup"] = group.at[free, "speedup"]
            rows.append(row)
    return rows


# --- printing and the command line ------------------------------------------------------------------


def show(title: str, table: pd.DataFrame) -> None:
    """Print a titled table with three significant digits."""
    print(f"## {title}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print()


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default=default_device(), help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="16-bit on CUDA only (default: bfloat16 on CUDA, float32 on the CPU)",
    )
    parser.add_argument("--batch", type=int, help="batch size (default: 256 on CUDA, 32 on the CPU)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads while timing (default: torch's)")
    parser.add_argument(
        "--layers",
        nargs="+",
        choices=[layer.key for layer in LAYERS],
        default=[layer.key for layer in LAYERS],
        help="which layers to sweep (default: all)",
    )
    parser.add_argument("--window", help="LO:HI, the ranks timed one by one in every layer (default: per layer)")
    parser.add_argument("--stride", type=int, help="also time every N-th rank up to the maximum (default 8)")
    parser.add_argument(
        "--budgets",
        default=",".join(map(str, DEFAULT_BUDGETS)),
        help="comma-separated MACs fractions of the dense layer for the budget table (default %(default)s)",
    )
    parser.add_argument("--repeats", type=int, help="timed samples per measurement (default: 2 CPU, 10 CUDA)")
    parser.add_argument("--rounds", type=int, help="sweeps over every rank, median kept (default 5; 3 quick or CUDA)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its conv algorithms first")
    parser.add_argument("--quick", action="store_true", help="a few ranks per layer, fewer rounds")
    parser.add_argument("--csv", type=Path, help="write every timed (layer, method, rank) row to this CSV file")
    args = parser.parse_args(argv)
    try:
        cuda = torch.device(args.device).type == "cuda"
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch = (256 if cuda else 32) if args.batch is None else args.batch
    try:
        args.budgets = tuple(float(b) for b in args.budgets.split(",") if b.strip())
        if args.window is not None:
            lo, hi = (int(v) for v in args.window.split(":"))
            if not 1 <= lo <= hi:
                raise ValueError
            args.window = (lo, hi)
    except ValueError:
        parser.error("--window is LO:HI with 1 <= LO <= HI, --budgets a comma-separated list of numbers")
    for option in ("stride", "rounds"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1")
    try:
        args.settings = settings_of(args)
    except (RanksearchError, RuntimeError) as error:  # a bad device, a 16-bit dtype on the CPU...
        parser.error(str(error))
    return args


def settings_of(args: argparse.Namespace) -> LatencySettings:
    """Timing settings: short on the CPU (a full run in minutes on 2 cores), longer on CUDA (cheap there)."""
    cuda = torch.device(args.device).type == "cuda"
    repeats = (10 if cuda else 2) if args.repeats is None else args.repeats
    return LatencySettings(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch,
        threads=args.threads,
        warmup=5 if cuda else 1,
        repeats=repeats,
        min_sample_seconds=0.01,
    )


def print_header(args: argparse.Namespace, settings: LatencySettings, plan: Plan) -> None:
    """Device, versions and timing settings: the context every number below depends on."""
    device = torch.device(settings.device)
    print(f"# ranksearch latency vs rank ({'quick' if args.quick else 'full'} run)")
    print(f"date:     {datetime.datetime.now().isoformat(timespec='seconds')}")
    if device.type == "cuda":
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        print(f"device:   {device_name(device)} (CUDA {torch.version.cuda}, compute capability {capability})")
        print(
            f"cuda:     cudnn {torch.backends.cudnn.version()}, cudnn.benchmark={torch.backends.cudnn.benchmark}, "
            f"allow_tf32 matmul={torch.backends.cuda.matmul.allow_tf32} conv={torch.backends.cudnn.allow_tf32}"
        )
    print(f"host:     {cpu_model()} ({os.cpu_count()} logical cores), {platform.machine()}, {platform.system()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, ranksearch {rs.__version__}")
    threads = settings.threads or torch.get_num_threads()
    print(f"threads:  {threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(
        f"timing:   {settings.dtype}, batch {settings.batch_size}, warmup {settings.warmup}, median of "
        f"{settings.repeats} samples of >= {settings.min_sample_seconds * 1e3:g} ms (latency.measure_seconds); "
        f"{plan.rounds} rounds, the median kept"
    )
    print()


def main(argv: list[str] | None = None) -> None:
    """Sweep every layer, print the per-rank, step and budget tables, optionally write the rows to CSV."""
    args = parse_args(argv)
    settings = args.settings
    cuda = torch.device(settings.device).type == "cuda"
    rounds = (3 if args.quick or cuda else 5) if args.rounds is None else args.rounds
    plan = Plan(args.window, args.quick, rounds, args.stride, args.budgets)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    print_header(args, settings, plan)
    monitor = LoadMonitor()
    time.sleep(0.5)
    monitor.report("before the run")
    start = time.perf_counter()
    tables = []
    for layer in (layer for layer in LAYERS if layer.key in args.layers):
        layer_start = time.perf_counter()
        table, dense = sweep_layer(layer, settings, plan)
        tables.append(table)
        spread, seconds = max(dense) / min(dense), time.perf_counter() - layer_start
        shape = (settings.batch_size, *layer.sample_shape)
        print(
            f"# {layer.label}, input {shape}: dense {table['dense_ms'].iloc[0]:.3g} ms (median of {len(dense)} "
            f"timings through the sweep, slowest/fastest {spread:.2f}); swept in {seconds:.0f} s"
        )
        for method, rows in table.groupby("method", sort=False):
            columns = ["rank", "canonical_rank", "macs_frac", "ms", "speedup", "spread", "x8", "x16"]
            if method == "svd":
                columns.remove("canonical_rank")
            show(f"{layer.label} | {method}", rows[columns])
        monitor.report(f"while {layer.label} was timed")
    results = pd.concat(tables, ignore_index=True)
    device = device_name(settings.device) if torch.device(settings.device).type == "cuda" else "cpu"
    steps = pd.DataFrame(step_rows(results))
    title = (
        f"step = mean(t(r-d), t(r+d)) / t(r) at aligned ranks r, t = latency, median over r ({device} {settings.dtype})"
    )
    if steps.empty:
        print(f"## {title}: no aligned rank with both neighbours timed\n")
    else:
        show(title, steps)
    budgets = pd.DataFrame(budget_rows(results, plan.budgets))
    if not budgets.empty:
        show(
            "per MACs budget (fraction of the dense layer): the largest rank within it, the largest multiples of "
            "8 and 16 within it, and the largest rank no slower than the first (any MACs)",
            budgets,
        )
    print(f"total: {time.perf_counter() - start:.0f} s")
    if args.csv is not None:
        cuda = torch.device(settings.device).type == "cuda"
        context = {
            "device": device_name(settings.device) if cuda else cpu_model(),
            "threads": None if cuda else settings.threads or torch.get_num_threads(),
            "dtype": settings.dtype,
            "batch": settings.batch_size,
        }
        results.assign(**context).to_csv(args.csv, index=False)
        print(f"rows written to {args.csv}")


if __name__ == "__main__":
    main()
