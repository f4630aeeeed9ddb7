"""The longer fine-tune of the one config a user ships (``ranksearch export --epochs``).

The search fine-tunes each trial for a few steps on fixed batches so trials are comparable; the
chosen config deserves full epochs over the training set, with cosine learning-rate decay. Batches are
read by a :class:`~ranksearch.adapters.BatchAdapter`; batches without labels are distilled from the dense
model (``teacher``). Given a ``checkpoint`` file, the state after each epoch is kept there, so a long fine-tune
that is interrupted resumes after its last finished epoch and ends with the weights an uninterrupted run gives
(on a CPU: CUDA's generator is not kept); a finished one is only loaded.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._evaluator_settings import check_grad_clip, check_weight
from .adapters import BatchAdapter, batch_size, to_device
from .errors import RanksearchError
from .fidelity import blended_loss, distillation_loss, resolve_kind

__all__ = ["finetune_epochs"]


def finetune_epochs(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: str | torch.device = "cpu",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    log: Callable[[str], None] = print,
    adapter: BatchAdapter | None = None,
    teacher: nn.Module | None = None,
    fidelity: str = "auto",
    temperature: float = 4.0,
    grad_clip: float | None = None,
    distill: float = 0.0,
    checkpoint: str | os.PathLike | None = None,
) -> list[float]:
    """Train ``model`` in place for ``epochs`` passes over ``train_loader`` (SGD, cosine decay to 0).

    Batches are split and outputs read by ``adapter`` (the default :class:`~ranksearch.adapters.BatchAdapter`:
    ``(inputs, targets)`` pairs, Hugging Face dicts...). A batch without labels is distilled from
    ``teacher`` (the dense model, on ``device``; run in eval mode): its loss is
    :func:`~ranksearch.fidelity.distillation_loss` of the ``fidelity`` kind at ``temperature``; a labelled
    batch's is ``(1 - distill) * loss_fn + distill * distillation`` (``distill`` > 0 needs the ``teacher``).
    ``grad_clip`` clips the gradient norm before each step (CP chains blow up at their dense layer's lr), both
    as in the brief fine-tune.

    ``checkpoint``: a file written after every epoch (model, optimizer, torch's CPU and the loader's generators,
    losses). If it exists, training resumes after its epochs to the weights of one uninterrupted run (on a CPU).

    Returns the mean training loss of each epoch; logs one line per epoch. Raises on a non-finite loss.
    """
    steps_per_epoch = _steps_per_epoch(train_loader, epochs, lr)
    total = epochs * steps_per_epoch
    _check_clip_and_distill(grad_clip, distill, teacher)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.to(device).train()
    adapter = adapter or BatchAdapter()
    batch_loss = partial(_batch_loss, model, adapter, device, loss_fn, distill,
                         _Distill(adapter, teacher, fidelity, temperature))  # fmt: skip
    settings = {"epochs": epochs, "lr": lr, "steps_per_epoch": steps_per_epoch}
    saved = _Checkpoint(checkpoint, settings, getattr(train_loader, "generator", None))
    losses = saved.restore(model, optimizer)
    try:
        for epoch in range(len(losses), epochs):
            clock, running, seen = time.perf_counter(), 0.0, 0
            for index, batch in enumerate(train_loader):
                step = epoch * steps_per_epoch + index
                loss, size = batch_loss(batch)
                _check_finite(loss, epoch, step)
                _step(optimizer, loss, lr * 0.5 * (1 + math.cos(math.pi * step / total)), grad_clip)
                running, seen = running + loss.item() * size, seen + size
            losses.append(running / seen)
            saved.save(model, optimizer, losses)
            log(f"fine-tune epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - clock:.1f} s)")
    finally:
        model.eval()
    return losses


class _Checkpoint:
    """The fine-tune's state after its last finished epoch, in one file (or nowhere, without a path)."""

    def __init__(self, path: str | os.PathLike | None, settings: dict[str, float], loader_rng: object) -> None:
        self.path = None if path is None else Path(path)
        self.settings = settings
        self.loader_rng = loader_rng if isinstance(loader_rng, torch.Generator) else None
        """The loader's own shuffling generator (a DataLoader's ``generator``), kept with torch's global one."""

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[float]:
        """Load the stored state into ``model`` and ``optimizer``; the losses of the epochs it holds ([] if none)."""
        if self.path is None or not self.path.exists():
            return []
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            stored = state["settings"]
        except Exception as error:
            raise RanksearchError(f"cannot read the fine-tune checkpoint {self.path}: {error}") from None
        if stored != self.settings:
            raise RanksearchError(
                f"the fine-tune checkpoint {self.path} was written with {stored}, this fine-tune has "
                f"{self.settings}: pass the same settings, or delete the file to start again"
            )
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise RanksearchError(f"the fine-tune checkpoint {self.path} holds another model: {error}") from None
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if self.loader_rng is not None and state.get("loader_rng") is not None:
            self.loader_rng.set_state(state["loader_rng"])
        return list(state["losses"])

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, losses: list[float]) -> None:
        """Write the state atomically (a file half written by a kill is never read back)."""
        if self.path is None:
            return
        state = {"settings": self.settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "rng": torch.get_rng_state(), "losses": losses,
                 "loader_rng": None if self.loader_rng is None else self.loader_rng.get_state()}  # fmt: skip
        partial_file = self.path.with_name(self.path.name + ".partial")
        torch.save(state, partial_file)
        os.replace(partial_file, self.path)


def _batch_loss(model: nn.Module, adapter: BatchAdapter, device: str | torch.device, loss_fn: Callable, distill: float,
                distiller: _Distill, batch: object) -> tuple[torch.Tensor, int]:  # fmt: skip
    """One batch's training loss and its number of examples."""
    inputs, targets = (to_device(part, device) for part in adapter.split(batch))
    outputs = adapter.forward(model, inputs)
    return blended_loss(outputs, targets, loss_fn, distill, partial(distiller, outputs, inputs)), batch_size(inputs)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float | None) -> None:
    """One SGD step at ``lr`` on ``loss``, its gradient norm clipped to ``grad_clip``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()


def _check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise RanksearchError(f"fine-tune loss became {loss.item()} at epoch {epoch + 1}, step {step}: try a lower lr")


def _steps_per_epoch(train_loader: Iterable, epochs: object, lr: object) -> int:
    """The loader's length, once the arguments are checked."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise RanksearchError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise RanksearchError(f"lr must be a finite number > 0, got {lr!r}")
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise RanksearchError("train_loader must have a length (a DataLoader or a list of batches)") from None
    if steps_per_epoch == 0:
        raise RanksearchError("train_loader is empty")
    return steps_per_epoch


def _check_clip_and_distill(grad_clip: object, distill: object, teacher: nn.Module | None) -> None:
    check_grad_clip(grad_clip, "grad_clip")
    check_weight(distill, "distill")
    if distill > 0 and teacher is None:
        raise RanksearchError(f"distill={distill} blends in distillation from the dense model: pass it as teacher=...")


class _Distill:
    """Distillation towards the teacher's outputs on the same inputs (a batch's whole loss without labels, a
    weighted term with them)."""

    def __init__(self, adapter: BatchAdapter, teacher: nn.Module | None, fidelity: str, temperature: float) -> None:
        self.adapter, self.teacher, self.fidelity, self.temperature = adapter, teacher, fidelity, temperature

    def __call__(self, outputs: torch.Tensor, inputs: object, weight: float = 1.0) -> torch.Tensor:
        if self.teacher is None:
            raise RanksearchError(
                "the training batches carry no labels: a fine-tune without labels distills the dense model, "
                "pass it as teacher=..."
            )
        self.teacher.eval()
        with torch.no_grad():
            target = self.adapter.forward(self.teacher, inputs).float()
        kind = resolve_kind(self.fidelity, target)
        return distillation_loss(outputs.float(), target, kind, self.temperature, weight)
