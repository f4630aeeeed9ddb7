"""Agreement of a compressed model's outputs with the dense model's: the label-free quality and loss.

Without labels (an embedding model, a language model's hidden states) or next to them, a compressed
model is as good as its outputs agree with the dense model's on the same inputs. Kinds of agreement:

- ``top1``: the fraction of rows whose argmax over the last dimension is the dense model's (classifier
  logits; per token for ``(batch, tokens, classes)``);
- ``cosine``: the mean cosine similarity of output vectors along the last dimension (embeddings, hidden
  states), each clipped at 0 (a vector pointing away from the dense one scores 0, not below);
- ``kl``: ``exp(-KL(dense || compressed))`` of the softmax over the last dimension, averaged per row;
- ``auto``: ``top1`` for ``(batch, classes)`` outputs with more than one class, ``cosine`` otherwise.

All are in [0, 1], higher is better, and exactly 1 for outputs equal to the dense model's. The matching
distillation loss (the label-free fine-tune): ``T^2 * KL`` at temperature ``T`` for ``top1`` and ``kl``
(Hinton et al. 2015), ``1 - cosine`` for ``cosine`` (scale-free, so one learning rate serves any output
scale, and it optimizes what the fidelity measures).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import RanksearchError

__all__ = ["FIDELITY_KINDS", "agreement", "blended_loss", "distillation_loss", "reference", "resolve_kind"]

FIDELITY_KINDS = ("auto", "top1", "cosine", "kl")


def resolve_kind(kind: str, outputs: torch.Tensor) -> str:
    """The kind of agreement for the dense model's ``outputs`` (``auto`` resolved); a clear error if it does
    not fit them."""
    if kind not in FIDELITY_KINDS:
        raise RanksearchError(f"unknown fidelity {kind!r}; available: {', '.join(FIDELITY_KINDS)}")
    if kind == "auto":
        return "top1" if outputs.ndim == 2 and outputs.shape[1] > 1 else "cosine"
    if kind in ("top1", "kl") and (outputs.ndim < 2 or outputs.shape[-1] < 2):
        raise RanksearchError(
            f"fidelity {kind!r} compares class scores along the last dimension, but the model's outputs have "
            f"shape {tuple(outputs.shape)}; use fidelity 'cosine' for these outputs"
        )
    return kind


def _rows(outputs: torch.Tensor) -> torch.Tensor:
    """``outputs`` as ``(rows, last dimension)`` (a 1-D output is one value per sample)."""
    if outputs.ndim == 2:
        return outputs
    return outputs.reshape(-1, 1) if outputs.ndim < 2 else outputs.reshape(-1, outputs.shape[-1])


def reference(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    """What :func:`agreement` needs of the dense model's outputs (float32): the argmax per row for ``top1``,
    the log-softmax rows for ``kl``, the rows for ``cosine``; kept for the whole validation subset."""
    rows = _rows(outputs.float())
    if kind == "top1":
        return rows.argmax(dim=-1)
    return F.log_softmax(rows, dim=-1) if kind == "kl" else rows


def agreement(outputs: torch.Tensor, dense: torch.Tensor, kind: str) -> float:
    """The mean agreement (in [0, 1]) of ``outputs`` with the dense model's, given as ``reference(...)``."""
    rows = _rows(outputs.float())
    if rows.shape[0] != dense.shape[0]:
        raise RanksearchError(
            f"the outputs have {rows.shape[0]} rows where the dense model's have {dense.shape[0]}: "
            f"shape {tuple(outputs.shape)}"
        )
    if kind == "top1":
        return (rows.argmax(dim=-1) == dense).float().mean().item()
    if kind == "kl":
        kl = F.kl_div(F.log_softmax(rows, dim=-1), dense, log_target=True, reduction="batchmean")
        return math.exp(-max(kl.item(), 0.0))
    return F.cosine_similarity(rows, dense, dim=-1).clamp(min=0).mean().item()


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float, weight: float = 1.0
) -> torch.Tensor:
    """``weight`` times the distillation loss of ``student``'s outputs towards ``teacher``'s (the dense
    model's, no gradient): ``T^2 * KL(teacher || student)`` at temperature ``T`` for ``top1`` and ``kl``,
    averaged per row; ``1 - cosine`` per row, averaged, for ``cosine``."""
    student, teacher = _rows(student), _rows(teacher)
    if kind == "cosine":
        return weight * (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    t = temperature
    target = F.log_softmax(teacher / t, dim=-1)
    kl = F.kl_div(F.log_softmax(student / t, dim=-1), target, log_target=True, reduction="batchmean")
    return weight * t * t * kl


def blended_loss(
    outputs: torch.Tensor,
    targets: object,
    loss_fn: Callable[[torch.Tensor, object], torch.Tensor],
    weight: float,
    distillation: Callable[[float], torch.Tensor],
) -> torch.Tensor:
    """A fine-tune batch's loss: ``(1 - weight) * loss_fn(outputs, targets) + distillation(weight)``, where
    ``distillation(w)`` is the distillation term at weight ``w`` (:func:`distillation_loss`); the labels' loss
    alone at weight 0, and the distillation alone (weight 1) for a batch without labels (``targets`` None)."""
    if targets is None:
        return distillation(1.0)
    if weight == 0:
        return loss_fn(outputs, targets)
    return (1 - weight) * loss_fn(outputs, targets) + distillation(weight)
