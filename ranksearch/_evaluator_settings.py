"""The evaluator's settings: how each trial is fine-tuned and measured (a frozen dataclass, as TOML reads it).

Re-exported by :mod:`ranksearch.evaluator`, where users import it from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import RanksearchError
from .fidelity import FIDELITY_KINDS
from .usercode import check_spec, load_callable

__all__ = [
    "ADDED_SETTINGS",
    "AMP_DTYPES",
    "USER_FUNCTIONS",
    "EvaluatorSettings",
    "check_grad_clip",
    "check_objectives_have_labels",
    "check_weight",
    "user_function",
]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
USER_FUNCTIONS = ("metric", "loss", "batch", "output", "calibration")
"""The settings that name the user's functions (``"package.module:function"``)."""
ADDED_SETTINGS = {"calibration_batches": 0, "calibration": None, "grad_clip": None}
"""Settings added after studies were stored, with the defaults that mean "as before": a study's identity
leaves them out at these values, so studies stored earlier resume."""


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
        accuracy_floor: skip the fine-tune when the recalibrated accuracy (without labels: the fidelity)
            is below this (0 = never).
        device: torch device for fine-tune and evaluation, e.g. "cpu" or "cuda".
        threads: CPU threads for torch (``torch.set_num_threads``, process-wide); None keeps torch's
            default. On a busy machine fewer threads than cores avoids oversubscription.
        seed: seeds the fine-tune (the same seed gives the same metrics on CPU).
        amp: mixed precision for fine-tune and evaluation on CUDA: ``"bfloat16"`` or ``"float16"``
            (autocast; float16 with loss scaling); None runs in float32.
        distill: weight in [0, 1] of distillation from the dense model in the fine-tune loss:
            ``(1 - distill) * loss(logits, targets) + distill * T^2 * KL(dense || compressed)`` at
            temperature ``distill_temperature`` (Hinton et al. 2015); 0 = labels only, 1 = distillation
            only. None (the default): 0.5 (``ranksearch._distill.DEFAULT_DISTILL``) with the default
            cross-entropy loss (class scores), 0 with a user's loss (whose outputs a KL term may not fit);
            ``Evaluator.distill`` is the weight in use. Measured in ``benchmarks/RESULTS*.md``: at the same
            brief fine-tune, 0.5 helped or tied in 17 of 18 checks (up to +2.0 points; one image of 360 lost
            in the other). Batches without labels are always distilled only; the distillation term follows
            ``fidelity`` (``1 - cosine`` for the ``cosine`` kind, see :mod:`ranksearch.fidelity`).
        distill_temperature: softmax temperature of the distillation term (> 0).
        fidelity: how the compressed model's outputs are compared with the dense model's for the
            ``fidelity`` objective (measured when the study asks for it, or the batches carry no labels):
            ``"auto"``, ``"top1"``, ``"cosine"`` or ``"kl"`` (:mod:`ranksearch.fidelity`). ``auto`` takes
            ``(batch, n)`` outputs for class scores (``top1``): a model of ``(batch, dim)`` embeddings
            wants ``"cosine"``.
        metric: ``"package.module:function"`` of ``metric(outputs, targets) -> float`` per batch (higher is
            better; averaged over the validation batches weighted by batch size); None: top-1 accuracy.
        loss: ``"package.module:function"`` of the fine-tune loss ``loss(outputs, targets) -> Tensor``
            (a scalar); None: cross-entropy.
        batch: ``"package.module:function"`` of ``batch(batch) -> (inputs, targets)`` (targets None: no
            labels); None: the default split (:mod:`ranksearch.adapters`).
        output: ``"package.module:function"`` of ``output(model_outputs) -> Tensor``, the tensor the metric
            and the loss see; None: the default (a tensor; a tuple's first item; a dict's ``logits``).
        grad_clip: clip the fine-tune's gradient norm (over all parameters) to this before each step; None:
            no clipping. CP chains need it: on ResNet-20 / Fashion-MNIST, uniform CP at 25% of the MACs went
            from 0.926 (recalibrated) down to 0.880 after the 100-step fine-tune without clipping, and up to
            0.938 with ``grad_clip = 1.0``.
        calibration_batches: batches whose inputs' second moments the data-aware methods (``svd_whiten``,
            ``tucker2_whiten``, ``cp_refit``, ``tt_refit``) fit to (:mod:`ranksearch.calibration`); 0 = no
            calibration (those methods cannot be used). Drawn from the training loader like the fine-tune's
            batches, or from ``calibration``'s loader.
        calibration: ``"package.module:function"`` of ``calibration() -> loader`` (an iterable of batches the
            batch adapter understands; labels not needed); None: the training loader.

    The four functions are named by strings so that study files and worker processes carry them; they
    are imported when the :class:`Evaluator` is made. Callables given to the Evaluator win over them.
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
    distill: float | None = None
    distill_temperature: float = 4.0
    fidelity: str = "auto"
    metric: str | None = None
    loss: str | None = None
    batch: str | None = None
    output: str | None = None
    calibration_batches: int = 0
    calibration: str | None = None
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        for name in ("finetune_steps", "bn_batches", "seed", "calibration_batches"):
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
        check_weight(self.accuracy_floor, "evaluator setting accuracy_floor")
        if self.distill is not None:
            check_weight(self.distill, "evaluator setting distill")
        check_grad_clip(self.grad_clip, "evaluator setting grad_clip")
        t = self.distill_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
            raise RanksearchError(f"evaluator setting distill_temperature must be a finite number > 0, got {t!r}")
        if self.fidelity not in FIDELITY_KINDS:
            raise RanksearchError(
                f"evaluator setting fidelity must be one of {', '.join(FIDELITY_KINDS)}, got {self.fidelity!r}"
            )
        for name in USER_FUNCTIONS:
            _check_function_name(name, getattr(self, name))
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


def check_weight(value: object, label: str) -> None:
    """A number in [0, 1] (a weight or a floor), or a clear error naming ``label``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RanksearchError(f"{label} must be a number in [0, 1], got {value!r}")


def check_grad_clip(value: object, label: str) -> None:
    """A gradient-norm clip: a finite number > 0, or None (no clipping); else a clear error naming ``label``."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
    ):
        raise RanksearchError(f"{label} must be a finite number > 0 or None, got {value!r}")


def _check_function_name(name: str, value: object) -> None:
    if value is None:
        return
    if callable(value):
        argument = "loss_fn" if name == "loss" else name
        raise RanksearchError(
            f"evaluator setting {name} names a function as a 'package.module:function' string; pass the "
            f"callable itself to Evaluator({argument}=...)"
        )
    check_spec(value, f"evaluator setting {name}")


def user_function(settings: EvaluatorSettings, name: str) -> Callable | None:
    """The function the setting ``name`` names (imported now), or None."""
    spec = getattr(settings, name)
    return None if spec is None else load_callable(spec, where=f"evaluator setting {name}")


def check_objectives_have_labels(objectives: Sequence[str] | None, labels: bool) -> None:
    """``accuracy`` as an objective needs labelled validation batches: say what to do instead."""
    if objectives is not None and "accuracy" in objectives and not labels:
        raise RanksearchError(
            "the objective 'accuracy' needs labels, but the validation batches carry none: use the objective "
            "'fidelity' (agreement with the dense model's outputs), or give the batches targets"
        )
