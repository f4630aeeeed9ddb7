"""The results page of ``search_quality.py`` and its longer fine-tune of the chosen configs."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import optuna
import pandas as pd
import torch
from _machine import cpu_model
from _workqueue import cpu_clock

import ranksearch
from ranksearch.config import CompressionConfig
from ranksearch.finetune import finetune_epochs
from ranksearch.training import evaluate_accuracy

BASELINES = (
    "uniform svd",
    "uniform tucker2",
    "uniform cp",
    "uniform tt",
    "error-balanced svd",
    "error-balanced tucker2",
    "energy svd",
    "vbmf tucker2",
)


def best_under(frame: pd.DataFrame, arm: str, budget: float, seed: int | None) -> pd.Series | None:
    rows = frame[(frame["arm"] == arm) & frame["accuracy"].notna() & (frame["macs"] <= budget + 1e-9)]
    rows = rows[rows["seed"].isna()] if seed is None else rows[rows["seed"] == seed]
    return None if rows.empty else rows.sort_values(["accuracy", "macs"], ascending=[False, True]).iloc[0]


def _fine_tune(evaluator) -> str:
    s = evaluator.settings
    clip = f", gradient norm clipped to {s.grad_clip:g}" if s.grad_clip else ""
    distill = (
        f"distillation from the dense model at weight {evaluator.distill:g}" if evaluator.distill else "labels only"
    )
    return f"{s.finetune_steps} SGD steps at lr {s.lr:g}, {distill}{clip}"


def longer_finetune(evaluator, model, config, train_loader, epochs, *, lr=0.01, log=print, checkpoint=None,
                    order_seed=0):  # fmt: skip
    """``config`` applied to ``model``, BatchNorm recalibrated, then fine-tuned ``epochs`` epochs (cosine decay
    from ``lr``) with the brief fine-tune's gradient clipping and distillation from ``model``: the benchmarks'
    longer fine-tune, in one place. Returns the compressed model.

    The training loader's shuffling generator (where it has one) starts from ``order_seed`` and is given back
    as it was: every config sees the same batches in the same order, whatever ran before it (the finals of a
    benchmark no longer depend on their order)."""
    compressed = ranksearch.apply(model, config, cache=evaluator.cache)
    evaluator.recalibrate(compressed)
    generator = getattr(train_loader, "generator", None)
    saved = generator.get_state() if isinstance(generator, torch.Generator) else None
    if saved is not None:
        generator.manual_seed(order_seed)
    try:
        finetune_epochs(compressed, train_loader, epochs=epochs, lr=lr, device=evaluator.device,
                        grad_clip=evaluator.settings.grad_clip, distill=evaluator.distill, teacher=model, log=log,
                        checkpoint=checkpoint)  # fmt: skip
    finally:
        if saved is not None:
            generator.set_state(saved)
    return compressed


def final_run(store, evaluator, model, train_loader, val_loader, arm, seed, budget, epochs) -> dict:
    """The best config of ``arm`` (``seed``) at <= ``budget`` MACs, fine-tuned ``epochs`` epochs, then measured on
    the whole validation set: ``{"accuracy", "macs", "brief accuracy", "seconds"}`` (CPU seconds, over every
    invocation). The longer fine-tune clips and distils as the brief one does, and keeps a checkpoint after each
    epoch under ``final/``, named by the config alone: an interrupted run resumes, a changed choice starts afresh,
    and a config chosen again (the search's best at <= 20% is often its best at <= 10%) is only loaded."""
    best = best_under(store.frame(), arm, budget, seed)
    if best is None:
        return {"accuracy": None, "skipped": f"no {arm} point at <= {budget:.0%} MACs"}
    config = CompressionConfig.from_dict(best["config"])
    digest = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    checkpoint = store.folder / "final" / f"{digest}.pt"
    checkpoint.parent.mkdir(exist_ok=True)
    clock_name, start = f"final {arm}@{budget}", [cpu_clock()]

    def log(line: str) -> None:  # each epoch's CPU time is stored as it ends, so a resumed run's total is whole
        print(f"  final {arm}@{budget}: {line.strip()}")
        store.clock(clock_name, cpu_clock() - start[0])
        start[0] = cpu_clock()

    compressed = longer_finetune(evaluator, model, config, train_loader, epochs, log=log, checkpoint=checkpoint)
    accuracy = evaluate_accuracy(compressed, val_loader, evaluator.device)
    seconds = store.clock(clock_name, cpu_clock() - start[0])["seconds"]
    return {"accuracy": accuracy, "macs": float(best["macs"]), "brief accuracy": float(best["accuracy"]),
            "seconds": seconds, "chosen by": arm if seed is None else f"{arm}-{seed}"}  # fmt: skip


def final_rows(store, budgets, epochs) -> tuple[pd.DataFrame, float] | None:
    """The longer fine-tune's table (from ``final.json``) and the dense accuracy on the whole validation set."""
    done = store.read_json("final.json")
    if "dense" not in done:
        return None
    rows = []
    for budget in budgets:
        for arm in ("ranksearch", "uniform tucker2"):
            entry = done.get(f"{arm}@{budget}")
            if not entry or entry.get("accuracy") is None:
                continue
            rows.append({"budget": budget, "arm": arm, "chosen by": entry.get("chosen by", arm), "macs": entry["macs"],
                         "brief accuracy": entry["brief accuracy"],
                         f"after {epochs} epochs": entry["accuracy"],
                         "vs dense (points)": 100 * (entry["accuracy"] - done["dense"]),
                         "seconds": entry["seconds"]})  # fmt: skip
    return pd.DataFrame(rows), done["dense"]


def _margins(summary: pd.DataFrame, targets: list[float]) -> list[str]:
    lines = []
    for target in targets:
        column = f"acc@{target:.0%}"
        if "ranksearch" not in summary.index or column not in summary:
            continue
        ours = summary.loc["ranksearch", column]
        baselines = summary.loc[[b for b in BASELINES if b in summary.index], column].dropna()
        if baselines.empty:
            continue
        best = baselines.idxmax()
        margin = ours - baselines.max()
        line = f"- <= {target:.0%} MACs: ranksearch {ours:.4f} vs best baseline {best} {baselines.max():.4f}"
        line += f" ({signed_points(margin)} points)"
        if "one-shot" in summary.index:
            line += f"; one-shot allocation {summary.loc['one-shot', column]:.4f}"
        lines.append(line + ".")
    return lines


def signed_points(delta: float) -> str:
    """An accuracy difference (a fraction) in points with its sign, e.g. ``+1.25``; a float error's ``-0.00`` is
    ``+0.00`` (a mean of equal accuracies can come out a hair under their value)."""
    return f"{round(100 * delta, 2) + 0.0:+.2f}"


def subset_images(evaluator) -> int:
    """How many labelled validation images the evaluator measures accuracy on (its fixed subset)."""
    return sum(len(targets) for _, targets in evaluator.val_batches if targets is not None)


def _resolution(evaluator) -> str:
    """What a difference in accuracy on the validation subset can mean: one image's worth, and the binomial
    standard error of an accuracy near the dense model's (differences within it are noise of the subset)."""
    images = subset_images(evaluator)
    if not images:
        return ""
    dense = evaluator.dense.accuracy
    error = 100 * math.sqrt(dense * (1 - dense) / images)
    return (f"- The validation subset has {images} images: one image is {100 / images:.2f} points, and the standard "
            f"error of an accuracy near the dense one ({dense:.4f}) is {error:.2f} points; the best of a search is "
            "picked on this subset, as the best of each baseline's grid is.")  # fmt: skip


def _commit() -> str:
    """The checked-out commit of the code being measured (``unknown`` outside a git checkout)."""
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                               cwd=Path(__file__).parent)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


def _training(study_file) -> str:
    recipe = asdict(study_file.training.train)
    text = ", ".join(f"{k} {v}" for k, v in recipe.items())
    return f"`[training]` {text} (SGD, Nesterov momentum 0.9, warm-up then cosine decay)"


def write_page(
    args, store, summary, evaluator, study_file, wall, trial_seconds, final, distill, rates, seconds, heldout
) -> None:
    """Write the markdown results page ``args.results`` (``heldout``: the held-out section's lines, first)."""
    targets = [float(t) for t in args.targets.split(",")]
    command = "python benchmarks/search_quality.py " + " ".join(sys.argv[1:])
    table = summary.reset_index().to_markdown(index=False, floatfmt=".4f")
    clocks = "\n".join(
        f"| {name} | {entry['seconds'] / 60:.1f} | {entry.get('trials', '')} | {entry.get('probes', '')} | "
        f"{entry.get('sensitivity_cpu_seconds', entry.get('sensitivity_seconds', 0.0)):.0f} |"
        for name, entry in store.clocks.items()
        if name != "search budget"
    )
    parts = [
        "# Search quality at matched budgets: ranksearch against the rank-selection baselines\n",
        f"Generated by `{command}` at commit {_commit()} on {cpu_model()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, "
        f"optuna {optuna.__version__}, Python {platform.python_version()}; this invocation {seconds / 60:.0f} min "
        "(points measured by earlier, interrupted invocations are reused; each arm's own time is below).\n",
        f"Study file `{args.study}`: dense accuracy {evaluator.dense.accuracy:.4f} on the evaluator's validation "
        f"subset; dense model trained by {_training(study_file)}.\n",
        "## Accounting\n",
        f"Every config of every arm gets the same brief fine-tune ({_fine_tune(evaluator)}). Times are CPU seconds "
        "of single-threaded "
        "processes (equal to wall-clock on an idle core, and not eaten by other load on a shared machine). The "
        f"median full evaluation took {trial_seconds:.1f} s, so each search got {wall / 60:.1f} min ({args.trials} "
        "trials' worth), its sensitivity pass and proxies included; each baseline was swept over as many MACs budgets "
        f"as that ({args.trials}: the targets {targets} and a log-spaced grid from 5% to 75%).\n",
        "| run | CPU minutes | full trials | proxy evaluations (sensitivity) | sensitivity seconds (CPU; searches "
        "run before the pass had its own clock: wall, as the study records it) |\n"
        "|:--|--:|--:|--:|--:|\n" + clocks + "\n",
        *(
            ["## Held out: each arm's choices on validation images that chose nothing\n", *heldout, ""]
            if heldout
            else []
        ),
        "## Best accuracy at <= each MACs target on the evaluator's validation subset (mean over seeds for the "
        "searches)\n",
        table + "\n",
        *_margins(summary, targets),
        _resolution(evaluator),
        "",
        "## Candidates per minute and the proxy's fidelity\n",
        f"ranksearch screened {rates['screened_per_minute']:.1f} candidates per minute (sensitivity proxies and "
        f"screened variants) and ran {rates['full_per_minute']:.2f} full evaluations per minute; a full evaluation "
        f"alone runs {60 / trial_seconds:.2f} per minute. Spearman rank correlation with the fine-tuned accuracy "
        f"over the search's trials: proxy loss (negated) {rates['proxy_rank_correlation']:.2f}, accuracy after "
        f"BatchNorm recalibration {rates['recalibrated_rank_correlation']:.2f}.\n",
    ]
    if distill is not None and not distill.empty:
        parts += ["## Distillation in the brief fine-tune\n", distill.to_markdown(index=False, floatfmt=".4f") + "\n"]
    if final is not None:
        frame, dense = final
        parts += [f"## After a longer fine-tune (whole validation set; dense {dense:.4f})\n",
                  frame.to_markdown(index=False, floatfmt=".4f") + "\n"]  # fmt: skip
    Path(args.results).write_text("\n".join(parts), encoding="utf-8")
