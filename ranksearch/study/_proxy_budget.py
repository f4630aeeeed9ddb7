"""What the ``allocate`` strategy's proxies may cost: they are spent only where they are cheap against a trial.

A proxy evaluation (BatchNorm recalibration and a few validation batches, no fine-tune) is worth spending where a
full evaluation costs many of them: on ResNet-20 / Fashion-MNIST a full evaluation costs about 30 screening
proxies (60 of the sensitivity pass's lighter ones), and screening 8 candidates per trial and ranking the uniform
configs pay (``benchmarks/RESULTS_fashion.md``). On the digits CNN it costs about 5 (7), screening 8 candidates
doubled each trial's cost (9-11 full trials in 30 trials' worth against 19 unscreened, which ended at least as
good at every target: ``benchmarks/RESULTS.md``, arm ``no-screen``) and the uniform-start check would cost
about three trials' worth, for a start that fine-tunes 5 points under the allocation at 10%. A full
evaluation's cost is estimated before any trial, as ``finetune_steps`` timed training steps of the dense model
(a lower bound: its recalibration and evaluation are left out).
"""

from __future__ import annotations

import copy
import math
import time

import torch

from ..evaluator import Evaluator
from ..sensitivity import Sensitivity

__all__ = ["SCREEN_SHARE", "screen_decision", "training_step_seconds", "trial_seconds", "uniform_start_check"]

SCREEN_SHARE = 0.5
"""The most a trial's screening may cost, as a share of its full evaluation."""


def training_step_seconds(evaluator: Evaluator, repeats: int = 3) -> float:
    """Seconds of one training step (forward and backward of a fine-tune batch) of a copy of the dense model: the
    fastest of ``repeats`` (the first pays one-off costs)."""
    model = copy.deepcopy(evaluator.model).to(evaluator.device).train()
    inputs, _ = evaluator.train_batches[0]
    fastest = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        with evaluator.autocast():
            outputs = evaluator.adapter.forward(model, inputs)
        outputs.float().square().mean().backward()  # any loss: the backward pass costs the same
        if evaluator.device.type == "cuda":
            torch.cuda.synchronize(evaluator.device)
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def trial_seconds(evaluator: Evaluator) -> float:
    """A lower bound of a full evaluation's seconds: ``finetune_steps`` timed training steps."""
    return evaluator.settings.finetune_steps * training_step_seconds(evaluator)


def uniform_start_check(proxies: int, sensitivity: Sensitivity, trial: float) -> dict[str, object]:
    """Whether ranking the uniform configs (``proxies`` evaluations at the sensitivity pass's seconds per proxy)
    costs less than one full evaluation (``trial`` seconds): ``{"ran", "check_seconds", "trial_seconds"}``."""
    check = proxies * sensitivity.seconds / max(sensitivity.probes, 1)
    return {"ran": check <= trial, "check_seconds": check, "trial_seconds": trial}


def screen_decision(asked: int, proxy_seconds: float, trial: float) -> dict[str, object]:
    """The candidates each trial screens: ``asked`` at most, as many as cost at most :data:`SCREEN_SHARE` of a
    full evaluation (``trial`` seconds) at ``proxy_seconds`` each, and 1 (no screening) where that is under 2:
    ``{"asked", "screen", "proxy_seconds", "trial_seconds"}``."""
    affordable = math.floor(SCREEN_SHARE * trial / proxy_seconds) if proxy_seconds > 0 else asked
    screen = asked if asked <= 1 else min(asked, affordable)
    return {"asked": asked, "screen": screen if screen >= 2 else 1, "proxy_seconds": proxy_seconds,
            "trial_seconds": trial}  # fmt: skip
