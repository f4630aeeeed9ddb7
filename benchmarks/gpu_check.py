"""The GPU checks in one prepared run: the CUDA tests, the latency table on the GPU, a short latency study.

1. ``pytest -m gpu``: the test suite's CUDA-marked tests (their summary line is kept).
2. Per-layer latency of ResNet-20's convolutions (32x32 inputs, batch ``--batch``) for every timing mode
   (float32 and bfloat16, contiguous and channels-last on CUDA; float32 only on a CPU): each layer dense
   and as ``svd``, ``tucker2``, ``cp`` and ``tt`` at 25% and 50% of its MACs, timed by the same code the
   latency table uses; the median factorized / dense time per method and mode (below 1: faster than dense).
3. ``benchmarks/latency_vs_macs.py`` on ResNet-20 / digits upscaled to 32x32 (``--trials`` per study,
   bfloat16 channels-last on CUDA, inference batches 1 and ``--batch``): predicted vs measured latency of
   the Pareto configs and the speed-up, at matched accuracy, of the latency study's pick over the MACs
   study's (the goals: error <= 10%, speed-up > 1.3x).
4. The memory objective on the GPU: ``benchmarks/memory_check.py``'s table with the CUDA caching allocator's
   peak as the measurement (float32, batches 1 and ``--batch``), next to the CPU trace.
5. A results page (``--page``) with the device, what each part took, and the numbers.

On a GPU machine (it needs tensorly, optuna, fvcore and plotly: ``benchmarks/gpu_wheels.sh`` downloads them as
wheels to carry)::

    python benchmarks/gpu_check.py --device cuda --out $OUT --page $OUT/RESULTS_cuda.md

Without a GPU, ``--device cpu`` runs the same steps smaller (the dry run that tests this script; its latency
study uses the ``per-layer`` strategy, which skips the sensitivity pass that takes most of an hour on a CPU)::

    python benchmarks/gpu_check.py --device cpu --trials 4 --batch 8 --out runs/gpu_check
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import memory_check  # benchmarks/ is the script's folder, on sys.path
import pandas as pd
import torch
from _machine import cpu_model

import ranksearch as rs
from ranksearch.latency import LatencySettings, device_name, layer_inputs, measure_seconds
from ranksearch.models import build_model
from ranksearch.space import SearchSpace

HERE = Path(__file__).resolve().parent
METHODS = ("svd", "tucker2", "cp", "tt")
LEVELS = (0.25, 0.5)
STUDY = """[study]
name = "gpu_resnet20"
n_trials = {trials}
seed = 0
strategy = "{strategy}"
[model]
name = "resnet20"
[data]
name = "digits"
options = {{ image_size = 32 }}
batch_size = 64
eval_batch_size = 256
[training]
epochs = {epochs}
[space]
methods = ["dense", "svd", "tucker2", "cp", "tt"]
exclude = ["conv1"]
[evaluator]
device = "{device}"
finetune_steps = 30
eval_batches = 2
bn_batches = 5
"""


def timing_modes(device: str) -> list[tuple[str, str, bool]]:
    """``(name, dtype, channels_last)`` of each timing mode the device supports."""
    if device == "cpu":
        return [("float32", "float32", False)]
    return [(f"{d}{' channels-last' if cl else ''}", d, cl) for d in ("float32", "bfloat16") for cl in (False, True)]


def run_cuda_tests(out: Path) -> str:
    """``pytest -m gpu`` in a subprocess; its last line (the summary)."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(HERE.parent / "tests")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    (out / "cuda_tests.log").write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else f"pytest exited with {done.returncode}"


def layer_latencies(device: str, batch: int, repeats: int) -> list[dict[str, object]]:
    """Factorized / dense time of every ResNet-20 conv, per method, level and timing mode."""
    model = build_model("resnet20", in_channels=1, num_classes=10).eval()
    space = SearchSpace(methods=("dense", *METHODS), cost_fractions=LEVELS, exclude=("conv1",))
    layers = space.layers(model, (1, 1, 32, 32))
    shapes = layer_inputs(model, (batch, 1, 32, 32))  # each layer's input shape at this batch
    rows = []
    for mode, dtype, channels_last in timing_modes(device):
        settings = LatencySettings(device=device, dtype=dtype, repeats=repeats, channels_last=channels_last)
        for name, choices in layers.items():
            if name not in shapes:
                continue
            module = model.get_submodule(name)
            dense = measure_seconds(module, shapes[name], settings)
            for method in (m for m in choices.methods if m != "dense"):
                for level in LEVELS:
                    rank = choices.rank(method, level)
                    small = rs.apply(torch.nn.Sequential(module), rs.CompressionConfig({"0": (method, rank)}))
                    seconds = measure_seconds(small, shapes[name], settings)
                    rows.append(
                        {"mode": mode, "layer": name, "method": method, "level": level, "ratio": seconds / dense}
                    )
    return rows


def latency_study(args: argparse.Namespace, out: Path) -> str:
    """``latency_vs_macs.py`` on the generated ResNet-20 / digits study; its printed report."""
    study = out / "gpu_resnet20.toml"
    epochs = 15 if args.device != "cpu" else 1
    strategy = "allocate" if args.device != "cpu" else "per-layer"  # the dry run skips the sensitivity pass
    study.write_text(STUDY.format(trials=args.trials, epochs=epochs, device=args.device, strategy=strategy))
    dtype, channels_last = ("bfloat16", ["--channels-last"]) if args.device != "cpu" else ("float32", [])
    command = [
        sys.executable, str(HERE / "latency_vs_macs.py"), "--study", str(study), "--trials", str(args.trials),
        "--batches", f"1,{args.batch}", "--device", args.device, "--dtype", dtype, "--out", str(out / "studies"),
        *channels_last,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=out)
    text = done.stdout + (f"\n(exit {done.returncode})\n{done.stderr[-3000:]}" if done.returncode else "")
    (out / "latency_vs_macs.log").write_text(text)
    return text


def summary(rows: list[dict[str, object]]) -> list[str]:
    lines = [
        "| timing mode | method | level | median factorized / dense time | layers faster than dense |",
        "|---|---|---|---|---|",
    ]
    keys = sorted({(r["mode"], r["method"], r["level"]) for r in rows})
    for mode, method, level in keys:
        ratios = [r["ratio"] for r in rows if (r["mode"], r["method"], r["level"]) == (mode, method, level)]
        faster = sum(r < 1 for r in ratios)
        lines.append(
            f"| {mode} | {method} | {level:.0%} | {statistics.median(ratios):.2f} | {faster} of {len(ratios)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the dry run")
    parser.add_argument("--trials", type=int, default=12, help="trials per study of the latency study")
    parser.add_argument("--batch", type=int, default=256, help="the large inference batch")
    parser.add_argument("--repeats", type=int, default=10, help="timed samples per latency")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for logs and studies")
    parser.add_argument("--page", help="write the results page here")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started, clocks = time.perf_counter(), {}
    hardware = device_name(args.device)
    print(
        f"device {args.device}: {hardware}; host {cpu_model()}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    tests = run_cuda_tests(out)
    clocks["CUDA tests"] = time.perf_counter() - started
    print(f"CUDA-marked tests: {tests}")
    rows = layer_latencies(args.device, args.batch, args.repeats)
    clocks["layer latencies"] = time.perf_counter() - started - sum(clocks.values())
    table = summary(rows)
    print("\n".join(table))
    report = latency_study(args, out)
    clocks["latency study"] = time.perf_counter() - started - sum(clocks.values())
    print(report)
    memory_table, memory_summary = memory_check.markdown(
        pd.DataFrame([r for name in memory_check.MODELS for b in (1, args.batch)
                      for r in memory_check.rows_for(name, b, args.device)]))  # fmt: skip
    clocks["memory"] = time.perf_counter() - started - sum(clocks.values())
    print(memory_table + "\n" + memory_summary)
    if args.page:
        took = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in clocks.items())
        page = [
            f"# GPU checks: {hardware}",
            "",
            f"`python benchmarks/gpu_check.py --device {args.device} --trials {args.trials} --batch {args.batch}` "
            f"(torch {torch.__version__}); took {took}.",
            "",
            f"## CUDA-marked tests\n\n{tests}\n",
            f"## Per-layer latency of ResNet-20's convs (batch {args.batch}, 32x32)\n",
            *table,
            "",
            "## Latency study vs MACs study (benchmarks/latency_vs_macs.py)\n",
            "```",
            report.strip(),
            "```",
            f"\n## Memory: traced vs measured on {args.device} (benchmarks/memory_check.py)\n",
            memory_table,
            "",
            memory_summary,
        ]
        Path(args.page).write_text("\n".join(page) + "\n")
        print(f"results page: {args.page}")


if __name__ == "__main__":
    main()
