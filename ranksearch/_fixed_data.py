"""The evaluator's fixed data: batches drawn once from a loader for a seed, and checked against the model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .errors import RanksearchError

__all__ = ["Batch", "check_model_on_data", "take_batches"]

Batch = tuple[torch.Tensor, torch.Tensor]


def take_batches(loader: Iterable, count_: int | None, device: torch.device, what: str, seed: int) -> list[Batch]:
    """The first ``count_`` batches of ``loader`` (cycling if it is shorter; None: all), on ``device``.

    The shuffle order is drawn from ``seed`` (through the loader's own generator, if it has one, whose
    state is restored afterwards, and the global RNG, forked), so the batches depend on the seed only.
    ``what`` names the loader in errors (``"training"``, ``"validation"``).
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


def check_model_on_data(
    model: nn.Module, val_batches: Sequence[Batch], train_batches: Sequence[Batch], *, class_labels: bool
) -> None:
    """A RanksearchError saying why every trial would fail on this model and data, if one would.

    Checks finite weights and inputs, and a forward pass on the first validation batch without NaN; with
    ``class_labels`` (top-1 accuracy), ``(batch, classes)`` logits and integer targets in ``[0, classes)``.
    """
    for name, parameter in model.named_parameters():  # NaN/inf weights: every trial would fail
        if parameter.is_floating_point() and not torch.isfinite(parameter).all():
            raise RanksearchError(f"the model's parameter {name!r} has non-finite values (NaN or inf)")
    for what, batches in (("validation", val_batches), ("training", train_batches)):
        if any(not torch.isfinite(x).all() for x, _ in batches if x.is_floating_point()):
            raise RanksearchError(f"the {what} data contains NaN or infinite values")
    inputs = val_batches[0][0]
    try:
        with torch.no_grad():
            logits = model(inputs)
    except Exception as error:
        raise RanksearchError(
            f"the model's forward pass fails on a validation batch of shape {tuple(inputs.shape)}: {error}"
        ) from error
    if torch.is_tensor(logits) and logits.is_floating_point() and logits.isnan().any():
        raise RanksearchError(
            f"the model's output on a validation batch of shape {tuple(inputs.shape)} contains NaN values "
            "(its weights and the data are finite: check its buffers, e.g. BatchNorm statistics, and its forward)"
        )
    if class_labels:
        _check_class_labels(logits, val_batches, train_batches)


def _check_class_labels(logits: torch.Tensor, val_batches: Sequence[Batch], train_batches: Sequence[Batch]) -> None:
    if logits.ndim != 2:
        raise RanksearchError(f"the model must output (batch, classes) logits, got shape {tuple(logits.shape)}")
    for what, batches in (("validation", val_batches), ("training", train_batches)):
        labels = torch.cat([t for _, t in batches])
        if labels.is_floating_point() or labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise RanksearchError(
                f"{what} labels must be integer class indices in [0, {logits.shape[1]}) for a model with "
                f"{logits.shape[1]} outputs, got values in [{labels.min().item()}, {labels.max().item()}]"
            )
