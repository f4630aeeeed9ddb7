"""The brief fine-tune's distillation term: its weight, and its targets (the dense model's outputs on the
fine-tune batches)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ._evaluator_settings import EvaluatorSettings
    from .evaluator import Evaluator

__all__ = ["DEFAULT_DISTILL", "TEACHER_CACHE_BYTES", "TeacherOutputs", "distill_weight"]

DEFAULT_DISTILL = 0.5
"""The distillation weight when ``EvaluatorSettings.distill`` is None and the loss is the default cross-entropy:
at the same brief fine-tune it helped or tied in 17 of the 18 checks of ``benchmarks/RESULTS*.md`` (up to +2.0
points) and lost one validation image of 360 in the other."""

TEACHER_CACHE_BYTES = 512 * 2**20
"""The most bytes of teacher outputs kept between trials (all fine-tune steps together)."""


def distill_weight(settings: EvaluatorSettings, default_loss: bool) -> float:
    """The fine-tune's distillation weight: ``settings.distill``, or when None :data:`DEFAULT_DISTILL` with the
    default cross-entropy loss (``default_loss``: class scores) and 0 with a user's loss, whose outputs a KL
    term may not fit."""
    if settings.distill is not None:
        return float(settings.distill)
    return DEFAULT_DISTILL if default_loss else 0.0


class TeacherOutputs:
    """The dense model's outputs (float32, eval mode) per fine-tune step.

    Every trial fine-tunes on the same batches, so the outputs are computed once and kept when all steps'
    outputs fit in :data:`TEACHER_CACHE_BYTES` (a classifier's logits: kilobytes per step). Otherwise each
    step's are computed when needed, one dense forward per step: a language model's vocabulary-sized logits
    (100 steps x 8 sequences x 128 tokens x 50k x 4 B = 20 GB) would not fit.
    """

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self._kept: dict[int, torch.Tensor] = {}
        self.keep: bool | None = None
        """Whether outputs are kept (decided on the first one: its size times the steps)."""

    def __getitem__(self, step: int) -> torch.Tensor:
        if step in self._kept:
            return self._kept[step]
        output = self._compute(step)
        if self.keep is None:
            steps = max(1, self.evaluator.settings.finetune_steps)
            self.keep = output.numel() * output.element_size() * steps <= TEACHER_CACHE_BYTES
        if self.keep:
            self._kept[step] = output
        return output

    def all(self) -> list[torch.Tensor]:
        """Every fine-tune step's outputs, in order."""
        steps = min(self.evaluator.settings.finetune_steps, len(self.evaluator.train_batches))
        return [self[step] for step in range(steps)]

    def _compute(self, step: int) -> torch.Tensor:
        evaluator = self.evaluator
        model = evaluator.model
        training = model.training
        model.eval()
        try:
            with torch.no_grad(), evaluator.autocast():
                return evaluator.adapter.forward(model, evaluator.train_batches[step][0]).float()
        finally:
            model.train(training)
