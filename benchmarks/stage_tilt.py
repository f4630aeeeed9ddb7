"""Is the uniform config a local optimum? Tilted rank allocations of one method at one MACs target.

The search of ``search_quality.py`` ends on uniform CP at every target of ResNet-20 / Fashion-MNIST. This
script asks whether moving rank between layers, at the same MACs, could do better after the same brief
fine-tune: each tilt gives every layer a kept-rank fraction ``scale x multiplier`` (capped at 1), with the one
``scale`` (bisection) that keeps the model within the target; all multipliers 1 is the uniform config.

- ``--tilts "1,2,1,0.5;1,0.5,1,2"``: one multiplier per group of layers, the groups being the layers' names cut
  to ``--depth`` parts, in model order (ResNet-20 at depth 2: ``conv1``, ``layers.0``, ``layers.1``,
  ``layers.2``; the script prints them).
- ``--random N --spread S``: N per-layer tilts, each multiplier ``exp(S x z)`` with z standard normal (seeded).

Every config gets the evaluator's brief fine-tune (``_heldout.measure``, as the held-out check runs it); rows
(accuracy on the evaluator's validation subset, on the validation images outside it where there are any, MACs
as a fraction of dense, CPU seconds) are printed and appended as JSON lines to ``--out``. One config's subset
accuracy moves by about a point between neighbouring budgets (uniform CP at 9.2 / 9.9 / 10.4% of ResNet-20's
MACs: 0.8955 / 0.9121 / 0.9058), so compare the held-out column too.

    OMP_NUM_THREADS=1 python benchmarks/stage_tilt.py --study studies/fashion_resnet20.toml --method cp \\
        --target 0.1 --tilts "1,2,1,0.5;1,0.5,1,2" --random 4 --spread 0.3 --out runs/stage_tilt.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from _heldout import measure  # benchmarks/ is the script's folder, on sys.path
from _quality_page import subset_images
from _study_setup import study_setup
from torch import nn

from ranksearch import CompressionConfig, count
from ranksearch.decompositions import get_method
from ranksearch.heuristics import uniform_config
from ranksearch.latency import layer_inputs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/digits_cnn.toml", help="study file (model, data, evaluator)")
    parser.add_argument("--method", default="cp", help="the decomposition every layer gets (default cp)")
    parser.add_argument("--target", type=float, default=0.1, help="MACs as a fraction of dense (default 0.1)")
    parser.add_argument("--depth", type=int, default=2, help="name parts that make a group (default 2)")
    parser.add_argument("--tilts", default="", help="per-group multipliers: groups split by ',', tilts by ';'")
    parser.add_argument("--random", type=int, default=0, help="number of random per-layer tilts (default 0)")
    parser.add_argument("--spread", type=float, default=0.3, help="log-normal spread of random tilts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tilts (default 0)")
    parser.add_argument("--out", default="runs/stage_tilt.jsonl", help="JSON lines file the rows are added to")
    return parser.parse_args()


def groups_of(layers: Sequence[str], depth: int) -> dict[str, list[str]]:
    """Layers grouped by their names' first ``depth`` dot-separated parts, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for name in layers:
        groups.setdefault(".".join(name.split(".")[:depth]), []).append(name)
    return groups


class TiltedConfigs:
    """Configs of one method whose per-layer kept-rank fractions follow multipliers, at one MACs target."""

    def __init__(self, model: nn.Module, layers: Sequence[str], method: str, input_shape: Sequence[int]) -> None:
        self.model, self.layers, self.method = model, list(layers), method
        inputs = layer_inputs(model, tuple(input_shape))
        self.inputs = {name: inputs[name] for name in self.layers}
        dense_macs = count(model, input_shape).macs
        own = sum(count(nn.Sequential(model.get_submodule(n)), self.inputs[n]).macs for n in self.layers)
        self.dense_macs, self.rest = dense_macs, dense_macs - own  # rest: what no config here touches

    def at(self, fractions: dict[str, float]) -> CompressionConfig:
        """Each layer at its kept-rank fraction of its maximum rank (rounded as ``uniform_config`` rounds)."""
        entries = {}
        for name, fraction in fractions.items():
            single = uniform_config(self.model, fraction=fraction, method=self.method, layers=[name])
            entries[name] = single[name]
        return CompressionConfig(entries)

    def macs(self, config: CompressionConfig) -> float:
        """The model's MACs under ``config``, as a fraction of dense (each layer's factorized MACs, analytic)."""
        method = get_method(self.method)
        factorized = sum(method.cost(self.model.get_submodule(n), config[n][1], self.inputs[n]).macs for n in config)
        return (self.rest + factorized) / self.dense_macs

    def tilted(self, multipliers: dict[str, float], target: float, steps: int = 30) -> CompressionConfig:
        """The largest ``scale`` whose fractions ``min(1, scale x multiplier)`` keep the model within ``target``."""

        def config(scale: float) -> CompressionConfig:
            return self.at({n: min(1.0, max(1e-9, scale * multipliers[n])) for n in self.layers})

        low, high = 0.0, 1.0 / min(multipliers.values())
        for _ in range(steps):
            middle = (low + high) / 2
            low, high = (middle, high) if self.macs(config(middle)) <= target else (low, middle)
        return config(low)


def tilts(args: argparse.Namespace, groups: dict[str, list[str]]) -> list[tuple[str, dict[str, float]]]:
    """The uniform tilt first, then the named per-group tilts, then the random per-layer ones."""
    found = [("uniform", {n: 1.0 for members in groups.values() for n in members})]
    for spec in filter(None, (s.strip() for s in args.tilts.split(";"))):
        values = [float(v) for v in spec.split(",")]
        if len(values) != len(groups) or min(values) <= 0:
            raise SystemExit(f"tilt {spec!r}: give {len(groups)} positive multipliers, one per group {list(groups)}")
        found.append((spec, {n: v for v, members in zip(values, groups.values(), strict=True) for n in members}))
    generator = torch.Generator().manual_seed(args.seed)
    for index in range(args.random):
        layers = [n for members in groups.values() for n in members]
        z = torch.randn(len(layers), generator=generator)
        found.append((f"random {index} (spread {args.spread:g})",
                      {n: math.exp(args.spread * float(v)) for n, v in zip(layers, z, strict=True)}))  # fmt: skip
    return found


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    setup = study_setup(args.study)
    study_file, data, model, evaluator = setup.study_file, setup.data, setup.model, setup.evaluator
    shape = evaluator.dense.input_shape
    method = get_method(args.method)
    searched = study_file.space.layers(model, shape)
    layers = [n for n in searched if method.unsupported_reason(model.get_submodule(n)) is None]
    groups = groups_of(layers, args.depth)
    print(f"{len(layers)} layers in {len(groups)} groups: {', '.join(f'{g} ({len(m)})' for g, m in groups.items())}")
    configs = TiltedConfigs(evaluator.model, layers, args.method, shape)
    subset, whole = subset_images(evaluator), len(data.val_loader.dataset)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name, multipliers in tilts(args, groups):
        config = configs.tilted(multipliers, args.target)
        measured = measure({"config": config.to_dict()}, evaluator, data.val_loader, subset, whole)
        row = {"study": args.study, "method": args.method, "target": args.target, "tilt": name,
               "multipliers": multipliers, "macs": configs.macs(config), **measured}  # fmt: skip
        print(f"{name:28s} macs {row['macs']:.3f}  brief fine-tune: subset {row.get('again', math.nan):.4f}, "
              f"held out {row.get('held_out', math.nan):.4f}  ({row['cpu_seconds']:.0f} CPU s) "
              f"{row.get('failure') or ''}", flush=True)  # fmt: skip
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
