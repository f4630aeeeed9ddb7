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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .apply import apply_resolved
from .cache import FactorCache
from .config import CompressionConfig
from .costs import count
from .errors import RanksearchError
from .latency import LatencyEstimator, LatencySettings, LatencyTable

__all__ = ["DenseMeasurement", "Evaluation", "Evaluator", "EvaluatorSettings"]

Batch = tuple[torch.Tensor, torch.Tensor]
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
            default. On a busy machine fewer threads than cores avoids oversubscription, which slowed a
            training step 5x here when another process held one of the two cores.
        seed: seeds the fine-tune (the same seed gives the same metrics on CPU).
        amp: mixed precision for fine-tune and evaluation on CUDA: ``"bfloat16"`` or ``"float16"``
            (autocast; float16 with loss scaling); None runs in float32.
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
        if not 0 <= self.accuracy_floor <= 1:
            raise RanksearchError(f"evaluator setting accuracy_floor must be in [0, 1], got {self.accuracy_floor!r}")
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


@dataclass
class Evaluation:
    """Everything measured for one config (what the study stores as trial user attributes).

    Accuracies are on the fixed validation subset: ``accuracy_zero_shot`` right after decomposition,
    ``accuracy_recalibrated`` after BatchNorm recalibration (None without BatchNorm), ``accuracy_finetuned``
    after the fine-tune (None when skipped, with ``finetune_skipped`` saying why); ``accuracy`` is the last
    of these. ``seconds`` holds wall times: ``decompose`` (apply from the factor cache), ``cost`` (MAC
    count and weight errors), ``recalibrate`` (both measurements before the fine-tune, recalibration
    included), ``finetune``, ``evaluate`` (the final measurement) and ``total``.
    """

    config: CompressionConfig
    macs: int = 0
    params: int = 0
    macs_ratio: float = 1.0
    params_ratio: float = 1.0
    accuracy: float = float("nan")
    accuracy_zero_shot: float = float("nan")
    accuracy_recalibrated: float | None = None
    accuracy_finetuned: float | None = None
    latency_seconds: float | None = None
    latency_ratio: float | None = None
    latency_measured_seconds: float | None = None
    finetune_skipped: str | None = None
    failure: str | None = None
    layer_errors: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    """The compressed, fine-tuned model, kept only when asked (``evaluate(..., keep_model=True)``)."""

    def attributes(self) -> dict[str, object]:
        """JSON-ready attributes: the config as its JSON dict, everything else but the model as is."""
        attrs = {
            f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in ("config", "model")
        }
        return {"config": self.config.to_dict(), **attrs}


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == targets).float().mean().item()


def _take(loader: Iterable, count_: int | None, device: torch.device, what: str, seed: int) -> list[Batch]:
    """The first ``count_`` batches of ``loader`` (cycling if it is shorter), on ``device``.

    The shuffle order is drawn from ``seed`` (through the loader's own generator, if it has one, whose
    state is restored afterwards, and the global RNG, forked), so the batches depend on the seed only.
    """
    generator = getattr(loader, "generator", None)
    saved = generator.get_state() if isinstance(generator, torch.Generator) else None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if saved is not None:
                generator.manual_seed(seed)
            return _collect(loader, count_, device, what)
    finally:
        if saved is not None:
            generator.set_state(saved)


def _collect(loader: Iterable, count_: int | None, device: torch.device, what: str) -> list[Batch]:
    batches: list[Batch] = []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not all(torch.is_tensor(t) for t in batch[:2]):
            raise RanksearchError(
                f"the {what} loader must yield (inputs, targets) tensor pairs, got {type(batch).__name__}"
            )
        inputs, targets = batch[0], batch[1]
        if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
            raise RanksearchError(
                f"the {what} loader yielded inputs of shape {tuple(inputs.shape)} with targets of shape "
                f"{tuple(targets.shape)}: they must have the same non-zero batch size"
            )
        batches.append((inputs.to(device), targets.to(device)))
        if count_ is not None and len(batches) >= count_:
            break
    if not batches:
        raise RanksearchError(f"the {what} loader is empty")
    if count_ is not None:
        batches = [batches[i % len(batches)] for i in range(count_)]
    return batches


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
        need = max(self.settings.finetune_steps, self.settings.bn_batches, 1)
        seed = self.settings.seed
        self.train_batches = _take(train_loader, need, self.device, "training", seed)
        self.val_batches = _take(val_loader, self.settings.eval_batches, self.device, "validation", seed)
        if self.settings.eval_batches is not None and len(self.val_batches) > self.settings.eval_batches:
            self.val_batches = self.val_batches[: self.settings.eval_batches]
        self._check_model_on_data()
        input_shape = (1, *self.val_batches[0][0].shape[1:])
        cost = count(self.model, input_shape)
        self.latency = (
            None if latency is None else LatencyEstimator(self.model, input_shape[1:], latency, latency_table)
        )
        latency_seconds = None if self.latency is None else self.latency.dense_seconds
        self.dense = DenseMeasurement(self.measure(self.model), cost.macs, cost.params, input_shape, latency_seconds)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.settings.amp])

    def _check_model_on_data(self) -> None:
        for name, parameter in self.model.named_parameters():  # NaN/inf weights: every trial would fail
            if parameter.is_floating_point() and not torch.isfinite(parameter).all():
                raise RanksearchError(f"the model's parameter {name!r} has non-finite values (NaN or inf)")
        for what, batches in (("validation", self.val_batches), ("training", self.train_batches)):
            if any(not torch.isfinite(x).all() for x, _ in batches if x.is_floating_point()):
                raise RanksearchError(f"the {what} data contains NaN or infinite values")
        inputs = self.val_batches[0][0]
        try:
            with torch.no_grad():
                logits = self.model(inputs)
        except Exception as error:
            raise RanksearchError(
                f"the model's forward pass fails on a validation batch of shape {tuple(inputs.shape)}: {error}"
            ) from error
        if torch.is_tensor(logits) and logits.is_floating_point() and logits.isnan().any():
            raise RanksearchError(
                f"the model's output on a validation batch of shape {tuple(inputs.shape)} contains NaN values "
                "(its weights and the data are finite: check its buffers, e.g. BatchNorm statistics, and its forward)"
            )
        if self.metric is _accuracy:
            if logits.ndim != 2:
                raise RanksearchError(f"the model must output (batch, classes) logits, got shape {tuple(logits.shape)}")
            for what, batches in (("validation", self.val_batches), ("training", self.train_batches)):
                labels = torch.cat([t for _, t in batches])
                if labels.is_floating_point() or labels.min() < 0 or labels.max() >= logits.shape[1]:
                    raise RanksearchError(
                        f"{what} labels must be integer class indices in [0, {logits.shape[1]}) for a model with "
                        f"{logits.shape[1]} outputs, got values in [{labels.min().item()}, {labels.max().item()}]"
                    )

    # --- measurements -------------------------------------------------------------------------
    def measure(self, model: nn.Module) -> float:
        """The metric of ``model`` on the validation subset (eval mode, no gradients)."""
        model.eval()
        total, weight = 0.0, 0
        with torch.no_grad(), self._autocast():
            for inputs, targets in self.val_batches:
                total += self.metric(model(inputs).float(), targets) * len(targets)
                weight += len(targets)
        return total / weight

    def recalibrate(self, model: nn.Module) -> bool:
        """Re-estimate BatchNorm running statistics on training batches; False if there is no BatchNorm."""
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or self.settings.bn_batches == 0:
            return False
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        model.train()
        with torch.no_grad():
            for inputs, _ in self.train_batches[: self.settings.bn_batches]:
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
            with self._autocast():
                loss = self.loss_fn(model(inputs).float(), targets)
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
        clock = time.perf_counter()
        start = clock
        torch.manual_seed(self.settings.seed)

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            result.seconds[name] = now - clock
            clock = now

        try:
            model = apply_resolved(self.model, resolved, cache=self.cache)
            lap("decompose")
            result.layer_errors = {
                layer.name: self.cache.relative_error(layer.module, layer.method, layer.rank) for layer in resolved
            }
            cost = count(model, self.dense.input_shape)
            result.macs, result.params = cost.macs, cost.params
            result.macs_ratio, result.params_ratio = cost.macs / self.dense.macs, cost.params / self.dense.params
            lap("cost")
            if self.latency is not None:
                result.latency_seconds = self.latency.predict(resolved, model)
                result.latency_ratio = result.latency_seconds / self.latency.dense_seconds
                if measure_latency:
                    result.latency_measured_seconds = self.latency.measure_model(model)
                lap("latency")
            result.accuracy = result.accuracy_zero_shot = self.measure(model)
            if self.recalibrate(model):
                result.accuracy = result.accuracy_recalibrated = self.measure(model)
            lap("recalibrate")
            if self.settings.finetune_steps == 0:
                result.finetune_skipped = "finetune_steps is 0"
            elif result.accuracy < self.settings.accuracy_floor:
                floor = self.settings.accuracy_floor
                result.finetune_skipped = (
                    f"accuracy {result.accuracy:.4f} before fine-tuning is below the floor {floor}"
                )
            else:
                self.finetune(model)
                lap("finetune")
                result.accuracy = result.accuracy_finetuned = self.measure(model)
            lap("evaluate")
        except (RanksearchError, RuntimeError, FloatingPointError, ValueError) as error:
            result.failure = f"{type(error).__name__}: {error}"
        result.seconds["total"] = time.perf_counter() - start
        if result.failure is None and not math.isfinite(result.accuracy):
            result.failure = f"the metric is not finite ({result.accuracy})"
        if keep_model and result.failure is None:
            result.model = model
        return result
