"""The CPU memory objective checked against a measurement: traced peak activations vs the profiler's allocations.

For the study models (small_cnn on 32x32 digits, ResNet-20 on 28x28 Fashion-MNIST), dense and a few uniform
configs (SVD, Tucker-2, CP, TT at 25% and 50% of each layer's MACs), at batch 1 and 32 (float32, one thread):
weights, the traced activation peak (what the ``memory`` objective counts on a CPU), the peak of the CPU
allocator's records in ``torch.profiler`` (which also sees scratch memory inside kernels), their ratio, and
the memory ratio to dense by each (what the objective compares). Prints a markdown table (``--results``
writes it to a page).

    python benchmarks/memory_check.py                 # about a minute
    python benchmarks/memory_check.py --results benchmarks/RESULTS_memory.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path

from ranksearch.compress import apply
from ranksearch.heuristics import uniform_config
from ranksearch.memory import measured_cpu_activation_peak, memory_use, traced_activation_peak, weight_bytes
from ranksearch.models import build_model

MODELS = {"small_cnn": ({"in_channels": 1, "width": 32}, (1, 32, 32)), "resnet20": ({"in_channels": 1}, (1, 28, 28))}
CONFIGS = [("dense", None)] + [(m, f) for m in ("svd", "tucker2", "cp", "tt") for f in (0.5, 0.25)]


def rows_for(name: str, batch: int, device: str = "cpu") -> list[dict[str, object]]:
    """Weights, traced and measured activation peaks (KiB) of the model's configs at ``batch``; on CUDA the
    measurement is the caching allocator's peak (float32)."""
    options, sample = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, **options).eval()
    inputs = torch.randn(batch, *sample)
    rows = []
    for method, fraction in CONFIGS:
        if method == "dense":
            compressed = model
        else:
            config = uniform_config(model, method=method, cost_fraction=fraction, input_shape=(1, *sample))
            compressed = apply(model, config).eval()
        traced = traced_activation_peak(compressed, inputs)
        if device == "cpu":
            measured = measured_cpu_activation_peak(compressed, inputs)
        else:
            measured = memory_use(compressed, inputs, device=device).activations_bytes
        label = method if fraction is None else f"{method} {fraction:.0%}"
        rows.append({"model": name, "batch": batch, "config": label,
                     "weights_kib": weight_bytes(compressed) / 1024, "traced_kib": traced / 1024,
                     "measured_kib": measured / 1024, "measured / traced": measured / max(traced, 1)})  # fmt: skip
    frame = pd.DataFrame(rows)
    dense = frame.iloc[0]
    frame["memory ratio, traced"] = (frame["weights_kib"] + frame["traced_kib"]) / (
        dense["weights_kib"] + dense["traced_kib"]
    )
    frame["memory ratio, measured"] = (frame["weights_kib"] + frame["measured_kib"]) / (
        dense["weights_kib"] + dense["measured_kib"]
    )
    return frame.to_dict("records")


def markdown(table: pd.DataFrame, seconds: float | None = None) -> tuple[str, str]:
    """The table as markdown and a one-line summary of how far measured and traced are apart."""
    spread = table["memory ratio, measured"] / table["memory ratio, traced"]
    ratio = table["measured / traced"]
    summary = (
        f"measured / traced activation peak: median {ratio.median():.2f}, range {ratio.min():.2f}-{ratio.max():.2f};"
        f" memory ratio to dense, measured / traced: {spread.min():.2f}-{spread.max():.2f}"
    ) + ("" if seconds is None else f"; {seconds:.0f} s")
    return table.to_markdown(index=False, floatfmt=".3f"), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,32", help="batch sizes (default 1,32)")
    parser.add_argument("--device", default="cpu", help="cpu (profiler) or cuda (the allocator's peak)")
    parser.add_argument("--results", help="write the table to this markdown page")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = [r for name in MODELS for b in map(int, args.batches.split(",")) for r in rows_for(name, b, args.device)]
    table = pd.DataFrame(rows)
    text, summary = markdown(table, time.perf_counter() - start)
    print(text + "\n\n" + summary)
    if args.results:
        head = (
            "# The CPU memory objective against a measurement\n\n"
            f"`python benchmarks/memory_check.py --results {args.results}` on {cpu_model()}, one thread, "
            f"torch {torch.__version__}, float32. *traced*: the objective's CPU estimate (every op's new "
            "output storage while alive); *measured*: the peak of the CPU allocator's records in "
            "torch.profiler, which also counts scratch memory allocated and freed inside a kernel "
            "(oneDNN's reordered copies, im2col). KiB.\n\n"
        )
        Path(args.results).write_text(head + text + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
