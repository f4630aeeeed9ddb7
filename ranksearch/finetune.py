"""The longer fine-tune of the one config a user ships (``ranksearch export --epochs``).

The search fine-tunes each trial for a few steps on fixed batches so trials are comparable; the
chosen config deserves full epochs over the training set, with cosine learning-rate decay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RanksearchError

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
) -> list[float]:
    """Train ``model`` in place for ``epochs`` passes over ``train_loader`` (SGD, cosine decay to 0).

    Returns the mean training loss of each epoch; logs one line per epoch. Raises on a non-finite loss.
    """
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
    total = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.to(device).train()
    losses, step = [], 0
    try:
        for epoch in range(epochs):
            clock, running, seen = time.perf_counter(), 0.0, 0
            for inputs, targets, *_ in train_loader:
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                inputs, targets = inputs.to(device), targets.to(device)
                loss = loss_fn(model(inputs), targets)
                if not torch.isfinite(loss):
                    where = f"epoch {epoch + 1}, step {step}"
                    raise RanksearchError(f"fine-tune loss became {loss.item()} at {where}: try a lower lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running += loss.item() * len(targets)
                seen += len(targets)
                step += 1
            losses.append(running / seen)
            log(f"fine-tune epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - clock:.1f} s)")
    finally:
        model.eval()
    return losses
