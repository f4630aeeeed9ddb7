"""Cheap proxies of a config's quality: the first fidelity of the search's multi-fidelity evaluation.

A proxy score builds the compressed model from the factor cache, re-estimates BatchNorm statistics on a
few training batches and measures the loss and the metric on a few validation batches, without any
fine-tuning: about the cost of a dozen forward passes, against a full evaluation's hundred training steps.
The search uses it twice: per-layer sensitivity curves (one layer compressed at a time) and screening,
where several candidate configs compete and only the best by proxy earns the brief fine-tune. Without
labels the loss is the distillation loss towards the dense model and the metric is the fidelity
(:mod:`ranksearch.fidelity`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch

from .adapters import batch_size, first_samples
from .config import CompressionConfig
from .errors import RanksearchError
from .evaluator import Evaluator
from .fidelity import agreement, distillation_loss, reference

__all__ = ["ProxyScore", "ProxySettings", "Screen"]


@dataclass(frozen=True)
class ProxySettings:
    """How proxies are measured.

    Attributes:
        bn_batches: training batches for BatchNorm recalibration (capped by the evaluator's batches).
        eval_samples: validation samples the loss and metric are measured on (the evaluator's first ones;
            fewer when its validation subset is smaller).
        sensitivity_bn_batches, sensitivity_eval_samples: the same for the per-layer sensitivity pass
            (:meth:`sensitivity`), which scores one layer at a time, hundreds of times: on ResNet-20 /
            Fashion-MNIST half the batches and samples halved the pass's CPU time (348 against 700 s) and the
            one-shot allocations from its curves fine-tuned to 0.8975 / 0.9287 / 0.9419 at 10 / 25 / 50% MACs
            against 0.894 / 0.928 / 0.9395 from the full proxy's; what the pass saves buys the search trials.
    """

    bn_batches: int = 4
    eval_samples: int = 512
    sensitivity_bn_batches: int = 2
    sensitivity_eval_samples: int = 256

    def sensitivity(self) -> ProxySettings:
        """The settings of the sensitivity pass's proxy."""
        return ProxySettings(self.sensitivity_bn_batches, self.sensitivity_eval_samples, self.sensitivity_bn_batches,
                             self.sensitivity_eval_samples)  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("bn_batches", "eval_samples", "sensitivity_bn_batches", "sensitivity_eval_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RanksearchError(f"proxy setting {name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class ProxyScore:
    """A config's proxy: mean ``loss`` (lower is better; inf when not finite), ``metric`` (e.g. accuracy)
    on the proxy's validation batches after BatchNorm recalibration, and the ``seconds`` it took. Without
    labels: the distillation loss towards the dense model's outputs, and the fidelity."""

    loss: float
    metric: float
    seconds: float


class Screen:
    """Proxy scores of configs of one evaluator's model, on the evaluator's fixed batches."""

    def __init__(self, evaluator: Evaluator, settings: ProxySettings | None = None) -> None:
        self.evaluator = evaluator
        self.settings = settings or ProxySettings()
        self.batches = _first_samples(evaluator.val_batches, self.settings.eval_samples)
        self.teacher = None if evaluator.labels else self._dense_outputs()
        # The dense model recalibrated the same way, so that a loss increase is the compression's alone.
        self.dense = self._score_model(copy.deepcopy(evaluator.model), recalibrate=True, start=time.perf_counter())

    def score(self, config: CompressionConfig) -> ProxyScore:
        """The proxy of one config (a config the model cannot take is a :class:`ConfigError`)."""
        start = time.perf_counter()
        resolved = config.resolve(self.evaluator.model)
        model = self.evaluator.compress(resolved)
        return self._score_model(model, recalibrate=True, start=start)

    def score_model(self, model: torch.nn.Module, *, recalibrate: bool = True) -> ProxyScore:
        """The proxy of a model built elsewhere (e.g. after a few fine-tune steps: a costlier fidelity)."""
        return self._score_model(model, recalibrate=recalibrate, start=time.perf_counter())

    def _score_model(self, model: torch.nn.Module, *, recalibrate: bool, start: float) -> ProxyScore:
        evaluator = self.evaluator
        if recalibrate:
            evaluator.recalibrate(model, self.settings.bn_batches)
        model.eval()
        loss_sum = metric_sum = 0.0
        count = 0
        with torch.no_grad(), evaluator.autocast():
            for index, (inputs, targets) in enumerate(self.batches):
                logits = evaluator.adapter.forward(model, inputs).float()
                size = batch_size(inputs)
                if targets is None:  # no labels: how far from the dense model
                    teacher, kind = self.teacher[index], evaluator.fidelity_kind
                    temperature = evaluator.settings.distill_temperature
                    loss_sum += float(distillation_loss(logits, teacher, kind, temperature)) * size
                    metric_sum += agreement(logits, reference(teacher, kind), kind) * size
                else:
                    loss_sum += float(evaluator.loss_fn(logits, targets)) * size
                    metric_sum += evaluator.metric(logits, targets) * size
                count += size
        loss = loss_sum / count
        return ProxyScore(loss if math.isfinite(loss) else math.inf, metric_sum / count, time.perf_counter() - start)

    def _dense_outputs(self) -> list[torch.Tensor]:
        """The dense model's outputs (float32, as it is: not recalibrated) on the proxy's batches."""
        evaluator = self.evaluator
        evaluator.model.eval()
        with torch.no_grad(), evaluator.autocast():
            return [evaluator.adapter.forward(evaluator.model, inputs).float() for inputs, _ in self.batches]


def _first_samples(batches: list, samples: int) -> list:
    """The leading batches holding ``samples`` samples (the last one cut to fit)."""
    kept, left = [], samples
    for inputs, targets in batches:
        if left <= 0:
            break
        size = batch_size(inputs)
        kept.append((first_samples(inputs, left, size), first_samples(targets, left, size)))
        left -= size
    return kept
