"""The ``ranksearch`` command line.

- ``ranksearch run STUDY.toml``: run (or continue) the study a file describes, print its Pareto front and
  write its report.
- ``ranksearch report STUDY.toml`` (or ``--storage URL --study NAME``): tables, figures and the HTML dashboard.
- ``ranksearch export STUDY.toml --knee`` (or ``--trial N``, ``--max-macs F``, ``--min-accuracy A``,
  ``--min-fidelity F``...): the chosen config as JSON and the compressed model (optionally fine-tuned longer,
  optionally ONNX).
- ``ranksearch layers``: which layers of a built-in model can be compressed, how, and up to which rank.
- ``ranksearch demo``: compress a built-in model with a hand-written config and print the cost table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import RanksearchError

if TYPE_CHECKING:  # imported where used: `ranksearch report` needs neither torch nor tensorly
    from .report import StudyResults
    from .study import RankSearch
    from .studyfile import StudyFile

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


def _formats(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


class _BuiltinModels:
    """The built-in model names as argparse choices, read on first use (the models module imports torch)."""

    def _names(self) -> tuple[str, ...]:
        from .models import available_models

        return available_models()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="resnet20",
        choices=_BuiltinModels(),
        metavar="NAME",
        help="built-in model: %(choices)s (default: resnet20)",
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
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the study on this machine (default: 1)"
    )
    run.add_argument("--seed", type=int, help="sampler seed (default: the file's; give each machine its own)")
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: this process is worker K

    report = commands.add_parser("report", help="write a study's tables, figures and HTML dashboard")
    report.add_argument("study_file", nargs="?", help="a study file (or give --storage and --study)")
    report.add_argument("--storage", help="Optuna storage URL (default: the study file's)")
    report.add_argument("--study", help="study name in --storage (without a study file)")
    report.add_argument("--out", help="output folder (default: <SQLite file's folder>/<study name>, e.g. runs/NAME)")
    report.add_argument("--images", type=_formats, default=(), help="also write each figure as e.g. png,svg")
    report.add_argument("--screenshot", metavar="PNG", help="also write a screenshot of the dashboard (Chromium)")
    report.add_argument("--screenshot-height", type=int, metavar="PX", help="its height (default: the whole page)")

    export = commands.add_parser("export", help="write a chosen trial's config and compressed model")
    export.add_argument("study_file", help="the study file of a study that has run")
    export.add_argument("--storage", help="Optuna storage URL (default: the study file's)")
    pick = export.add_argument_group("which trial (a number, or a rule; caps combine with a goal)")
    pick.add_argument("--trial", type=int, help="trial number")
    pick.add_argument("--max-macs", type=float, metavar="F", help="MACs at most F x dense (e.g. 0.5)")
    pick.add_argument("--max-params", type=float, metavar="F", help="parameters at most F x dense")
    pick.add_argument("--max-latency", type=float, metavar="F", help="predicted latency at most F x dense")
    pick.add_argument("--max-memory", type=float, metavar="F", help="memory (weights + activations) at most F x dense")
    pick.add_argument("--min-accuracy", type=float, metavar="A", help="cheapest trial with accuracy >= A")
    pick.add_argument("--max-accuracy-drop", type=float, metavar="D", help="cheapest trial within D of dense")
    pick.add_argument(
        "--min-fidelity", type=float, metavar="F",
        help="cheapest trial whose outputs agree with the dense model's at least F (in [0, 1]; fidelity studies)",
    )  # fmt: skip
    pick.add_argument("--knee", action="store_true", help="the knee of the quality / cost front")
    export.add_argument("--out", help="output folder (default: the report's folder/trial-<N>)")
    export.add_argument("--epochs", type=int, default=0, help="fine-tune the chosen model for E more epochs")
    export.add_argument("--lr", type=float, default=0.01, help="peak learning rate of --epochs (default: 0.01)")
    export.add_argument("--onnx", action="store_true", help="also write model.onnx (needs ranksearch[onnx])")

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
    import pandas as pd

    from .layers import compressible_layers, skipped_layers
    from .models import build_model

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
    from .cache import FactorCache
    from .compress import apply_resolved
    from .config import CompressionConfig
    from .costs import compare, count
    from .models import build_model

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
    from .studyfile import load_study_file
    from .usercode import importable

    study_file = load_study_file(args.study_file)
    with importable(study_file.folder):  # the user code it names, and whatever that imports as trials run
        _run_loaded_study(args, study_file)


def _run_loaded_study(args: argparse.Namespace, study_file: StudyFile) -> None:
    from .runner import prepare_search  # imports Optuna: only for the commands that need it
    from .storage import beside_storage
    from .workers import check_local_workers, run_worker, run_workers

    budget = study_file.study.n_trials if args.n_trials is None else args.n_trials
    if budget < 1:
        raise RanksearchError(f"--n-trials must be >= 1, got {budget}")
    if args.workers < 1:
        raise RanksearchError(f"--workers must be >= 1, got {args.workers}")
    timeout = args.timeout if args.timeout is not None else study_file.study.timeout
    if args.worker is not None:
        workers = {"worker": args.worker, "workers": args.workers, "budget": budget, "storage": args.storage}
        run_worker(study_file, **workers, seed=args.seed, timeout=timeout)
        return
    search = prepare_search(study_file, storage=args.storage, sampler_seed=args.seed)
    check_local_workers(search.evaluator.latency is not None, args.workers)
    todo = search.remaining(budget)
    _print_study_header(search, study_file.study.name, budget, todo, args.workers)
    report_folder = beside_storage(search.storage_url, study_file.study.name)
    try:
        if args.workers > 1 and todo:
            search.prepare()  # the sensitivity curves, once, before the workers read them from the study
            run_workers(args.study_file, search.storage_url, budget=budget, workers=args.workers, seed=args.seed,
                        timeout=timeout)  # fmt: skip
        else:
            search.optimize(budget=budget, timeout=timeout)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {search.remaining(budget)} trials left; run the same command again to continue")
        results = search.results()
        if not args.no_report and not results.completed().empty:  # the report of what is done
            _write_report(results, report_folder, study_file=args.study_file)
        raise
    timing = _time_front(search) if search.evaluator.latency is not None else None
    results = search.results()  # read once, after the front's latencies are stored
    if timing is not None:
        _print_latency_check(results, *timing)
    _print_front(results)
    if not args.no_report:
        _write_report(results, report_folder, study_file=args.study_file)


def _print_study_header(search: RankSearch, name: str, budget: int, todo: int, workers: int) -> None:
    dense = search.evaluator.dense
    quality = f"dense accuracy {dense.accuracy:.4f}" if search.evaluator.labels else "no labels (quality: fidelity)"
    print(
        f"study {name!r} in {search.storage_url}: {len(search.layers)} layers searched, "
        f"{quality}, {dense.macs:,} MACs, {dense.params:,} params; "
        f"{budget - todo}/{budget} trials done, running {todo}"
        + (f" on {workers} workers" if workers > 1 and todo else "")
    )


def _print_front(results: StudyResults) -> None:
    front = results.pareto()
    wanted = (
        *results.objectives,
        "accuracy_zero_shot",
        "accuracy_recalibrated",
        "params_ratio",
        "latency_ms",
        "latency_measured_ms",
        "memory_mb",
        "methods",
    )
    # no latency columns for a study without latency
    columns = [c for c in wanted if c in front.columns and front[c].notna().any()]
    print(
        f"\nPareto front ({len(front)} of {len(results.completed())} measured configs; "
        "macs/params are fractions of the dense model):"
    )
    print(front[["trial", *dict.fromkeys(columns)]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    targets = results.best_per_target()
    if not targets.empty:
        wanted = ("cost", "target", "trial", *results.qualities, "macs", "params", "methods")
        shown = [c for c in dict.fromkeys(wanted) if c in targets]
        print(f"\nBest per target (the highest {results.quality} within each budget; export one with --trial N):")
        print(targets[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="none"))


def _time_front(search: RankSearch) -> tuple[int, float]:
    """Time the whole model of each Pareto config not timed yet: (how many, seconds)."""
    start = time.perf_counter()
    timed = search.measure_front_latency()
    return len(timed), time.perf_counter() - start


def _print_latency_check(results: StudyResults, timed: int, seconds: float) -> None:
    """How well the latency table predicted the timed configs (ratios to the dense model timed next to each)."""
    check = results.latency_check()
    if len(check):
        print(
            f"\nlatency: timed {timed} more Pareto configs in {seconds:.1f} s; predicted vs measured (fractions of "
            f"the dense model timed next to each): median |error| {check['error'].abs().median():.1%} over "
            f"{len(check)} timed configs, {check['corrected_error'].abs().median():.1%} with the per-model scale "
            f"{results.latency_scale:.2f} (leave-one-out)"
        )


def _write_report(results: StudyResults, folder: Path, **options: object) -> None:
    from .report import write_report

    files = write_report(results, folder, **options)
    print(f"\nreport: {files.html} ({files.seconds:.1f} s; tables in {files.folder})")
    for path in files.images:
        print(f"  figure: {path}")
    if files.screenshot:
        print(f"  screenshot: {files.screenshot}")
    for note in files.notes:
        print(f"  note: {note}")


def _report(args: argparse.Namespace) -> None:
    from .storage import beside_storage
    from .study import load_results  # RankSearch is not imported: no model, no torch
    from .studyfile import load_study_section

    if args.study_file is not None:
        if args.study:
            raise RanksearchError("give a study file or --storage with --study, not both")
        study = load_study_section(args.study_file)
        storage, name = args.storage or study.storage_url, study.name
    elif args.storage and args.study:
        storage, name = args.storage, args.study
    else:
        raise RanksearchError("say which study: a study file, or --storage URL --study NAME")
    results = load_results(storage, name)
    if results.trials.empty:
        raise RanksearchError(f"study {name!r} in {storage} has no finished trial yet: run it first")
    folder = Path(args.out) if args.out else beside_storage(storage, name)
    if args.screenshot_height is not None and args.screenshot_height < 100:
        raise RanksearchError(f"--screenshot-height must be >= 100 pixels, got {args.screenshot_height}")
    _write_report(
        results,
        folder,
        images=args.images,
        screenshot=args.screenshot,
        screenshot_height=args.screenshot_height,
        study_file=args.study_file,
    )


def _export(args: argparse.Namespace) -> None:
    from .report import choose
    from .runner import prepare
    from .study import load_results
    from .studyfile import load_study_file
    from .usercode import importable

    study_file = load_study_file(args.study_file)
    storage = args.storage or study_file.storage
    results = load_results(storage, study_file.study.name)  # before prepare(), which would create a new study
    if args.epochs < 0:
        raise RanksearchError(f"--epochs must be >= 0, got {args.epochs}")
    caps = {cost: getattr(args, f"max_{cost}") for cost in ("macs", "params", "latency", "memory")}
    caps = {cost: cap for cost, cap in caps.items() if cap is not None}
    rule = {"trial": args.trial, "max_costs": caps, "min_accuracy": args.min_accuracy,
            "max_accuracy_drop": args.max_accuracy_drop, "min_fidelity": args.min_fidelity,
            "knee": args.knee}  # fmt: skip
    choose(results, **rule)  # a rule no trial meets fails here, before the model and data are loaded
    with importable(study_file.folder):  # the user code it names
        prepared = prepare(study_file, storage=storage)
        options = {"epochs": args.epochs, "lr": args.lr, "onnx": args.onnx, "builtin": prepared.builtin}
        prepared.search.export(args.out, **options, **rule)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ranksearch`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run_study(args)
        elif args.command == "report":
            _report(args)
        elif args.command == "export":
            _export(args)
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
