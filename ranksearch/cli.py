"""The ``ranksearch`` command line.

- ``ranksearch run STUDY.toml``: run (or continue) the study a file describes and print its Pareto front.
- ``ranksearch layers``: which layers of a built-in model can be compressed, how, and up to which rank.
- ``ranksearch demo``: compress a built-in model with a hand-written config and print the cost table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import pandas as pd

from . import __version__
from .apply import apply_resolved
from .cache import FactorCache
from .config import CompressionConfig
from .costs import compare, count
from .errors import RanksearchError
from .layers import compressible_layers, skipped_layers
from .models import available_models, build_model

__all__ = ["main"]

DEFAULT_DEMO_CONFIG = "studies/resnet20_handwritten.json"


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 1,3,32,32, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return shape


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="resnet20", choices=available_models(), help="built-in model (default: resnet20)"
    )
    parser.add_argument("--in-channels", type=int, default=3, help="input channels of the model (default: 3)")
    parser.add_argument("--num-classes", type=int, default=10, help="output classes of the model (default: 10)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ranksearch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ranksearch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run or continue a study file's search, then print the Pareto front")
    run.add_argument("study_file", help="a study file, e.g. studies/digits_cnn.toml")
    run.add_argument("--n-trials", type=int, help="total trial budget (default: the file's [study] n_trials)")
    run.add_argument("--storage", help="Optuna storage URL (default: the file's, or sqlite:///runs/<name>.db)")
    run.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")

    layers = commands.add_parser("layers", help="list compressible and skipped layers of a built-in model")
    _add_model_arguments(layers)

    demo = commands.add_parser("demo", help="compress a built-in model with a config and print its costs")
    _add_model_arguments(demo)
    demo.add_argument(
        "--config", default=DEFAULT_DEMO_CONFIG, help=f"compression config JSON (default: {DEFAULT_DEMO_CONFIG})"
    )
    demo.add_argument("--input-shape", type=_shape, default=(1, 3, 32, 32), help="N,C,H,W (default: 1,3,32,32)")
    demo.add_argument("--save-config", metavar="PATH", help="also write the config (canonical JSON) here")
    return parser


def _print_layers(args: argparse.Namespace) -> None:
    model = build_model(args.model, in_channels=args.in_channels, num_classes=args.num_classes)
    rows = [
        {
            "layer": info.name,
            "kind": info.kind,
            "weight_shape": info.weight_shape,
            "methods": ", ".join(info.methods),
            **{f"max_rank[{m}]": r for m, r in info.max_ranks.items()},
        }
        for info in compressible_layers(model).values()
    ]
    print(f"{args.model}: {len(rows)} compressible layers")
    print(pd.DataFrame(rows).astype(object).fillna("-").to_string(index=False))
    skipped = skipped_layers(model)
    print(f"{len(skipped)} skipped layers" + ("" if not skipped else ":"))
    for name, reason in skipped.items():
        print(f"  {name}: {reason}")


def _run_demo(args: argparse.Namespace) -> None:
    model = build_model(args.model, in_channels=args.in_channels, num_classes=args.num_classes).eval()
    config = CompressionConfig.load(args.config)
    cache = FactorCache()
    resolved = {layer.name: layer for layer in config.resolve(model)}
    start = time.perf_counter()
    small = apply_resolved(model, list(resolved.values()), cache=cache)
    seconds = time.perf_counter() - start
    dense_cost, small_cost = count(model, args.input_shape), count(small, args.input_shape)
    table = compare(dense_cost, small_cost)
    table["weight_error"] = [
        round(cache.relative_error(resolved[n].module, resolved[n].method, resolved[n].rank), 4)
        if n in resolved
        else None
        for n in table["layer"]
    ]
    print(f"{args.model} (random weights), config {args.config}: {len(resolved)} layers factorized in {seconds:.2f} s")
    print(f"MACs: multiply-accumulates for input {tuple(args.input_shape)} (FLOPs = 2 x MACs)\n")
    print(table.to_string(index=False, na_rep="-"))
    macs_share, params_share = small_cost.macs / dense_cost.macs, small_cost.params / dense_cost.params
    print(
        f"\ndense: {dense_cost.macs:,} MACs, {dense_cost.params:,} params | compressed: {small_cost.macs:,} MACs "
        f"({macs_share:.1%}), {small_cost.params:,} params ({params_share:.1%})"
    )
    if args.save_config:
        config.save(args.save_config)
        print(f"config written to {args.save_config}")


def _run_study(args: argparse.Namespace) -> None:
    from .runner import prepare_search  # imports Optuna: only for the commands that need it
    from .studyfile import load_study_file

    study_file = load_study_file(args.study_file)
    budget = study_file.study.n_trials if args.n_trials is None else args.n_trials
    if budget < 1:
        raise RanksearchError(f"--n-trials must be >= 1, got {budget}")
    search = prepare_search(study_file, storage=args.storage)
    dense = search.evaluator.dense
    todo = search.remaining(budget)
    print(
        f"study {study_file.study.name!r} in {search.storage_url}: {len(search.layers)} layers searched, "
        f"dense accuracy {dense.accuracy:.4f}, {dense.macs:,} MACs, {dense.params:,} params; "
        f"{budget - todo}/{budget} trials done, running {todo}"
    )
    try:
        search.optimize(todo, timeout=args.timeout if args.timeout is not None else study_file.study.timeout)
    except KeyboardInterrupt:
        print(f"interrupted: {search.remaining(budget)} trials left; run the same command again to continue")
        raise
    front = search.pareto_front()
    columns = [
        c
        for c in (*search.objectives, "accuracy_zero_shot", "accuracy_recalibrated", "params_ratio", "methods")
        if c in front.columns
    ]
    print(
        f"\nPareto front ({len(front)} of {len(search.completed_trials())} completed trials; "
        "macs/params are fractions of the dense model):"
    )
    print(front[["trial", *dict.fromkeys(columns)]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ranksearch`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run_study(args)
        elif args.command == "layers":
            _print_layers(args)
        elif args.command == "demo":
            _run_demo(args)
    except RanksearchError as error:
        print(f"ranksearch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
