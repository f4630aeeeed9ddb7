"""Data-aware vs plain decompositions on a trained CNN: per-layer output error and zero-shot accuracy.

For each method pair (``svd``/``svd_whiten``, ``tucker2``/``tucker2_whiten``, ``cp``/``cp_refit``,
``tt``/``tt_refit``) and MACs target (50/25/10% of dense), both methods get the *same* ranks: the plain
method's uniform config at the target (``heuristics.uniform_config``), so parameters and MACs are equal.
Measured per config:

- zero-shot accuracy after BatchNorm recalibration (no fine-tune), on the study's validation subset,
  the number the search's cheap per-layer curves rely on;
- per-layer relative output error on held-out inputs: ``tr(dW C dW^T) / tr(W C W^T)`` with ``C`` the second
  moment of the layer's inputs on validation batches (not the calibration batches).

With ``--allocation``, the product's view: per-layer sensitivity curves (each layer alone at each method and
cost level, scored by the proxy: BatchNorm recalibration, no fine-tune) and one knapsack allocation per
target, once with the plain methods only and once with the data-aware ones offered too (the search then
picks plain or data-aware per layer); each allocation is measured zero-shot after recalibration and after
the study's brief fine-tune. The plain curves are read from ``--plain-sensitivity`` (the search-quality
benchmark's, when measured on the same evaluator) or measured.

Calibration: the first ``--calibration-batches`` batches of the training loader (the evaluator's draw). The
calibration time and each method's decomposition time are reported. Numbers go to ``--out`` (JSON) and,
with ``--page``, to a Markdown results page that also takes the transformer part
(``benchmarks/data_aware_transformer.py``'s Markdown, when it exists).

Run (about 15 minutes on 2 busy CPU cores; the dense model is trained or read from the study's cache)::

    python benchmarks/data_aware.py --study studies/fashion_resnet20.toml --page benchmarks/RESULTS_data_aware.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import ranksearch as rs
from ranksearch.allocation import Allocator, Knobs, option_costs
from ranksearch.data import load_dataset, make_loaders
from ranksearch.decompositions import get_method
from ranksearch.evaluator import Evaluator
from ranksearch.heuristics import uniform_config
from ranksearch.runner import load_model
from ranksearch.screening import Screen
from ranksearch.sensitivity import Sensitivity, measure_sensitivity
from ranksearch.studyfile import load_study_file

PAIRS = (("svd", "svd_whiten"), ("tucker2", "tucker2_whiten"), ("cp", "cp_refit"), ("tt", "tt_refit"))
TARGETS = (0.5, 0.25, 0.1)


def relative_output_error(module: torch.nn.Module, approx: torch.Tensor, moment: torch.Tensor) -> float:
    """``tr(dW C dW^T) / tr(W C W^T)`` summed over groups, ``C`` ``(g, d, d)`` (float64)."""
    groups = moment.shape[0]
    weight = module.weight.detach().double().reshape(groups, -1, moment.shape[-1])
    diff = weight - approx.double().reshape(weight.shape)
    error = torch.einsum("god,gde,goe->", diff, moment, diff)
    return float(error / torch.einsum("god,gde,goe->", weight, moment, weight))


def layer_errors(
    evaluator: Evaluator, config: rs.CompressionConfig, held_out: rs.Calibration, seconds: dict[str, float]
) -> dict[str, float]:
    """Per-layer relative output error of ``config`` on held-out inputs; decomposition time into ``seconds``."""
    errors = {}
    for layer in config.resolve(evaluator.model):
        statistics = evaluator.calibration[layer.name] if layer.method.data_aware else None
        before = evaluator.cache.stats.seconds
        factors = evaluator.cache.factors(layer.module, layer.method, layer.rank, statistics)
        seconds[layer.method.name] = seconds.get(layer.method.name, 0.0) + evaluator.cache.stats.seconds - before
        approx = layer.method.reconstruct(layer.module, factors)
        errors[layer.name] = relative_output_error(layer.module, approx, held_out[layer.name].second_moment)
    return errors


def _takes(plain: str, aware: str, module: torch.nn.Module) -> bool:
    return all(get_method(m).unsupported_reason(module) is None for m in (plain, aware))


def geometric_mean(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).log().mean().exp())


def run(args: argparse.Namespace) -> dict[str, object]:
    commit = _commit()  # the code measured: read before the run, which can outlast later commits
    study_file = load_study_file(args.study)
    splits = load_dataset(study_file.data.name, **study_file.data.options)
    data = study_file.data
    train_loader, val_loader = make_loaders(
        splits, batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, seed=study_file.study.seed
    )
    model = load_model(study_file, splits, print)
    settings = dataclasses.replace(study_file.evaluator, finetune_steps=0, calibration_batches=args.calibration_batches)
    clock = time.process_time()
    evaluator = Evaluator(model, train_loader, val_loader, settings)
    calibration = evaluator.calibration
    held_out = rs.calibrate(evaluator.model, val_loader, batches=args.held_out_batches, seed=1)
    print(
        f"dense accuracy {evaluator.dense.accuracy:.4f}; calibration: {calibration.batches} batches "
        f"({calibration.samples} images) in {calibration.seconds:.1f} s, {calibration.nbytes / 2**20:.1f} MiB"
    )
    searched = list(study_file.space.layers(model, evaluator.dense.input_shape))
    seconds: dict[str, float] = {}
    rows = []
    for plain, aware in PAIRS:
        for target in TARGETS:
            both = [n for n in searched if _takes(plain, aware, evaluator.model.get_submodule(n))]
            base = uniform_config(
                evaluator.model, cost_fraction=target, input_shape=evaluator.dense.input_shape, method=plain,
                layers=both,
            )  # fmt: skip
            for method in (plain, aware):
                config = rs.CompressionConfig({n: (method, rank) for n, (_, rank) in base.items()})
                errors = layer_errors(evaluator, config, held_out, seconds)
                result = evaluator.evaluate(config)
                row = {
                    "pair": plain,
                    "method": method,
                    "target": target,
                    "macs_ratio": result.macs_ratio,
                    "params_ratio": result.params_ratio,
                    "zero_shot": result.accuracy_zero_shot,
                    "recalibrated": result.accuracy_recalibrated,
                    "output_error_gmean": geometric_mean(list(errors.values())),
                    "layer_errors": errors,
                    "failure": result.failure,
                }
                rows.append(row)
                print(
                    f"{method:15s} @ {target:.0%}: MACs {result.macs_ratio:.3f}, recalibrated accuracy "
                    f"{result.accuracy_recalibrated:.4f}, layer output error (geometric mean) "
                    f"{row['output_error_gmean']:.4f}"
                )
    allocation = None
    if args.allocation:
        allocation = allocation_part(args, study_file, model, train_loader, val_loader, evaluator)
    return {
        "allocation": allocation,
        "command": " ".join(sys.argv),
        "commit": commit,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "study": args.study,
        "dense_accuracy": evaluator.dense.accuracy,
        "calibration": {
            "batches": calibration.batches,
            "images": calibration.samples,
            "seconds": calibration.seconds,
            "mib": calibration.nbytes / 2**20,
        },
        "held_out_batches": args.held_out_batches,
        "decomposition_seconds": seconds,
        "cpu_seconds": time.process_time() - clock,
        "rows": rows,
    }


def allocation_part(
    args: argparse.Namespace,
    study_file: object,
    model: torch.nn.Module,
    train_loader: object,
    val_loader: object,
    evaluator: Evaluator,
) -> dict[str, object]:
    """One-shot allocations per target, plain methods only vs plain and data-aware, zero-shot and fine-tuned."""
    clock = time.process_time()
    plain_methods = tuple(m for m in study_file.space.methods if m != "dense")
    aware_methods = tuple(get_method(m).name for p, m in PAIRS if p in plain_methods)
    shape = evaluator.dense.input_shape
    spaces = {
        "plain": study_file.space,
        "data-aware": dataclasses.replace(study_file.space, methods=(*study_file.space.methods, *aware_methods)),
    }
    layers = {name: space.layers(model, shape) for name, space in spaces.items()}
    screen = Screen(evaluator)
    stored = Path(args.plain_sensitivity) if args.plain_sensitivity else None
    plain = None
    if stored is not None and stored.exists():
        plain = Sensitivity.from_dict(json.loads(stored.read_text()))
        if plain.dense_loss != screen.dense.loss:
            print(f"{stored}: measured on another evaluator (dense proxy loss {plain.dense_loss}); measuring")
            plain = None
    if plain is None:
        plain = measure_sensitivity(screen, layers["plain"])
    start = time.process_time()
    aware = measure_sensitivity(screen, layers["data-aware"], methods=aware_methods)
    aware_seconds = time.process_time() - start
    merged = Sensitivity(plain.dense_loss, plain.dense_metric, [*plain.points, *aware.points], probes=aware.probes)
    curves = {"plain": plain, "data-aware": merged}
    tuned = Evaluator(model, train_loader, val_loader, study_file.evaluator, calibration=evaluator.calibration,
                      cache=evaluator.cache)  # fmt: skip
    rows = []
    for arm, sensitivity in curves.items():
        allocator = Allocator(layers[arm], sensitivity, option_costs(evaluator.model, layers[arm], shape))
        for target in TARGETS:
            config = allocator.config(Knobs(target))
            zero, fine = evaluator.evaluate(config), tuned.evaluate(config)
            methods: dict[str, int] = {}
            for method, _ in config.values():
                methods[method] = methods.get(method, 0) + 1
            row = {"arm": arm, "target": target, "macs_ratio": fine.macs_ratio, "methods": methods}
            rows.append({**row, "recalibrated": zero.accuracy_recalibrated, "finetuned": fine.accuracy})
            print(f"allocation {arm:10s} @ {target:.0%}: MACs {fine.macs_ratio:.3f}, recalibrated "
                  f"{zero.accuracy_recalibrated:.4f}, fine-tuned {fine.accuracy:.4f}; {methods}")  # fmt: skip
    return {
        "rows": rows,
        "aware_probes": aware.probes,
        "aware_sensitivity_cpu_seconds": aware_seconds,
        "finetune_steps": study_file.evaluator.finetune_steps,
        "cpu_seconds": time.process_time() - clock,
    }


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(result: dict[str, object]) -> str:
    """The CNN section of the results page."""
    rows = result["rows"]
    by = {(r["method"], r["target"]): r for r in rows}
    cal = result["calibration"]
    lines = [
        f"## ResNet-20 / Fashion-MNIST: zero-shot after BatchNorm recalibration ({result['study']})",
        "",
        f"Dense accuracy {result['dense_accuracy']:.4f} on the study's validation subset. Calibration: "
        f"{cal['batches']} training batches ({cal['images']} images), {cal['seconds']:.1f} s, "
        f"{cal['mib']:.1f} MiB of statistics. Each pair shares the plain method's uniform ranks at the target, "
        "so MACs and parameters are equal. Output error: geometric mean over layers of "
        "tr(dW C dW^T) / tr(W C W^T), C from "
        f"{result['held_out_batches']} held-out validation batches.",
        "",
        "| pair | MACs target | MACs | zero-shot, plain / data-aware | after BN recalibration, plain / data-aware "
        "| gain (points) | layer output error, plain / data-aware | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for plain, aware in PAIRS:
        for target in TARGETS:
            p, a = by[(plain, target)], by[(aware, target)]
            lines.append(
                f"| {plain} / {aware} | {target:.0%} | {p['macs_ratio']:.3f} | {p['zero_shot']:.4f} / "
                f"{a['zero_shot']:.4f} | {p['recalibrated']:.4f} / {a['recalibrated']:.4f} "
                f"| {100 * (a['recalibrated'] - p['recalibrated']):+.1f} "
                f"| {p['output_error_gmean']:.4f} / {a['output_error_gmean']:.4f} "
                f"| {p['output_error_gmean'] / a['output_error_gmean']:.1f}x |"
            )
    gains = {
        plain: 100 * (by[(aware, 0.25)]["recalibrated"] - by[(plain, 0.25)]["recalibrated"]) for plain, aware in PAIRS
    }
    met = [p for p, g in gains.items() if g >= 10]
    lines += [
        "",
        "Goal (zero-shot accuracy after recalibration at 25% MACs at least 10 points above plain): gain "
        + ", ".join(f"{p} {g:+.1f}" for p, g in gains.items())
        + f" points; met by {', '.join(met) or 'none'}.",
    ]
    if result.get("allocation"):
        lines += ["", *allocation_markdown(result["allocation"])]
    decompose = ", ".join(f"{m} {s:.1f} s" for m, s in sorted(result["decomposition_seconds"].items()))
    lines += ["", f"Decomposition time over the three targets: {decompose}. Whole CNN part: "
              f"{result['cpu_seconds'] / 60:.1f} CPU minutes."]  # fmt: skip
    return "\n".join(lines) + "\n"


def allocation_markdown(part: dict[str, object]) -> list[str]:
    by = {(r["arm"], r["target"]): r for r in part["rows"]}
    lines = [
        "### One-shot allocation: the search's menu with and without data-aware methods",
        "",
        "Per-layer sensitivity curves (proxy: BatchNorm recalibration, no fine-tune), then one knapsack allocation "
        f"per target. The data-aware curves took {part['aware_probes']} proxy evaluations, "
        f"{part['aware_sensitivity_cpu_seconds'] / 60:.1f} CPU minutes. Fine-tuned: the study's brief fine-tune "
        f"({part['finetune_steps']} steps).",
        "",
        "| MACs target | plain menu: MACs, recalibrated, fine-tuned | with data-aware: MACs, recalibrated, fine-tuned "
        "| data-aware layers chosen |",
        "|---|---|---|---|",
    ]
    for target in TARGETS:
        p, a = by[("plain", target)], by[("data-aware", target)]
        aware = sum(n for m, n in a["methods"].items() if m != "dense" and get_method(m).data_aware)
        layers = sum(a["methods"].values())
        lines.append(
            f"| {target:.0%} | {p['macs_ratio']:.3f}, {p['recalibrated']:.4f}, {p['finetuned']:.4f} "
            f"| {a['macs_ratio']:.3f}, {a['recalibrated']:.4f}, {a['finetuned']:.4f} | {aware} of {layers} |"
        )
    return lines


def write_page(path: Path, cnn: dict[str, object], transformer_md: Path) -> None:
    header = [
        "# Data-aware decomposition: results",
        "",
        f"Measured by `benchmarks/data_aware.py` (CNN) and `benchmarks/data_aware_transformer.py` (transformer) at "
        f"commit {cnn['commit']}, torch {cnn['torch']}, {cnn['threads']} thread(s). Command: `{cnn['command']}`.",
        "",
    ]
    parts = [*header, markdown(cnn)]
    if transformer_md.exists():
        parts.append(transformer_md.read_text())
    else:
        parts.append("## Pretrained transformer\n\nNot measured yet: run `benchmarks/data_aware_transformer.py`.\n")
    path.write_text("\n".join(parts))
    print(f"results page: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/fashion_resnet20.toml")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--held-out-batches", type=int, default=4)
    parser.add_argument("--out", default="runs/data_aware/cnn.json")
    parser.add_argument("--transformer-markdown", default="runs/data_aware/transformer.md")
    parser.add_argument("--page", default=None, help="write the results page here")
    parser.add_argument("--page-only", action="store_true", help="rewrite the page from --out without measuring")
    parser.add_argument("--allocation", action="store_true", help="also the one-shot allocations, plain vs data-aware")
    parser.add_argument("--plain-sensitivity", default="runs/search_quality/fashion_resnet20/sensitivity.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.page_only:
        result = json.loads(out.read_text())
    else:
        result = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"numbers: {out}")
    print(markdown(result))
    if args.page:
        write_page(Path(args.page), result, Path(args.transformer_markdown))


if __name__ == "__main__":
    main()
