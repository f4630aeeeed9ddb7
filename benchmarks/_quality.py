"""The arms of ``search_quality.py``: baselines swept over budgets, the one-shot sensitivity allocation, and
time-limited searches; their points go to a :class:`~_workqueue.PointStore` that makes the run resumable.

Every arm's configs go through the same evaluator (same brief fine-tune, same batches). Each point records
the arm, seed, budget, accuracy, MACs and params ratios and the seconds it took.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _workqueue import PointStore, cpu_clock, write_atomic

import ranksearch
from ranksearch.allocation import Allocator, Knobs, option_costs
from ranksearch.cache import FactorCache
from ranksearch.config import CompressionConfig
from ranksearch.costs import count
from ranksearch.errors import RanksearchError
from ranksearch.evaluator import Evaluator
from ranksearch.heuristics import energy_config, error_balanced_config, uniform_config, vbmf_config
from ranksearch.layers import compressible_layers
from ranksearch.report import hypervolume
from ranksearch.screening import ProxySettings, Screen
from ranksearch.sensitivity import Sensitivity, measure_sensitivity
from ranksearch.space import LayerChoices

REFERENCE = (0.0, 1.0)  # accuracy 0, MACs 1.0 x dense


def budget_grid(targets: Sequence[float], size: int, low: float = 0.05, high: float = 0.75) -> list[float]:
    """``size`` MACs budgets: the targets, then log-spaced budgets in [low, high] filling the rest."""
    extra = max(0, size - len(targets))
    spaced = np.geomspace(low, high, extra).tolist() if extra else []
    return sorted({round(b, 4) for b in (*targets, *spaced)})


def baseline_families(model: torch.nn.Module, layers: Sequence[str], input_shape: tuple, cache: FactorCache):
    """{name: budget -> config or None}: the established rank-selection methods on the searched layers."""
    dense = count(model, input_shape).macs
    info = compressible_layers(model)

    def on(method: str) -> list[str]:
        return [n for n in layers if method in info[n].methods]

    def macs_of(config: CompressionConfig) -> float:
        return count(ranksearch.apply(model, config, cache=cache), input_shape).macs / dense

    shape = {"input_shape": input_shape}
    return {
        "uniform svd": lambda b: uniform_config(model, cost_fraction=b, method="svd", layers=on("svd"), **shape),
        "uniform tucker2": lambda b: uniform_config(
            model, cost_fraction=b, method="tucker2", layers=on("tucker2"), **shape
        ),
        "uniform cp": lambda b: uniform_config(model, cost_fraction=b, method="cp", layers=on("cp"), **shape),
        "uniform tt": lambda b: uniform_config(model, cost_fraction=b, method="tt", layers=on("tt"), **shape),
        "error-balanced svd": lambda b: error_balanced_config(
            model, b, method="svd", layers=on("svd"), cache=cache, **shape
        ),
        "error-balanced tucker2": lambda b: error_balanced_config(
            model, b, method="tucker2", layers=on("tucker2"), cache=cache, **shape
        ),
        "energy svd": lambda b: bisect(
            lambda e: energy_config(model, e, method="svd", layers=on("svd")), macs_of, b, 0.05, 1.0
        ),
        "vbmf tucker2": lambda b: bisect(
            lambda w: vbmf_config(model, method="tucker2", weakening=w, layers=on("tucker2")), macs_of, b, 0.0, 1.0
        ),
    }


def bisect(make: Callable[[float], CompressionConfig], macs_of: Callable[[CompressionConfig], float], budget: float,
           low: float, high: float, steps: int = 14) -> CompressionConfig | None:  # fmt: skip
    """The config of a one-parameter family (cost growing with the parameter) with the most MACs within
    ``budget`` (None if none is)."""
    best = None
    for _ in range(steps):
        middle = (low + high) / 2
        config = make(middle)
        if macs_of(config) <= budget:
            best, low = config, middle
        else:
            high = middle
    return best


def evaluate_point(store: PointStore, evaluator: Evaluator, arm: str, budget: float, config: CompressionConfig,
                   seed: int | None = None) -> dict:  # fmt: skip
    """Evaluate one config of an arm and store its point (failures are stored with accuracy None); the point
    records the CPU seconds the evaluation took."""
    start = cpu_clock()
    result = evaluator.evaluate(config)
    return store.add(arm=arm, seed=seed, key=budget, budget=budget,
                     accuracy=None if result.failure else result.accuracy, macs=result.macs_ratio,
                     params=result.params_ratio, seconds=cpu_clock() - start,
                     accuracy_recalibrated=result.accuracy_recalibrated, config=config.to_dict())  # fmt: skip


def one_shot_configs(
    evaluator: Evaluator, layers: dict[str, LayerChoices], budgets: Sequence[float], cache: FactorCache, stored: Path
) -> tuple[dict[float, CompressionConfig], float, int]:
    """The sensitivity pass (kept in ``stored``, measured once) and one allocation per budget:
    ({budget: config}, CPU seconds of the pass and the allocations, proxy evaluations)."""
    start = cpu_clock()
    evaluator.cache = cache
    measured = 0.0
    if stored.exists():
        stored_dict = json.loads(stored.read_text())
        sensitivity, measured = Sensitivity.from_dict(stored_dict), stored_dict.get("cpu_seconds", 0.0)
    else:
        sensitivity = measure_sensitivity(Screen(evaluator, ProxySettings().sensitivity()), layers)  # the search's
        write_atomic(stored, json.dumps({**sensitivity.to_dict(), "cpu_seconds": cpu_clock() - start}))
    allocator = Allocator(layers, sensitivity, option_costs(evaluator.model, layers, evaluator.dense.input_shape))
    configs = {b: allocator.config(Knobs(b)) for b in budgets if b > allocator.cheapest()}
    return configs, measured + cpu_clock() - start, sensitivity.probes


def front_metrics(points: pd.DataFrame, dense_accuracy: float, targets: Sequence[float]) -> dict[str, float]:
    """Hypervolume (dense model added) and the best accuracy at <= each MACs target of a point set."""
    points = points[points["accuracy"].notna()]
    accuracy = np.append(points["accuracy"].to_numpy(float), dense_accuracy)
    macs = np.append(points["macs"].to_numpy(float), 1.0)
    metrics = {"hypervolume": hypervolume(np.stack([-accuracy, macs], axis=1), (-REFERENCE[0], REFERENCE[1]))}
    for target in targets:
        under = accuracy[macs <= target + 1e-9]
        metrics[f"acc@{target:.0%}"] = float(under.max()) if len(under) else math.nan
    return metrics


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 pairs."""
    frame = pd.DataFrame({"a": a, "b": b}).dropna()
    if len(frame) < 3:
        return math.nan
    return float(frame["a"].rank().corr(frame["b"].rank()))


def try_config(family: Callable[[float], CompressionConfig | None], budget: float) -> CompressionConfig | None:
    try:
        return family(budget)
    except RanksearchError:
        return None
