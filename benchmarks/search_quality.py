"""Search quality at matched budgets: ranksearch against the rank-selection baselines, side by side.

Every arm's configs go through the same evaluator (the study file's brief fine-tune, same batches):

- baselines, each swept over ``--trials`` MACs budgets (the targets, then a log-spaced grid), so that every
  front has as many points as a search has trials: uniform SVD / Tucker-2, energy SVD, VBMF Tucker-2 and
  error-balanced (ALDS-style) SVD / Tucker-2, uniform CP / TT, all on the layers the study searches;
- ``one-shot``: the per-layer sensitivity pass, then one knapsack allocation per budget (no search);
- searches (``--arms``), each limited to the time of ``--trials`` full trials (the median baseline
  evaluation, measured in the same run) with its preparation (the sensitivity pass, proxies) counted:
  ``ranksearch`` (the default: allocate strategy, TPE, the targets), ``random`` (allocate, random knobs),
  ``nsga2`` (allocate, NSGA-II), ``gp`` (allocate, Optuna's GP sampler), ``no-screen`` (allocate, TPE, no
  proxy screening), ``per-layer`` (TPE over every layer's method and level on the cost grid), ``at-target``
  (an experiment: the default with the ``slack`` knob fixed at 1, so every trial aims at its target itself).

Prints and writes (``--results``) the best accuracy at <= each target per arm (mean over seeds), the
hypervolume, each arm's time, candidates screened and full evaluations per minute, the rank correlation of
the proxy with the fine-tuned accuracy, and (``--final-epochs``) the chosen configs after a longer
fine-tune next to uniform Tucker-2's. Everything is stored under ``--out`` as it is measured: run the same
command again to resume. ``--jobs N`` runs N processes that share the work (each takes the next unit no other
holds: a baseline point, a search seed, a longer fine-tune); every clock counts the CPU seconds of its process
(one thread each), which equals wall-clock on an idle core and is not eaten by other load.

    python benchmarks/search_quality.py --quick                                  # digits, a few minutes
    python benchmarks/search_quality.py --seeds 0,1,2 --results benchmarks/RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/search_quality.py --study studies/fashion_resnet20.toml --seeds 0,1,2 \\
        --final-epochs 5 --jobs 2 --results benchmarks/RESULTS_fashion.md         # hours on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import torch
from _heldout import DEFAULT_ARMS as HELDOUT_ARMS
from _heldout import heldout_rows, pending, section
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path
from _quality import (
    baseline_families,
    budget_grid,
    evaluate_point,
    front_metrics,
    one_shot_configs,
    spearman,
    try_config,
)
from _quality_page import BASELINES, final_rows, final_run, subset_images, write_page
from _workqueue import PointStore, Unit, cpu_clock, work

from ranksearch.cache import FactorCache
from ranksearch.config import CompressionConfig
from ranksearch.data import load_dataset, make_loaders
from ranksearch.evaluator import Evaluator
from ranksearch.runner import load_model
from ranksearch.study import RankSearch, _allocate
from ranksearch.studyfile import load_study_file
from ranksearch.training import evaluate_accuracy

SEARCH_ARMS = {
    "ranksearch": {"strategy": "allocate", "sampler": "tpe"},
    "random": {"strategy": "allocate", "sampler": "random"},
    "nsga2": {"strategy": "allocate", "sampler": "nsga2"},
    "gp": {"strategy": "allocate", "sampler": "gp"},
    "no-screen": {"strategy": "allocate", "sampler": "tpe", "screen": 1},
    "per-layer": {"strategy": "per-layer", "sampler": "tpe"},
    "at-target": {"strategy": "allocate", "sampler": "tpe"},
    "no-uniform-start": {"strategy": "allocate", "sampler": "tpe"},
}
AIMED = "ranksearch aimed at "
"""Prefix of the default search aimed at one longer-fine-tune budget that is not among the targets."""
PATCHES_OF_ARM = {
    "at-target": {(_allocate, "SLACK_RANGE"): (1.0, 1.0)},
    "no-uniform-start": {(_allocate, "UNIFORM_STARTS"): False},
}
"""Experiment arms that change a module constant while they run (not a study setting until it pays).
``at-target``: every trial aims at its target itself (the multi-objective sampler drives the ``slack`` knob
down, since fewer MACs are better on one objective: on ResNet-20 / Fashion-MNIST the default's trials at the
25% target sat at 20-23%). ``no-uniform-start``: the default before it started each target with the uniform
config the proxy ranks best (measured at ee07ab4, the same search otherwise)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits_cnn.toml", help="study file (model, data, evaluator, space)")
    parser.add_argument("--trials", type=int, default=30, help="trials' worth of wall-clock per search (default 30)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the searches")
    parser.add_argument("--targets", default="0.1,0.25,0.5", help="MACs targets (fractions of dense)")
    parser.add_argument("--arms", default="ranksearch,random,per-layer,no-screen", help="search arms, comma-separated")
    parser.add_argument("--final-epochs", type=int, default=0, help="longer fine-tune of the chosen configs (0: skip)")
    parser.add_argument("--final-targets", default="0.2,0.1", help="MACs budgets of the longer fine-tune")
    parser.add_argument(
        "--distill-check",
        action="store_true",
        help="also evaluate the one-shot and uniform Tucker-2 configs at the targets with the other brief fine-tune: "
        "labels only when the study's distils (the default), else distillation at weight 0.5",
    )
    parser.add_argument("--device", default=None, help="evaluator device (default: the study file's)")
    parser.add_argument("--quick", action="store_true", help="12 trials, one seed, ranksearch and per-layer only")
    parser.add_argument("--page-only", action="store_true", help="write the page from the stored points; run nothing")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes sharing the work (run each with OMP_NUM_THREADS=1; default 1)"
    )
    parser.add_argument("--out", help="folder for the stored points (default runs/search_quality/<study>)")
    parser.add_argument("--results", help="write the results page (markdown) here")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.seeds, args.arms = 12, "0", "ranksearch,per-layer"
    return args


def main() -> None:
    args = parse_args()
    helpers = []
    if args.jobs > 1 and not args.page_only:  # more copies of this command share the stored points
        argv = without_option(sys.argv[1:], "--jobs")
        helpers = [subprocess.Popen([sys.executable, __file__, *argv]) for _ in range(args.jobs - 1)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study_file = load_study_file(args.study)
    settings = study_file.evaluator
    if args.device:
        settings = dataclasses.replace(settings, device=args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    out = Path(args.out or f"runs/search_quality/{Path(args.study).stem}")
    out.mkdir(parents=True, exist_ok=True)
    store = PointStore(out)
    print(
        f"device: {cpu_model()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, optuna {optuna.__version__}"
    )
    print(f"{args.study}: {args.trials} trials' worth per search, seeds {seeds}, targets {targets}; points in {out}")

    splits = load_dataset(study_file.data.name, **study_file.data.options)
    data = study_file.data
    train_loader, val_loader = make_loaders(
        splits, batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, seed=study_file.study.seed
    )
    model = load_model(study_file, splits, print)
    evaluator = Evaluator(model, train_loader, val_loader, settings)
    input_shape = evaluator.dense.input_shape
    layers = study_file.space.layers(model, input_shape)
    print(
        f"dense accuracy {evaluator.dense.accuracy:.4f}, {evaluator.dense.macs:,} MACs, {len(layers)} searched layers"
    )
    bench = Bench(args, store, evaluator, model, layers, train_loader, val_loader, study_file, settings, targets)

    def checkpoint() -> None:  # the page after every phase: a long run has a readable page all along
        summary = summarize(store, evaluator.dense.accuracy, targets)
        print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
        if args.results and "trial_seconds" in store.clock("search budget"):
            budget = store.clock("search budget")["trial_seconds"]
            write_page(args, store, summary, evaluator, study_file, args.trials * budget, budget, bench.final_table(),
                       bench.distill_table(), candidates_per_minute(store), time.perf_counter() - started,
                       bench.heldout_lines(arms))  # fmt: skip
            print(f"results page: {args.results}")

    if not args.page_only:
        work(bench.units(seeds, arms, checkpoint), store)
        for helper in helpers:
            if helper.wait():
                raise SystemExit(f"a --jobs helper process failed (exit {helper.returncode})")
    checkpoint()


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--jobs 2`` or ``--jobs=2``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


class Bench:
    """The benchmark's units of work (:class:`~_workqueue.Unit`) over one study file, and its tables."""

    def __init__(self, args, store, evaluator, model, layers, train_loader, val_loader, study_file, settings,
                 targets) -> None:  # fmt: skip
        self.args, self.store, self.evaluator, self.model = args, store, evaluator, model
        self.layers, self.train_loader, self.val_loader = layers, train_loader, val_loader
        self.study_file, self.settings, self.targets = study_file, settings, targets
        self.out = store.folder
        self.final_budgets = [float(b) for b in args.final_targets.split(",")] if args.final_epochs else []
        self._families = None
        self._one_shot: dict[float, CompressionConfig] | None = None
        self._taught: Evaluator | None = None

    # -- the plan ---------------------------------------------------------------------------------------------
    def units(self, seeds: list[int], arms: list[str], checkpoint: Callable[[], None]) -> list[Unit]:
        """In order of priority: the baselines at the targets (they fix the search budget), the sensitivity
        pass and one-shot allocations, the distillation check, the default search's seeds, the longer
        fine-tune, the baselines' and one-shot's finer grids, the other search arms."""
        store, targets = self.store, self.targets
        first = list(dict.fromkeys([*targets, 0.2, *self.final_budgets]))
        grid = budget_grid(targets, self.args.trials)
        units = [self._baseline(name, b) for name in BASELINES for b in first]
        head = [u.name for u in units]
        units.append(Unit("sensitivity", self._sensitivity, (self.out / "sensitivity.json").exists))
        units += [self._one_shot_unit(b) for b in first]
        if self.args.distill_check:
            other = self.other_fine_tune()[0]
            for arm in ("one-shot", "uniform tucker2"):
                after = (f"{arm}@{target}" for target in targets)
                units += [Unit(f"{other} {arm}@{t}", lambda a=arm, t=t: self._distill(a, t),
                               lambda a=arm, t=t: store.has(f"{other} {a}", None, t), (n,))
                          for t, n in zip(targets, after, strict=True)]  # fmt: skip
        searches = [(a, s) for a in ["ranksearch", *[a for a in arms if a != "ranksearch"]] for s in seeds]
        search_units = [self._search(arm, seed, head, checkpoint) for arm, seed in searches]
        units += search_units[: len(seeds)]
        units += [self._search(self.final_source(b), 0, head, checkpoint, [b])
                  for b in self.final_budgets if b not in targets]  # fmt: skip
        for budget in self.final_budgets:
            ours = [f"{self.final_source(budget)}-0"]
            for arm, after in (("ranksearch", ours), ("uniform tucker2", [f"uniform tucker2@{budget}"])):
                key = f"{arm}@{budget}"
                units.append(Unit(f"final {key}", lambda a=arm, b=budget: self._final(a, b),
                                  lambda k=key: k in store.read_json("final.json"), after))  # fmt: skip
        units += [self._baseline(name, b) for name in BASELINES for b in grid if b not in first]
        units += [self._one_shot_unit(b) for b in grid if b not in first]
        units += search_units[len(seeds) :]
        if self.holds_out():  # last: once every arm has made its choices
            after = [u.name for u in units if not u.name.startswith("final ")]
            units.append(Unit("held-out", lambda: self._heldout(arms),
                              lambda: not pending(self.out, self.heldout_arms(arms), self.targets), after))  # fmt: skip
        return units

    def _baseline(self, name: str, budget: float) -> Unit:
        return Unit(f"{name}@{budget}", lambda: self._run_baseline(name, budget),
                    lambda: self.store.has(name, None, budget))  # fmt: skip

    def _one_shot_unit(self, budget: float) -> Unit:
        return Unit(f"one-shot@{budget}", lambda: self._run_one_shot(budget),
                    lambda: self.store.has("one-shot", None, budget), ("sensitivity",))  # fmt: skip

    def _search(self, arm: str, seed: int, head: list[str], checkpoint: Callable[[], None],
                targets: list[float] | None = None) -> Unit:  # fmt: skip
        def run() -> None:
            run_search(self.store, arm, seed, self.search_wall(), self.model, self.train_loader, self.val_loader,
                       self.study_file, self.settings, targets or self.targets, self.out)  # fmt: skip
            checkpoint()

        return Unit(f"{arm}-{seed}", run, lambda: bool(self.store.clock(f"{arm}-{seed}").get("done")), head)

    # -- running a unit ---------------------------------------------------------------------------------------
    def search_wall(self) -> float:
        """CPU seconds per search: ``--trials`` times the median baseline evaluation at the targets (fixed when
        first computed, so a resumed run keeps it)."""
        budget = self.store.clock("search budget")  # set once, under the lock, by update_json below
        if "trial_seconds" not in budget:
            evaluated = [r["seconds"] for r in self.store.rows
                         if r["seed"] is None and r["arm"] in BASELINES and r.get("accuracy")]  # fmt: skip
            median = statistics.median(evaluated)
            budget = self.store.update_json("clocks.json", lambda c: c.setdefault(
                "search budget", {"seconds": 0.0, "trial_seconds": median}))["search budget"]  # fmt: skip
        wall = self.args.trials * budget["trial_seconds"]
        print(f"median full evaluation {budget['trial_seconds']:.1f} CPU s: each search gets {wall:.0f} s "
              f"({self.args.trials} trials' worth)")  # fmt: skip
        return wall

    def _run_baseline(self, name: str, budget: float) -> None:
        if self._families is None:
            self._families = baseline_families(self.model, list(self.layers), self.evaluator.dense.input_shape,
                                               self.evaluator.cache)  # fmt: skip
        config = try_config(self._families[name], budget)
        if config is None:
            self.store.add(arm=name, seed=None, key=budget, budget=budget, accuracy=None, macs=None, seconds=0.0,
                           skipped=f"cannot meet {budget:.0%} MACs")  # fmt: skip
            return
        row = evaluate_point(self.store, self.evaluator, name, budget, config)
        print(f"  {name} at {budget:.1%}: accuracy {row['accuracy']}, macs {row['macs']:.3f} ({row['seconds']:.0f} s)")

    def one_shot_configs(self) -> dict[float, CompressionConfig]:
        """The one-shot allocation at every budget the benchmark uses (the pass is stored, so this is cheap)."""
        if self._one_shot is None:
            budgets = sorted({*self.targets, 0.2, *self.final_budgets, *budget_grid(self.targets, self.args.trials)})
            shared = self.evaluator.cache
            self._one_shot, _, _ = one_shot_configs(self.evaluator, self.layers, budgets, FactorCache(),
                                                    self.out / "sensitivity.json")  # fmt: skip
            self.evaluator.cache = shared
        return self._one_shot

    def _sensitivity(self) -> None:
        """The sensitivity pass, timed on a fresh factor cache (the search's pass starts from nothing too)."""
        shared = self.evaluator.cache
        _, seconds, probes = one_shot_configs(self.evaluator, self.layers, [], FactorCache(),
                                              self.out / "sensitivity.json")  # fmt: skip
        self.evaluator.cache = shared
        self.store.clock("one-shot", seconds, sensitivity_seconds=seconds, probes=probes)
        print(f"  one-shot: sensitivity pass {probes} proxy evaluations in {seconds:.0f} s")

    def _run_one_shot(self, budget: float) -> None:
        config = self.one_shot_configs().get(budget)
        if config is None:
            self.store.add(arm="one-shot", seed=None, key=budget, budget=budget, accuracy=None, macs=None,
                           seconds=0.0, skipped="below the cheapest allocation")  # fmt: skip
            return
        row = evaluate_point(self.store, self.evaluator, "one-shot", budget, config)
        self.store.clock("one-shot", row["seconds"])
        print(f"  one-shot at {budget:.1%}: accuracy {row['accuracy']}, macs {row['macs']:.3f}")

    def other_fine_tune(self) -> tuple[str, float]:
        """The distillation check's fine-tune: (its arm prefix, its distillation weight), the other of labels
        only and distillation at 0.5 than the study's."""
        return ("labels-only", 0.0) if self.evaluator.distill > 0 else ("distill", 0.5)

    def _distill(self, arm: str, target: float) -> None:
        """One config (one-shot or uniform Tucker-2 at ``target``) with the other brief fine-tune
        (:meth:`other_fine_tune`), to set beside its point."""
        prefix, weight = self.other_fine_tune()
        base = self.store.get(arm, None, target)
        if base is None or base.get("accuracy") is None:
            self.store.add(arm=f"{prefix} {arm}", seed=None, key=target, budget=target, accuracy=None, macs=None,
                           seconds=0.0, skipped=f"no {arm} point at {target:.0%}")  # fmt: skip
            return
        if self._taught is None:
            other = dataclasses.replace(self.settings, distill=weight)
            self._taught = Evaluator(self.model, self.train_loader, self.val_loader, other,
                                     cache=self.evaluator.cache)  # fmt: skip
        evaluate_point(self.store, self._taught, f"{prefix} {arm}", target, CompressionConfig.from_dict(base["config"]))

    def final_source(self, budget: float) -> str:
        """The search whose choice at <= ``budget`` gets the longer fine-tune: the default search (seed 0) where
        ``budget`` is one of its targets, else the default search aimed at ``budget`` alone (a user who cares
        about 20% names 20%; a search aimed at 10 / 25 / 50% spends almost nothing between 10% and 25%)."""
        return "ranksearch" if budget in self.targets else f"{AIMED}{budget:g}"

    def _final(self, arm: str, budget: float) -> None:
        if "dense" not in self.store.read_json("final.json"):
            dense = evaluate_accuracy(self.model, self.val_loader, self.evaluator.device)
            self.store.update_json("final.json", lambda done: done.setdefault("dense", dense))
        source, seed = (self.final_source(budget), 0) if arm == "ranksearch" else (arm, None)
        result = final_run(self.store, self.evaluator, self.model, self.train_loader, self.val_loader, source, seed,
                           budget, self.args.final_epochs)  # fmt: skip
        self.store.update_json("final.json", lambda done: done.update({f"{arm}@{budget}": result}))

    # -- the held-out check (_heldout.py) ---------------------------------------------------------------------
    def holds_out(self) -> bool:
        """Whether validation images outside the evaluator's subset are left to check the choices on."""
        return subset_images(self.evaluator) < len(self.val_loader.dataset)

    @staticmethod
    def heldout_arms(arms: list[str]) -> list[str]:
        return [*HELDOUT_ARMS, *(a for a in arms if a not in HELDOUT_ARMS)]

    def _heldout(self, arms: list[str]) -> None:
        heldout_rows(self.out, self.evaluator, self.val_loader, self.heldout_arms(arms), self.targets,
                     subset_images(self.evaluator))  # fmt: skip

    def heldout_lines(self, arms: list[str]) -> list[str]:
        """The page's held-out section, of what is measured so far (nothing when nothing is held out)."""
        if not self.holds_out() or not (self.out / "points.jsonl").exists():
            return []
        subset = subset_images(self.evaluator)
        rows = heldout_rows(self.out, None, self.val_loader, self.heldout_arms(arms), self.targets, subset)
        return section(rows, self.targets, subset, len(self.val_loader.dataset))

    # -- tables for the page ----------------------------------------------------------------------------------
    def distill_table(self) -> pd.DataFrame | None:
        if not self.args.distill_check:
            return None
        prefix, weight = self.other_fine_tune()
        ours = f"distill {self.evaluator.distill:g}" if self.evaluator.distill else "labels only"
        theirs = f"distill {weight:g}" if weight else "labels only"
        rows = []
        for arm in ("one-shot", "uniform tucker2"):
            for target in self.targets:
                base, other = self.store.get(arm, None, target), self.store.get(f"{prefix} {arm}", None, target)
                if base and other and other.get("accuracy") is not None:
                    rows.append({"config": arm, "target": target, f"{ours} (the study's)": base["accuracy"],
                                 theirs: other["accuracy"]})  # fmt: skip
        return pd.DataFrame(rows)

    def final_table(self) -> tuple[pd.DataFrame, float] | None:
        if not self.final_budgets:
            return None
        return final_rows(self.store, self.final_budgets, self.args.final_epochs)


def run_search(store, arm, seed, wall, model, train_loader, val_loader, study_file, settings, targets, out) -> None:
    """One search arm and seed, trial by trial until its CPU-time budget is spent (resumable: the study is
    stored, the clock too)."""
    name = f"{arm}-{seed}"
    if store.clock(name).get("done"):
        return
    options = dict(SEARCH_ARMS["ranksearch" if arm.startswith(AIMED) else arm])
    with patched(PATCHES_OF_ARM.get(arm, {})):
        _run_search(store, name, arm, seed, wall, options, model, train_loader, val_loader, study_file, settings,
                    targets, out)  # fmt: skip


@contextlib.contextmanager
def patched(values: dict[tuple[object, str], object]) -> Iterator[None]:
    """``{(module, name): value}`` set while a search arm runs, restored afterwards."""
    saved = {key: getattr(*key) for key in values}
    for (module, name), value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def _run_search(store, name, arm, seed, wall, options, model, train_loader, val_loader, study_file, settings,
                targets, out) -> None:  # fmt: skip
    start = cpu_clock()
    search = RankSearch(model, train_loader, val_loader, storage=f"sqlite:///{out}/{name}.db", study_name=name,
                        space=study_file.space, evaluator=settings, seed=seed, targets={"macs": targets},
                        cache=FactorCache(), **options)  # fmt: skip
    store.clock(name, cpu_clock() - start)
    if search.proposer is not None and "sensitivity_cpu_seconds" not in store.clock(name):
        start = cpu_clock()  # the sensitivity pass on its own clock: the study records it in wall seconds
        search.prepare(log=lambda _: None)
        spent = cpu_clock() - start
        store.clock(name, spent, sensitivity_cpu_seconds=spent)
    while store.clock(name)["seconds"] < wall:
        start = cpu_clock()
        search.optimize(n_trials=1, show_progress=False)
        store.clock(name, cpu_clock() - start)
        frame = search.trials_dataframe()
        last = frame.iloc[-1]
        print(f"  {name}: trial {int(last['trial'])} accuracy {last['accuracy']:.4f} macs {last['macs']:.3f} "
              f"({store.clock(name)['seconds']:.0f}/{wall:.0f} s)")  # fmt: skip
    trials = search.trials_dataframe()
    sensitivity = search.study.user_attrs.get("sensitivity") or {}
    attrs = {t.number: t.user_attrs for t in search.study.get_trials(deepcopy=False)}  # one storage read
    for _, row in trials.iterrows():
        own = attrs[int(row["trial"])]
        if store.has(arm, seed, int(row["trial"])):  # stored before an interruption
            continue
        store.add(arm=arm, seed=seed, key=int(row["trial"]), budget=None, accuracy=row["accuracy"], macs=row["macs"],
                  params=row.get("params_ratio"), accuracy_recalibrated=row.get("accuracy_recalibrated"),
                  proxy_loss=own.get("proxy_loss"), screened=own.get("screened") or 1, seconds=None,
                  config=own.get("config"))  # fmt: skip
    store.clock(name, 0.0, done=True, trials=len(trials), probes=sensitivity.get("probes", 0),
                sensitivity_seconds=sensitivity.get("seconds", 0.0))  # fmt: skip


def summarize(store: PointStore, dense_accuracy: float, targets: list[float]) -> pd.DataFrame:
    """Per arm: runs, configs per run, mean (and spread) of the front metrics over seeds, wall seconds."""
    frame = store.frame()
    skipped = ("distill ", "labels-only ", AIMED)  # the distillation check; searches aimed at a final budget alone
    frame = frame[frame["accuracy"].notna() & ~frame["arm"].str.startswith(skipped)].copy()
    # a search's repeated configs (copied measurements, no evaluation) are one point
    configs = frame["config"] if "config" in frame else [None] * len(frame)
    frame["config_key"] = [
        json.dumps(c, sort_keys=True) if isinstance(c, dict) else str(k)
        for c, k in zip(configs, frame["key"], strict=True)
    ]
    frame = frame.drop_duplicates(subset=["arm", "seed", "config_key"])
    rows = []
    for (arm, seed), group in frame.groupby(["arm", frame["seed"].fillna(-1)], sort=False):
        clock = store.clock(arm if seed == -1 else f"{arm}-{int(seed)}")
        seconds = clock["seconds"] if clock["seconds"] else group["seconds"].sum()
        rows.append({"arm": arm, "seed": seed, "configs": len(group), "seconds": seconds,
                     **front_metrics(group, dense_accuracy, targets)})  # fmt: skip
    per_run = pd.DataFrame(rows)
    metrics = [c for c in per_run.columns if c.startswith("acc@")]
    aggregations = {"runs": ("configs", "size"), "configs": ("configs", "mean"), "seconds": ("seconds", "mean"),
                    "hypervolume": ("hypervolume", "mean")}  # fmt: skip
    aggregations.update({m: (m, "mean") for m in metrics})
    aggregations.update({f"{m} sd": (m, lambda v: statistics.stdev(v) if len(v) > 1 else 0.0) for m in metrics})
    summary = per_run.groupby("arm", sort=False).agg(**aggregations)
    return summary.sort_values(metrics[0] if metrics else "hypervolume", ascending=False)


def candidates_per_minute(store: PointStore, arm: str = "ranksearch") -> dict[str, float]:
    """Candidates scored (sensitivity proxies + screened) and full evaluations per minute of a search arm."""
    frame = store.frame()
    runs = frame[(frame["arm"] == arm) & frame["seed"].notna()]
    if runs.empty or "proxy_loss" not in runs:  # no search trial stored yet (or a budget its preparation ate)
        return dict.fromkeys(("screened_per_minute", "full_per_minute", "proxy_rank_correlation",
                              "recalibrated_rank_correlation"), math.nan)  # fmt: skip
    minutes = screened = full = 0.0
    for seed, group in runs.groupby("seed"):
        clock = store.clock(f"{arm}-{int(seed)}")
        minutes += clock["seconds"] / 60
        screened += clock.get("probes", 0) + group["screened"].fillna(1).sum()
        full += group["config"].map(lambda c: json.dumps(c, sort_keys=True)).nunique()  # repeats cost nothing
    return {"screened_per_minute": screened / minutes if minutes else math.nan,
            "full_per_minute": full / minutes if minutes else math.nan,
            "proxy_rank_correlation": spearman(-runs["proxy_loss"].astype(float), runs["accuracy"].astype(float)),
            "recalibrated_rank_correlation": spearman(runs["accuracy_recalibrated"].astype(float),
                                                      runs["accuracy"].astype(float))}  # fmt: skip


if __name__ == "__main__":
    main()
