"""Report generation time for a large study: the issue's target is "a 500-trial study in under 10 seconds".

Builds a realistic synthetic ranksearch study in a temporary SQLite storage without training anything,
then times, separately and ``--repeats`` times each:

1. building the database (``study.add_trials``; not part of the target);
2. ``load_results(storage, name)`` (Optuna storage -> :class:`StudyResults`);
3. ``figures(results)`` (every plotly figure);
4. ``write_report(results, folder)`` (figures again, the tables and the HTML dashboard);
5. ``ranksearch report --storage URL --study NAME --out DIR`` as a subprocess: the wall time a user
   waits, Python start-up and imports included; the target applies to this number;
6. ``python -c "import ranksearch.cli; from ranksearch.study import load_results; import ranksearch.report"``: the
   start-up share of (5) (what the command imports before any work; torch and tensorly are not among it).

The study is made the way ``RankSearch`` makes it (``ranksearch.study.create_or_load`` and ``study_identity`` on a
stand-in object: same directions, same study user attributes), on the real layers, methods and rank grids
of a model from ``ranksearch.models`` (ResNet-20 by default; ``--layers 19`` drops the stem conv like
``studies/cifar10_resnet20.toml``). Each trial has the params a sampler would suggest and the user
attributes ``Evaluation.attributes()`` gives: the config, exact MACs/params (each layer's
``Decomposition.cost`` computed once per (layer, method, rank) and summed), layer errors, accuracies
(a seeded function of the per-layer compression plus noise), phase seconds. The first five trials are
RankSearch's warm starts (dense, uniform Tucker-2 and SVD), a few trials fail (FloatingPointError during
the fine-tune) and a few repeat an earlier config (``duplicate_of``).

Usage::

    python benchmarks/report.py                                   # 500 trials, accuracy + macs, 3 repeats
    python benchmarks/report.py --objectives accuracy,macs,params
    python benchmarks/report.py --keep runs/bench_report.db       # keep the database (e.g. for optuna-dashboard)
    python benchmarks/report.py --profile                         # also cProfile one `ranksearch report` process
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import math
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import plotly
import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path
from torch import nn

from ranksearch.config import DENSE, CompressionConfig
from ranksearch.costs import count
from ranksearch.decompositions import get_method
from ranksearch.errors import RanksearchError
from ranksearch.evaluator import DenseMeasurement, Evaluation, EvaluatorSettings
from ranksearch.models import build_model
from ranksearch.objectives import WARM_START_FRACTIONS, check_objectives
from ranksearch.record import param_name
from ranksearch.report import figures, write_report
from ranksearch.space import LayerChoices, SearchSpace
from ranksearch.study import WARM_START_METHODS, create_or_load, load_results, study_identity

TARGET_SECONDS = 10.0
STUDY_NAME = "bench_report"
FAILURE = "FloatingPointError: fine-tune loss became nan at step {step}"
# The evaluator settings of studies/cifar10_resnet20.toml (a 100-step fine-tune, accuracy floor 0.2).
SETTINGS = EvaluatorSettings(finetune_steps=100, lr=0.01, eval_batches=8, bn_batches=20, accuracy_floor=0.2)
METHOD_DIFFICULTY = {"svd": 1.15, "tucker2": 1.0, "tucker2_hooi": 0.95, "cp": 1.5, "tt": 1.1}
CHANCE = 0.1  # 10 classes


# --- the synthetic study ------------------------------------------------------------------------------
def search_layers(model: nn.Module, count_: int) -> dict[str, LayerChoices]:
    """``count_`` searched layers of ``model``, the stem conv (the model's first layer) dropped first."""
    everything = SearchSpace().layers(model)
    if not 1 <= count_ <= len(everything):
        raise SystemExit(f"--layers must be in [1, {len(everything)}] for this model, got {count_}")
    names = list(everything)
    order = names[1:] + names[:1] if count_ < len(names) else names
    keep = set(order[:count_])
    return {name: layer for name, layer in everything.items() if name in keep}


def input_shapes(model: nn.Module, names: Sequence[str], shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The input shape each named module sees in a forward pass on a zero input of ``shape``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, args: tuple, _output: object) -> None:  # None: keep the output
            shapes.setdefault(name, tuple(args[0].shape))

        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


class CostTable:
    """Exact MACs/params of a config without building it: per layer, dense minus the method's ``cost()``."""

    def __init__(self, model: nn.Module, layers: dict[str, LayerChoices], input_shape: tuple[int, ...]) -> None:
        dense = count(model, input_shape)
        self.macs, self.params = dense.macs, dense.params
        table = dense.table.set_index("layer")
        shapes = input_shapes(model, list(layers), input_shape)
        self.saving: dict[tuple[str, str, object], tuple[int, int]] = {}
        for name, layer in layers.items():
            module = model.get_submodule(name)
            for method, ranks in layer.ranks.items():
                for rank in ranks:
                    cost = get_method(method).cost(module, rank, shapes[name])
                    self.saving[name, method, rank] = (
                        int(table.loc[name, "macs"]) - cost.macs,
                        int(table.loc[name, "params"]) - cost.params,
                    )

    def of(self, config: CompressionConfig) -> tuple[int, int]:
        macs, params = self.macs, self.params
        for name, (method, rank) in config.compressed().items():
            saved_macs, saved_params = self.saving[name, method, rank]
            macs, params = macs - saved_macs, params - saved_params
        return macs, params


def warm_start_picks(space: SearchSpace, layers: dict[str, LayerChoices]) -> list[dict[str, tuple[str, float | None]]]:
    """RankSearch's enqueued first trials: the dense model, then uniform Tucker-2 and SVD configs."""
    picks = [{name: (DENSE, None) for name in layers}]
    for method in WARM_START_METHODS:
        for fraction in WARM_START_FRACTIONS:
            picks.append(space.uniform_picks(layers, (method, "svd"), fraction))
    return picks


def random_picks(rng: random.Random, layers: dict[str, LayerChoices], compress: float) -> dict:
    """One sampler-like config: each layer compressed with probability ``compress``, method and fraction uniform."""
    picks = {}
    for name, layer in layers.items():
        methods = [m for m in layer.methods if m != DENSE]
        if rng.random() < compress:
            picks[name] = (rng.choice(methods), rng.choice(layer.fractions))
        else:
            picks[name] = (DENSE, None)
    return picks


def params_of(layers: dict[str, LayerChoices], picks: dict) -> tuple[dict, dict]:
    """The Optuna params and distributions ``RankSearch.suggest`` records for ``picks``."""
    params: dict[str, object] = {}
    distributions: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, (method, fraction) in picks.items():
        layer = layers[name]
        params[param_name(name)] = method
        distributions[param_name(name)] = optuna.distributions.CategoricalDistribution(layer.methods)
        if method != DENSE:
            params[param_name(name, method)] = fraction
            distributions[param_name(name, method)] = optuna.distributions.CategoricalDistribution(layer.fractions)
    return params, distributions


def evaluation(
    rng: random.Random,
    config: CompressionConfig,
    picks: dict,
    costs: CostTable,
    sensitivity: dict[str, float],
    dense_accuracy: float,
    fail: bool,
) -> Evaluation:
    """A plausible measurement of ``config``: accuracy falls with each layer's reconstruction error."""
    result = Evaluation(config=config)
    result.macs, result.params = costs.of(config)
    result.macs_ratio, result.params_ratio = result.macs / costs.macs, result.params / costs.params
    damage = 0.0
    for name, (method, fraction) in picks.items():
        if method == DENSE:
            continue
        error = min(1.0, max(0.0, (1 - fraction) ** 0.6 * rng.uniform(0.85, 1.05)))
        result.layer_errors[name] = error
        damage += sensitivity[name] * METHOD_DIFFICULTY.get(method, 1.2) * error**2

    def accuracy(share: float) -> float:
        value = CHANCE + (dense_accuracy - CHANCE) * math.exp(-share * damage) + rng.gauss(0, 0.004)
        return min(dense_accuracy + 0.005, max(0.0, value))

    result.accuracy = result.accuracy_zero_shot = accuracy(2.0)
    result.accuracy = result.accuracy_recalibrated = max(result.accuracy_zero_shot, accuracy(0.9))
    seconds = {
        "decompose": 0.002 + 0.01 * len(result.layer_errors) * rng.uniform(0.5, 3),
        "cost": rng.uniform(0.004, 0.012),
        "recalibrate": rng.uniform(1.2, 1.8),
    }
    if fail:
        result.failure = FAILURE.format(step=rng.randrange(SETTINGS.finetune_steps))
        seconds["finetune"] = rng.uniform(2, 20)
    elif result.accuracy < SETTINGS.accuracy_floor:
        result.finetune_skipped = (
            f"accuracy {result.accuracy:.4f} before fine-tuning is below the floor {SETTINGS.accuracy_floor}"
        )
    else:
        seconds["finetune"] = rng.uniform(20, 30) * (0.6 + 0.4 * result.macs_ratio)
        result.accuracy = result.accuracy_finetuned = max(result.accuracy_recalibrated, accuracy(0.15))
    seconds["evaluate"] = rng.uniform(0.4, 0.7)
    seconds["total"] = sum(seconds.values())
    result.seconds = seconds
    return result


def build_study(
    storage: str, objectives: Sequence[str], n_trials: int, n_layers: int, model_name: str, seed: int
) -> optuna.Study:
    """The synthetic study in ``storage`` (see the module docs)."""
    rng = random.Random(seed)
    model = build_model(model_name)
    space = SearchSpace()
    layers = search_layers(model, n_layers)
    input_shape = (1, 3, 32, 32)
    costs = CostTable(model, layers, input_shape)
    dense = DenseMeasurement(0.912, costs.macs, costs.params, input_shape)
    # RankSearch's own study creation and identity, on a stand-in for its evaluator.
    evaluator = SimpleNamespace(settings=SETTINGS, dense=dense, model=model, latency=None)
    identity = study_identity(objectives, layers, space, evaluator, None)
    sampler = optuna.samplers.RandomSampler(seed)
    study = create_or_load(
        storage, STUDY_NAME, sampler, identity, evaluator=evaluator, sampler_name="tpe", heartbeat=None
    )

    sensitivity = {name: rng.lognormvariate(-1.0, 0.6) for name in layers}
    if layers:  # the stem's neighbour and the classifier are touchier, as in real networks
        first, last = next(iter(layers)), list(layers)[-1]
        sensitivity[first] *= 2.0
        sensitivity[last] *= 1.5
    warm = warm_start_picks(space, layers)
    measured: list[tuple[int, dict, dict, tuple[float, ...]]] = []  # (number, params, attrs, values)
    trials = []
    clock = dt.datetime(2026, 1, 5, 9, 0, 0)
    for number in range(n_trials):
        system_attrs: dict[str, object] = {}
        state = optuna.trial.TrialState.COMPLETE
        if number >= len(warm) and measured and rng.random() < 0.05:  # the sampler proposed a config again
            original, params, attrs, values = rng.choice(measured)
            distributions = {name: trials[original].distributions[name] for name in params}
            attrs = {**attrs, "duplicate_of": original}
            seconds = 0.05
        else:
            if number < len(warm):
                picks = warm[number]
            else:  # the search drifts towards compressing more layers
                picks = random_picks(rng, layers, compress=0.35 + 0.5 * number / max(1, n_trials))
            params, distributions = params_of(layers, picks)
            if number < len(warm):
                system_attrs["fixed_params"] = dict(params)
            config = SearchSpace.to_config(layers, picks)
            fail = number >= len(warm) and rng.random() < 0.02
            result = evaluation(rng, config, picks, costs, sensitivity, dense.accuracy, fail)
            attrs = result.attributes()
            values = tuple(result.objective(o) for o in objectives)
            if fail:
                state = optuna.trial.TrialState.FAIL
            else:
                measured.append((number, params, attrs, values))
            seconds = result.seconds["total"]
        trial = optuna.trial.create_trial(
            state=state,
            values=values if state == optuna.trial.TrialState.COMPLETE else None,
            params=params,
            distributions=distributions,
            user_attrs=attrs,
            system_attrs=system_attrs,
        )
        trial.datetime_start = clock
        clock += dt.timedelta(seconds=seconds + 0.3)
        trial.datetime_complete = clock
        trials.append(trial)
    study.add_trials(trials)
    return study


# --- timing ------------------------------------------------------------------------------------------
def timed(function: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Seconds of each of ``repeats`` calls and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def run_cli(arguments: Sequence[str]) -> None:
    completed = subprocess.run(arguments, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed ({completed.returncode}):\n{completed.stderr}")


PROFILE_SPOTS = (  # (label, file suffix, function) looked up in the CLI's profile
    ("import ranksearch (package __init__)", "ranksearch/__init__.py", "<module>"),
    ("  of which: import torch", "torch/__init__.py", "<module>"),
    ("  of which: import tensorly", "tensorly/__init__.py", "<module>"),
    ("  of which: import pandas", "pandas/__init__.py", "<module>"),
    ("load_results", "ranksearch/study.py", "load_results"),
    ("  of which: RDBStorage(url) (SQLAlchemy, schema check)", "_rdb/storage.py", "__init__"),
    ("  of which: study.get_trials (SQLAlchemy ORM rows)", "optuna/study/study.py", "get_trials"),
    ("  of which: trials_table", "report/_results.py", "trials_table"),
    ("write_report", "report/_writer.py", "write_report"),
    ("  of which: figures", "report/_figures.py", "figures"),
    ("    of which: _hover (iterrows per figure)", "report/_figures.py", "_hover"),
    ("  of which: tables (csv, json, summary)", "report/_writer.py", "_write_tables"),
    ("  of which: write_dashboard (fig.to_html)", "report/_dashboard.py", "write_dashboard"),
)


def profile_cli(report_args: Sequence[str], folder: Path, top: int) -> str:
    """cProfile of one ``ranksearch report`` process (imports included): where its time goes."""
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "cli.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "ranksearch.cli"]
    run_cli([*command, *report_args, "--out", str(folder)])
    stream = io.StringIO()
    stats = pstats.Stats(str(output), stream=stream)
    total = max(entry[3] for entry in stats.stats.values())  # type: ignore[attr-defined]
    lines = [f"whole process under cProfile: {total:.2f} s (profiling inflates Python-heavy code)"]
    for label, suffix, function in PROFILE_SPOTS:
        spots = [
            entry[3]
            for (filename, _, name), entry in stats.stats.items()  # type: ignore[attr-defined]
            if name == function and filename.replace("\\", "/").endswith(suffix)
        ]
        if spots:
            lines.append(f"  {label:<58} {max(spots):6.2f} s  {max(spots) / total:5.1%}")
    stats.sort_stats("cumulative").print_stats(r"ranksearch|optuna|plotly|sqlalchemy|pandas", top)
    stats.sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n" + stream.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500, help="finished trials in the study (default 500)")
    parser.add_argument("--layers", type=int, default=19, help="searched layers (default 19, ResNet-20 minus its stem)")
    parser.add_argument("--model", default="resnet20", help="built-in model whose layers are searched")
    parser.add_argument("--objectives", default="accuracy,macs", help="accuracy,macs or accuracy,macs,params")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each step (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DB", help="write the study to this SQLite file and keep it")
    parser.add_argument("--profile", action="store_true", help="also cProfile one `ranksearch report` process")
    parser.add_argument("--top", type=int, default=25, help="functions per profile listing")
    args = parser.parse_args(argv)
    try:
        objectives = check_objectives(tuple(o.strip() for o in args.objectives.split(",") if o.strip()))
    except RanksearchError as error:
        parser.error(str(error))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="ranksearch-bench-report-"))
    try:
        db = Path(args.keep).resolve() if args.keep else work / "study.db"
        if db.exists():
            raise SystemExit(f"{db} exists: remove it or --keep another path")
        db.parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{db}"
        start = time.perf_counter()
        build_study(storage, objectives, args.trials, args.layers, args.model, args.seed)
        build_seconds = time.perf_counter() - start

        load_times, results = timed(lambda: load_results(storage, STUDY_NAME), args.repeats)
        figure_times, figs = timed(lambda: figures(results), args.repeats)
        folder = work / "report"
        write_times, files = timed(lambda: write_report(results, folder), args.repeats)
        script = Path(sys.executable).parent / "ranksearch"  # the console script a user runs
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "ranksearch.cli"]
        report_args = ["report", "--storage", storage, "--study", STUDY_NAME]
        cli = [*command, *report_args]
        cli_times, _ = timed(lambda: run_cli([*cli, "--out", str(work / "cli")]), args.repeats)
        import_times, _ = timed(
            lambda: run_cli(
                [
                    sys.executable,
                    "-c",
                    "import ranksearch.cli; from ranksearch.study import load_results; import ranksearch.report",
                ]
            ),
            args.repeats,
        )

        trials = results.trials
        print(f"device: {cpu_model()}, {platform.python_implementation()} {platform.python_version()}")
        print(
            f"versions: torch {torch.__version__}, optuna {optuna.__version__}, plotly {plotly.__version__}, "
            f"pandas {pd.__version__}"
        )
        print(
            f"study: {len(trials)} finished trials ({int((trials['state'] == 'fail').sum())} failed, "
            f"{int(trials['duplicate_of'].notna().sum())} duplicates), {len(results.layers)} layers of "
            f"{args.model}, objectives {', '.join(objectives)}; Pareto front {len(results.pareto())} configs; "
            f"{len(figs)} figures; database {db.stat().st_size / 1e6:.2f} MB"
        )
        rows = [
            ("build the database (not in the target)", [build_seconds]),
            ("load_results", load_times),
            ("figures", figure_times),
            ("write_report (figures + tables + HTML)", write_times),
            ("ranksearch report (CLI subprocess, wall)", cli_times),
            ("  of which: imports (cli, load_results, report)", import_times),
        ]
        table = pd.DataFrame(
            [
                {"step": name, "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs": len(t)}
                for name, t in rows
            ]
        )
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        html_mb = files.html.stat().st_size / 1e6
        cli_html_mb = (work / "cli" / "report.html").stat().st_size / 1e6
        print(f"report.html: {html_mb:.2f} MB (CLI's: {cli_html_mb:.2f} MB); tables: {len(files.tables)} files")
        cli_median = statistics.median(cli_times)
        verdict = "PASS" if cli_median < TARGET_SECONDS else "FAIL"
        target = f"target < {TARGET_SECONDS:g} s"
        print(f"{verdict}: ranksearch report on {len(trials)} trials took {cli_median:.2f} s (median, {target})")
        if args.profile:
            print("\n--- cProfile of one `ranksearch report` process ---")
            print(profile_cli(report_args, work / "profiled", args.top))
        if args.keep:
            print(f"kept: {storage} (study {STUDY_NAME!r})")
        return 0 if verdict == "PASS" else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
