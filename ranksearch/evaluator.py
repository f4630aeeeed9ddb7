"""The evaluator: one compression config in, its measured accuracy and cost out. No Optuna here.

Per config: build the compressed model from the factor cache (a slice or a memoized fit, never a
fresh decomposition of a known weight), measure zero-shot accuracy, re-estimate BatchNorm statistics on
a few training batches, measure again, fine-tune briefly (a fixed number of SGD steps with cosine
decay) unless the recalibrated accuracy is below a floor, and measure once more. All measurements use
a fixed validation subset and fixed training batches drawn once, so trials are comparable and
deterministic for a seed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._fixed_data import check_model_on_data, take_batches
from .cache import FactorCache
from .compress import apply_resolved
from .config import CompressionConfig, ResolvedLayer
from .costs import count
from .errors import RanksearchError
from .latency import LatencyEstimator, LatencySettings, LatencyTable
from .record import Measurements, trial_attributes

__all__ = ["DenseMeasurement", "Evaluation", "Evaluator", "EvaluatorSettings"]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
Metric = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass(frozen=True)
class EvaluatorSettings:
    """How each trial is fine-tuned and measured.

    Attributes:
        finetune_steps: SGD steps of the brief fine-tune (0 = measure without fine-tuning).
        lr: peak learning rate of the fine-tune (cosine decay to 0 over the steps).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        eval_batches: validation batches to evaluate on (None = the whole validation loader).
        bn_batches: training batches for BatchNorm recalibration (0 = no recalibration).
        accuracy_floor: skip the fine-tune when the recalibrated accuracy is below this (0 = never).
        device: torch device for fine-tune and evaluation, e.g. "cpu" or "cuda".
        threads: CPU threads for torch (``torch.set_num_threads``, process-wide); None keeps torch's
            default. On a busy machine fewer threads than cores avoids oversubscription.
        seed: seeds the fine-tune (the same seed gives the same metrics on CPU).
        amp: mixed precision for fine-tune and evaluation on CUDA: ``"bfloat16"`` or ``"float16"``
            (autocast; float16 with loss scaling); None runs in float32.
        distill: weight in [0, 1] of distillation from the dense model in the fine-tune loss:
            ``(1 - distill) * loss(logits, targets) + distill * T^2 * KL(dense || compressed)`` at
            temperature ``distill_temperature`` (Hinton et al. 2015); 0 = labels only.
        distill_temperature: softmax temperature of the distillation term (> 0).
    """

    finetune_steps: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_batches: int | None = None
    bn_batches: int = 10
    accuracy_floor: float = 0.0
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    amp: str | None = None
    distill: float = 0.0
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        for name in ("finetune_steps", "bn_batches", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RanksearchError(f"evaluator setting {name} must be an int >= 0, got {value!r}")
        for name in ("eval_batches", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RanksearchError(f"evaluator setting {name} must be an int >= 1 or None, got {value!r}")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise RanksearchError(f"evaluator setting {name} must be a finite number >= 0, got {value!r}")
        for name in ("accuracy_floor", "distill"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise RanksearchError(f"evaluator setting {name} must be a number in [0, 1], got {value!r}")
        t = self.distill_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
            raise RanksearchError(f"evaluator setting distill_temperature must be a finite number > 0, got {t!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise RanksearchError(f"evaluator setting device {self.device!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RanksearchError(f"device {self.device!r} requested but CUDA is not available on this machine")
        if self.amp is not None:
            if self.amp not in AMP_DTYPES:
                raise RanksearchError(
                    f"evaluator setting amp must be one of {', '.join(AMP_DTYPES)} or None, got {self.amp!r}"
                )
            if device.type != "cuda":
                raise RanksearchError(
                    f"evaluator setting amp={self.amp!r} needs a CUDA device (device is {self.device!r})"
                )


@dataclass(frozen=True)
class DenseMeasurement:
    """The uncompressed model measured once: accuracy on the validation subset, MACs and params, and its
    latency in seconds when latency is measured (batch, device and dtype as the latency settings say)."""

    accuracy: float
    macs: int
    params: int
    input_shape: tuple[int, ...]
    latency_seconds: float | None = None


@dataclass(kw_only=True)
class Evaluation(Measurements):
    """Everything measured for one config (the fields of :class:`~ranksearch.record.Measurements`), the
    config itself, and the compressed model when asked for."""

    config: CompressionConfig
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    """The compressed, fine-tuned model, kept only when asked (``evaluate(..., keep_model=True)``)."""

    def attributes(self) -> dict[str, object]:
        """The user attributes a study stores for this trial (:func:`ranksearch.record.trial_attributes`)."""
        return trial_attributes(self.config.to_dict(), self)


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == targets).float().mean().item()


class Evaluator:
    """Measures compression configs of one model on fixed data.

    Args:
        model: the trained model; a private copy is kept on the settings' device.
        train_loader: yields ``(inputs, targets)``; its first batches are used for BatchNorm
            recalibration and fine-tuning.
        val_loader: yields ``(inputs, targets)``; the first ``eval_batches`` are the evaluation set.
        settings: fine-tune and measurement settings.
        metric: ``metric(logits, targets) -> float`` (higher is better) replacing top-1 accuracy;
            averaged over validation batches weighted by batch size.
        loss_fn: fine-tune loss ``loss_fn(logits, targets)`` (default: cross-entropy).
        cache: a shared :class:`FactorCache` (a private one by default).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable,
        settings: EvaluatorSettings | None = None,
        *,
        metric: Metric | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        cache: FactorCache | None = None,
        latency: LatencySettings | None = None,
        latency_table: LatencyTable | None = None,
    ) -> None:
        self.settings = settings or EvaluatorSettings()
        if self.settings.threads is not None:
            torch.set_num_threads(self.settings.threads)
        self.device = torch.device(self.settings.device)
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.metric = metric or _accuracy
        self.loss_fn = loss_fn or F.cross_entropy
        self.cache = cache or FactorCache()
        self._teacher: list[torch.Tensor] | None = None
        need = max(self.settings.finetune_steps, self.settings.bn_batches, 1)
        seed = self.settings.seed
        self.train_batches = take_batches(train_loader, need, self.device, "training", seed)
        self.val_batches = take_batches(val_loader, self.settings.eval_batches, self.device, "validation", seed)
        if self.settings.eval_batches is not None and len(self.val_batches) > self.settings.eval_batches:
            self.val_batches = self.val_batches[: self.settings.eval_batches]
        check_model_on_data(self.model, self.val_batches, self.train_batches, class_labels=self.metric is _accuracy)
        input_shape = (1, *self.val_batches[0][0].shape[1:])
        cost = count(self.model, input_shape)
        self.latency = (
            None if latency is None else LatencyEstimator(self.model, input_shape[1:], latency, latency_table)
        )
        latency_seconds = None if self.latency is None else self.latency.dense_seconds
        self.dense = DenseMeasurement(self.measure(self.model), cost.macs, cost.params, input_shape, latency_seconds)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the ``amp`` dtype on CUDA, or nothing (float32)."""
        if self.settings.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.settings.amp])

    # --- measurements -------------------------------------------------------------------------
    def measure(self, model: nn.Module) -> float:
        """The metric of ``model`` on the validation subset (eval mode, no gradients)."""
        model.eval()
        total, weight = 0.0, 0
        with torch.no_grad(), self.autocast():
            for inputs, targets in self.val_batches:
                total += self.metric(model(inputs).float(), targets) * len(targets)
                weight += len(targets)
        return total / weight

    def recalibrate(self, model: nn.Module, batches: int | None = None) -> bool:
        """Re-estimate BatchNorm running statistics on the first ``batches`` training batches (default:
        ``bn_batches``); False if there is no BatchNorm (or no batch to use)."""
        batches = self.settings.bn_batches if batches is None else min(batches, len(self.train_batches))
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or batches == 0:
            return False
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        model.train()
        with torch.no_grad():
            for inputs, _ in self.train_batches[:batches]:
                model(inputs)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
        return True

    def finetune(self, model: nn.Module) -> None:
        """``finetune_steps`` SGD steps with cosine learning-rate decay; raises on a non-finite loss."""
        s = self.settings
        optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type) if s.amp == "float16" else None  # float16 gradients underflow
        model.train()
        for step in range(s.finetune_steps):
            for group in optimizer.param_groups:
                group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * step / s.finetune_steps))
            inputs, targets = self.train_batches[step]
            with self.autocast():
                loss = self._finetune_loss(model(inputs).float(), targets, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tune loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        model.eval()

    def _finetune_loss(self, logits: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
        """The fine-tune loss of one training batch: the loss on labels, blended with distillation."""
        weight = self.settings.distill
        loss = self.loss_fn(logits, targets)
        if weight == 0:
            return loss
        t = self.settings.distill_temperature
        teacher = F.log_softmax(self.teacher_logits()[step] / t, dim=1)
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), teacher, log_target=True, reduction="batchmean")
        return (1 - weight) * loss + weight * t * t * kl

    def teacher_logits(self) -> list[torch.Tensor]:
        """The dense model's logits (float32) on the fine-tune batches, computed once (eval mode)."""
        if self._teacher is None:
            self.model.eval()
            with torch.no_grad(), self.autocast():
                steps = self.train_batches[: self.settings.finetune_steps]
                self._teacher = [self.model(inputs).float() for inputs, _ in steps]
        return self._teacher

    def evaluate(
        self, config: CompressionConfig, *, keep_model: bool = False, measure_latency: bool = False
    ) -> Evaluation:
        """Measure one config; a failure (NaN loss, an exception) is recorded, not raised.

        With ``keep_model`` the compressed, fine-tuned model is returned in ``Evaluation.model``
        (what ``ranksearch export`` saves). With latency settings, the latency is predicted from the
        latency table; ``measure_latency`` also times the whole compressed model.

        Bad configs (unknown layer, rank out of range) still raise :class:`ConfigError`: they are
        the caller's bug, not a property of the config's quality.
        """
        resolved = config.resolve(self.model)  # a bad config is an error, not a failed trial
        result = Evaluation(config=config)
        watch = _Stopwatch(result.seconds)
        torch.manual_seed(self.settings.seed)
        try:
            model = apply_resolved(self.model, resolved, cache=self.cache)
            watch.lap("decompose")
            self._measure_costs(result, resolved, model, watch, measure_latency=measure_latency)
            self._measure_metric(result, model, watch)
        except (RanksearchError, RuntimeError, FloatingPointError, ValueError) as error:
            result.failure = f"{type(error).__name__}: {error}"
        result.seconds["total"] = watch.total()
        if result.failure is None and not math.isfinite(result.accuracy):
            result.failure = f"the metric is not finite ({result.accuracy})"
        if keep_model and result.failure is None:
            result.model = model
        return result

    def _measure_costs(
        self,
        result: Evaluation,
        resolved: Sequence[ResolvedLayer],
        model: nn.Module,
        watch: _Stopwatch,
        *,
        measure_latency: bool,
    ) -> None:
        """Layer errors, MACs, params and (with latency settings) latency of ``model`` into ``result``."""
        result.layer_errors = {
            layer.name: self.cache.relative_error(layer.module, layer.method, layer.rank) for layer in resolved
        }
        cost = count(model, self.dense.input_shape)
        result.macs, result.params = cost.macs, cost.params
        result.macs_ratio, result.params_ratio = cost.macs / self.dense.macs, cost.params / self.dense.params
        watch.lap("cost")
        if self.latency is not None:
            result.latency_seconds = self.latency.predict(resolved, model)
            result.latency_ratio = result.latency_seconds / self.latency.dense_seconds
            if measure_latency:
                result.latency_measured_seconds = self.latency.measure_model(model)
            watch.lap("latency")

    def _measure_metric(self, result: Evaluation, model: nn.Module, watch: _Stopwatch) -> None:
        """The metric zero-shot, after recalibration and after the fine-tune (unless skipped) into ``result``."""
        result.accuracy = result.accuracy_zero_shot = self.measure(model)
        if self.recalibrate(model):
            result.accuracy = result.accuracy_recalibrated = self.measure(model)
        watch.lap("recalibrate")
        if self.settings.finetune_steps == 0:
            result.finetune_skipped = "finetune_steps is 0"
        elif result.accuracy < self.settings.accuracy_floor:
            floor = self.settings.accuracy_floor
            result.finetune_skipped = f"accuracy {result.accuracy:.4f} before fine-tuning is below the floor {floor}"
        else:
            self.finetune(model)
            watch.lap("finetune")
            result.accuracy = result.accuracy_finetuned = self.measure(model)
        watch.lap("evaluate")


class _Stopwatch:
    """Wall times of consecutive phases, written to ``seconds`` by name as each one ends."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.start = self.clock = time.perf_counter()

    def lap(self, name: str) -> None:
        """End phase ``name`` (begun at the previous lap, or at the start) and begin the next one."""
        now = time.perf_counter()
        self.seconds[name] = now - self.clock
        self.clock = now

    def total(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start
