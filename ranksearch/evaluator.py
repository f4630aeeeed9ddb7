"""The evaluator: one compression config in, its measured accuracy and cost out. No Optuna here.

Per config: build the compressed model from the factor cache (a slice or a memoized fit, never a
fresh decomposition of a known weight), measure zero-shot accuracy, re-estimate BatchNorm statistics on
a few training batches, measure again, fine-tune briefly (a fixed number of SGD steps with cosine
decay) unless the recalibrated accuracy is below a floor, and measure once more. All measurements use
a fixed validation subset and fixed training batches drawn once, so trials are comparable and
deterministic for a seed.

Batches and outputs are read through a :class:`~ranksearch.adapters.BatchAdapter` (tensor pairs, dicts of
Hugging Face inputs, ``ModelOutput``s...). Without labels the quality is the fidelity to the dense model
(:mod:`ranksearch.fidelity`) and the fine-tune distills the dense model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._distill import TeacherOutputs, distill_weight
from ._evaluator_settings import AMP_DTYPES, EvaluatorSettings, check_objectives_have_labels, user_function
from ._fixed_data import check_model_on_data, take_batches
from ._stopwatch import Stopwatch
from .adapters import BatchAdapter, batch_size, call_model, describe, first_samples
from .attention import unpack_attention
from .cache import FactorCache
from .calibration import Calibration, calibrate_batches
from .compress import apply_resolved
from .config import CompressionConfig, ResolvedLayer
from .costs import count
from .errors import RanksearchError
from .fidelity import agreement, blended_loss, distillation_loss, reference, resolve_kind
from .latency import LatencyEstimator, LatencySettings, LatencyTable
from .memory import MemoryMeter, MemorySettings
from .record import Measurements, trial_attributes

__all__ = ["DenseMeasurement", "Evaluation", "Evaluator", "EvaluatorSettings"]

Metric = Callable[[torch.Tensor, torch.Tensor], float]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DenseMeasurement:
    """The uncompressed model measured once: accuracy on the validation subset (NaN when the batches carry
    no labels), MACs and params, its latency in seconds (as the latency settings say) and memory in bytes
    (:class:`MemorySettings`) when measured. ``input_shape`` is the input the MACs are counted for: a shape
    for a model called with one tensor, else the shapes of its example input
    (:func:`ranksearch.adapters.describe`, e.g. ``{"input_ids": (1, 16), "attention_mask": (1, 16)}``);
    the example itself is :attr:`Evaluator.example_input`."""

    accuracy: float
    macs: int
    params: int
    input_shape: tuple[int, ...] | list | dict
    latency_seconds: float | None = None
    memory_bytes: int | None = None


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
        train_loader: yields batches (``(inputs, targets)``, dicts of model inputs, lone inputs: see
            :mod:`ranksearch.adapters`); its first batches are used for BatchNorm recalibration and fine-tuning.
        val_loader: yields batches likewise; the first ``eval_batches`` are the evaluation set.
        settings: fine-tune and measurement settings.
        metric: ``metric(outputs, targets) -> float`` (higher is better) replacing top-1 accuracy;
            averaged over validation batches weighted by batch size (wins over ``settings.metric``).
        loss_fn: fine-tune loss ``loss_fn(outputs, targets)`` (default: cross-entropy; wins over ``settings.loss``).
        cache: a shared :class:`FactorCache` (a private one by default).
        latency: how latency is measured (None: not measured).
        latency_table: where layer latencies are kept.
        memory: where and at what batch the memory of each config is counted (None: not counted).
        adapter: how batches are split and outputs read (wins over ``settings.batch`` and ``settings.output``).
        objectives: the study's objectives, if known: ``fidelity`` among them makes every trial measure it
            (it is measured anyway when the validation batches carry no labels), and ``accuracy`` among
            them without labels is an error.
        calibration: input statistics of the model's layers for data-aware methods
            (:func:`ranksearch.calibrate`); by default gathered here from ``settings.calibration_batches``
            fixed batches (none when 0).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable,
        settings: EvaluatorSettings | None = None,
        *,
        metric: Metric | None = None,
        loss_fn: Loss | None = None,
        cache: FactorCache | None = None,
        latency: LatencySettings | None = None,
        latency_table: LatencyTable | None = None,
        adapter: BatchAdapter | None = None,
        objectives: Sequence[str] | None = None,
        calibration: Calibration | None = None,
        memory: MemorySettings | None = None,
    ) -> None:
        self.settings = s = settings or EvaluatorSettings()
        if s.threads is not None:
            torch.set_num_threads(s.threads)
        self.device = torch.device(s.device)
        self.model = unpack_attention(model).to(self.device).eval()  # a copy; attention projections as layers
        self.metric = metric or user_function(s, "metric") or _accuracy
        self.loss_fn = loss_fn or user_function(s, "loss") or F.cross_entropy
        self.adapter = adapter or BatchAdapter(user_function(s, "batch"), user_function(s, "output"))
        self.cache = cache or FactorCache()
        self.teacher = TeacherOutputs(self)
        self.distill = distill_weight(s, self.loss_fn is F.cross_entropy)  # the fine-tune's weight in use
        need = max(s.finetune_steps, s.bn_batches, 1)
        self.train_batches = take_batches(train_loader, need, self.device, "training", s.seed, self.adapter)
        self.val_batches = take_batches(val_loader, s.eval_batches, self.device, "validation", s.seed, self.adapter)
        if s.eval_batches is not None and len(self.val_batches) > s.eval_batches:
            self.val_batches = self.val_batches[: s.eval_batches]
        self.labels = self.val_batches[0][1] is not None
        """Whether the validation batches carry labels (else the metric is NaN and the quality is the fidelity)."""
        check_objectives_have_labels(objectives, self.labels)
        outputs = check_model_on_data(
            self.model,
            self.val_batches,
            self.train_batches,
            class_labels=self.metric is _accuracy,
            adapter=self.adapter,
        )
        self.fidelity_kind = resolve_kind(s.fidelity, outputs)
        self._references = self._dense_references() if not self.labels or "fidelity" in (objectives or ()) else None
        self._set_dense(latency, latency_table, memory)
        self.calibration = calibration if calibration is not None else self._calibrate(train_loader)
        """Input statistics for data-aware methods, or None."""

    def _set_dense(self, latency: LatencySettings | None, table: LatencyTable | None, memory: MemorySettings | None):
        """The example input the MACs are counted on, the latency estimator, memory meter and dense measurement."""
        inputs = self.val_batches[0][0]
        if isinstance(inputs, torch.Tensor):
            self.example_input: object = (1, *inputs.shape[1:])
            """What :func:`ranksearch.costs.count` counts this model's MACs on: the input shape with batch 1 for
            a model called with one tensor, else the first validation sample (tensors on the device)."""
            input_shape, sample = self.example_input, self.example_input[1:]
        else:
            self.example_input = first_samples(inputs, 1, batch_size(inputs))
            input_shape, sample = describe(self.example_input), self.example_input
        cost = count(self.model, self.example_input)
        self.latency = None if latency is None else LatencyEstimator(self.model, sample, latency, table)
        latency_seconds = None if self.latency is None else self.latency.dense_seconds
        self.memory = None if memory is None else MemoryMeter(self.model, sample, memory)
        memory_bytes = None if self.memory is None else self.memory.dense.total_bytes
        accuracy = self.measure(self.model)
        self.dense = DenseMeasurement(accuracy, cost.macs, cost.params, input_shape, latency_seconds, memory_bytes)

    def _calibrate(self, train_loader: Iterable) -> Calibration | None:
        """Statistics of ``calibration_batches`` batches of the ``calibration`` loader (default: the training
        loader, drawn with the seed as the fine-tune's batches are), or None when 0."""
        s = self.settings
        if not s.calibration_batches:
            return None
        factory = user_function(s, "calibration")
        loader = train_loader if factory is None else factory()
        batches = take_batches(loader, s.calibration_batches, self.device, "calibration", s.seed, self.adapter)
        return calibrate_batches(self.model, batches)

    def compress(self, resolved: Sequence[ResolvedLayer]) -> nn.Module:
        """The model with ``resolved`` applied, from this evaluator's factor cache and calibration."""
        return apply_resolved(self.model, resolved, cache=self.cache, calibration=self.calibration)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the ``amp`` dtype on CUDA, or nothing (float32)."""
        if self.settings.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.settings.amp])

    # --- measurements -------------------------------------------------------------------------
    def measure(self, model: nn.Module) -> float:
        """The metric of ``model`` on the validation subset (eval mode, no gradients); NaN without labels."""
        return self._measure(model)[0]

    def measure_fidelity(self, model: nn.Module) -> float:
        """The agreement of ``model``'s outputs with the dense model's on the validation subset (in [0, 1]).

        The dense outputs are computed on first use; from then on every evaluation also measures the fidelity.
        """
        if self._references is None:
            self._references = self._dense_references()
        return self._measure(model)[1]

    def _measure(self, model: nn.Module) -> tuple[float, float]:
        """``(metric, fidelity)`` of ``model`` in one pass over the validation subset; NaN where not measured."""
        model.eval()
        total = agree = 0.0
        weight = 0
        with torch.no_grad(), self.autocast():
            for index, (inputs, targets) in enumerate(self.val_batches):
                outputs = self.adapter.forward(model, inputs).float()
                size = batch_size(inputs)
                if targets is not None:
                    total += self.metric(outputs, targets) * size
                if self._references is not None:
                    agree += agreement(outputs, self._references[index], self.fidelity_kind) * size
                weight += size
        return (total / weight if self.labels else math.nan), (math.nan if self._references is None else agree / weight)

    def _dense_references(self) -> list[torch.Tensor]:
        """What the fidelity compares with, per validation batch: the dense model's outputs (computed once)."""
        self.model.eval()
        with torch.no_grad(), self.autocast():
            return [
                reference(self.adapter.forward(self.model, inputs).float(), self.fidelity_kind)
                for inputs, _ in self.val_batches
            ]

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
                call_model(model, inputs)
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
                loss = self._finetune_loss(self.adapter.forward(model, inputs).float(), targets, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tune loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            (loss if scaler is None else scaler.scale(loss)).backward()
            if s.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
        model.eval()

    def _finetune_loss(self, outputs: torch.Tensor, targets: object, step: int) -> torch.Tensor:
        """The fine-tune loss of one training batch: the loss on labels, blended with distillation (only
        distillation for a batch without labels)."""

        def distillation(weight: float) -> torch.Tensor:
            teacher, temperature = self.teacher[step], self.settings.distill_temperature
            return distillation_loss(outputs, teacher, self.fidelity_kind, temperature, weight)

        return blended_loss(outputs, targets, self.loss_fn, self.distill, distillation)

    def teacher_logits(self) -> list[torch.Tensor]:
        """The dense model's outputs (float32, eval mode) on the fine-tune batches (:class:`TeacherOutputs`)."""
        return self.teacher.all()

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
        watch = Stopwatch(result.seconds)
        torch.manual_seed(self.settings.seed)
        try:
            model = self.compress(resolved)
            watch.lap("decompose")
            self._measure_costs(result, resolved, model, watch, measure_latency=measure_latency)
            self._measure_metric(result, model, watch)
        except (RanksearchError, RuntimeError, FloatingPointError, ValueError) as error:
            result.failure = f"{type(error).__name__}: {error}"
        result.seconds["total"] = watch.total()
        if result.failure is None:
            result.failure = self._not_finite(result)
        if keep_model and result.failure is None:
            result.model = model
        return result

    def _not_finite(self, result: Evaluation) -> str | None:
        """Why the measured quality makes the trial a failure (the metric or the fidelity is not finite), or None."""
        if self.labels and not math.isfinite(result.accuracy):
            return f"the metric is not finite ({result.accuracy})"
        if self._references is not None and not math.isfinite(result.fidelity):
            return f"the fidelity is not finite ({result.fidelity})"
        return None

    def _measure_costs(
        self,
        result: Evaluation,
        resolved: Sequence[ResolvedLayer],
        model: nn.Module,
        watch: Stopwatch,
        *,
        measure_latency: bool,
    ) -> None:
        """Layer errors, MACs, params, and (with their settings) latency and memory of ``model`` into ``result``."""
        result.layer_errors = {
            layer.name: self.cache.relative_error(
                layer.module, layer.method, layer.rank, (self.calibration or {}).get(layer.name)
            )
            for layer in resolved
        }
        result.data_aware_layers = [layer.name for layer in resolved if layer.method.data_aware] or None
        cost = count(model, self.example_input)
        result.macs, result.params = cost.macs, cost.params
        result.macs_ratio, result.params_ratio = cost.macs / self.dense.macs, cost.params / self.dense.params
        watch.lap("cost")
        if self.latency is not None:
            result.latency_seconds = self.latency.predict(resolved, model)
            result.latency_ratio = result.latency_seconds / self.latency.dense_seconds
            if measure_latency:
                timed = self.latency.measure_against_dense(model)
                result.latency_measured_seconds, result.latency_reference_seconds = timed
            watch.lap("latency")
        if self.memory is not None:
            use = self.memory.measure(model)
            result.memory_bytes, result.memory_activations_bytes = use.total_bytes, use.activations_bytes
            result.memory_ratio = use.total_bytes / self.memory.dense.total_bytes
            watch.lap("memory")

    def _measure_metric(self, result: Evaluation, model: nn.Module, watch: Stopwatch) -> None:
        """The metric (and fidelity) zero-shot, after recalibration and after the fine-tune (unless skipped)."""
        self._record(result, model, "accuracy_zero_shot")
        if self.recalibrate(model):
            self._record(result, model, "accuracy_recalibrated")
        watch.lap("recalibrate")
        name, quality = ("accuracy", result.accuracy) if self.labels else ("fidelity", result.fidelity)
        if self.settings.finetune_steps == 0:
            result.finetune_skipped = "finetune_steps is 0"
        elif quality < self.settings.accuracy_floor:
            floor = self.settings.accuracy_floor
            result.finetune_skipped = f"{name} {quality:.4f} before fine-tuning is below the floor {floor}"
        else:
            self.finetune(model)
            watch.lap("finetune")
            self._record(result, model, "accuracy_finetuned")
        watch.lap("evaluate")

    def _record(self, result: Evaluation, model: nn.Module, stage: str) -> None:
        """Measure ``model``: the metric into ``result.accuracy`` and the field ``stage`` (with labels), the
        fidelity into ``result.fidelity`` (None when not measured)."""
        accuracy, fidelity = self._measure(model)
        result.fidelity = None if self._references is None else fidelity
        if self.labels:
            result.accuracy = accuracy
            setattr(result, stage, accuracy)
