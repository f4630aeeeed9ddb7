"""The evaluator's fixed data: batches drawn once from a loader for a seed, and checked against the model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .adapters import BatchAdapter, batch_size, call_model, describe, leaf_tensors, to_device
from .errors import RanksearchError

__all__ = ["Batch", "check_model_on_data", "take_batches"]

Batch = tuple[object, object]
"""``(inputs, targets)`` on the device: inputs a tensor, or a tuple or dict of them; targets None without labels."""


def take_batches(
    loader: Iterable,
    count_: int | None,
    device: torch.device,
    what: str,
    seed: int,
    adapter: BatchAdapter | None = None,
) -> list[Batch]:
    """The first ``count_`` batches of ``loader`` (cycling if it is shorter; None: all), on ``device``, split
    into ``(inputs, targets)`` by ``adapter`` (the default :class:`~ranksearch.adapters.BatchAdapter`).

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
            return _collect(loader, count_, device, what, adapter or BatchAdapter())
    finally:
        if saved is not None:
            generator.set_state(saved)


def _collect(loader: Iterable, count_: int | None, device: torch.device, what: str, adapter: BatchAdapter) -> list:
    batches: list[Batch] = []
    for batch in loader:
        inputs, targets = _split(adapter, batch, what)
        batches.append((to_device(inputs, device), to_device(targets, device)))
        if count_ is not None and len(batches) >= count_:
            break
    if not batches:
        raise RanksearchError(f"the {what} loader is empty")
    if len({targets is None for _, targets in batches}) > 1:
        raise RanksearchError(f"the {what} loader yields batches with labels and batches without: give all or none")
    if count_ is not None:
        batches = [batches[i % len(batches)] for i in range(count_)]
    return batches


def _split(adapter: BatchAdapter, batch: object, what: str) -> Batch:
    """One batch as ``(inputs, targets)``, checked: a batch size > 0, the same for the targets."""
    try:
        inputs, targets = adapter.split(batch)
    except RanksearchError as error:
        raise RanksearchError(f"the {what} loader: {error}") from None
    except Exception as error:  # the user's batch function
        raise RanksearchError(
            f"the batch function failed on a {what} batch: {type(error).__name__}: {error}"
        ) from error
    try:
        size = batch_size(inputs)
    except RanksearchError as error:
        raise RanksearchError(f"the {what} loader: {error}") from None
    if size == 0 or (isinstance(targets, torch.Tensor) and (targets.ndim == 0 or targets.shape[0] != size)):
        raise RanksearchError(
            f"the {what} loader yielded inputs of shape {describe(inputs)} with targets of shape "
            f"{describe(targets)}: they must have the same non-zero batch size"
        )
    return inputs, targets


def check_model_on_data(
    model: nn.Module,
    val_batches: Sequence[Batch],
    train_batches: Sequence[Batch],
    class_labels: bool,
    adapter: BatchAdapter | None = None,
) -> torch.Tensor:
    """The model's output tensor on the first validation batch, once checked; else a RanksearchError saying
    why every trial would fail on this model and data.

    Checks finite weights and inputs, and a forward pass on the first validation batch without NaN whose
    output ``adapter`` can read; with ``class_labels`` (top-1 accuracy) and labels, ``(batch, classes)``
    logits and integer targets in ``[0, classes)``.
    """
    adapter = adapter or BatchAdapter()
    for name, parameter in model.named_parameters():  # NaN/inf weights: every trial would fail
        if parameter.is_floating_point() and not torch.isfinite(parameter).all():
            raise RanksearchError(f"the model's parameter {name!r} has non-finite values (NaN or inf)")
    for what, batches in (("validation", val_batches), ("training", train_batches)):
        tensors = [t for inputs, _ in batches for t in leaf_tensors(inputs)]
        if any(not torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
            raise RanksearchError(f"the {what} data contains NaN or infinite values")
    inputs = val_batches[0][0]
    try:
        with torch.no_grad():
            returned = call_model(model, inputs)
    except Exception as error:
        raise RanksearchError(
            f"the model's forward pass fails on a validation batch of shape {describe(inputs)}: {error}"
        ) from error
    logits = adapter.tensor(returned)
    if logits.is_floating_point() and logits.isnan().any():
        raise RanksearchError(
            f"the model's output on a validation batch of shape {describe(inputs)} contains NaN values "
            "(its weights and the data are finite: check its buffers, e.g. BatchNorm statistics, and its forward)"
        )
    if class_labels:
        _check_class_labels(logits, val_batches, train_batches)
    return logits


def _check_class_labels(logits: torch.Tensor, val_batches: Sequence[Batch], train_batches: Sequence[Batch]) -> None:
    if val_batches[0][1] is None and train_batches[0][1] is None:
        return  # no labels: the quality is the fidelity, not the accuracy
    if logits.ndim != 2:
        raise RanksearchError(f"the model must output (batch, classes) logits, got shape {tuple(logits.shape)}")
    for what, batches in (("validation", val_batches), ("training", train_batches)):
        if batches[0][1] is None:
            continue
        if not all(isinstance(t, torch.Tensor) for _, t in batches):
            raise RanksearchError(f"{what} targets must be tensors of class indices for the default top-1 accuracy")
        labels = torch.cat([t for _, t in batches])
        if labels.is_floating_point() or labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise RanksearchError(
                f"{what} labels must be integer class indices in [0, {logits.shape[1]}) for a model with "
                f"{logits.shape[1]} outputs, got values in [{labels.min().item()}, {labels.max().item()}]"
            )
