"""Reading a user's batches and model outputs: one :class:`BatchAdapter` serves every place that runs the model.

ranksearch runs the model in the evaluation, the brief and the longer fine-tune, BatchNorm recalibration,
the proxy screening, MAC counting, latency timing and ONNX export. What a batch holds and what the model
returns differ between models; the adapter says, once:

- a batch -> ``(inputs, targets)``: an ``(x, y)`` pair (tuple or list; items after the second are
  ignored), ``(x,)`` or a lone tensor (no labels: ``targets`` is None), or a dict (a Hugging Face batch:
  the ``labels`` key, or ``label``, is the target; the other keys are the model's keyword inputs);
- inputs -> a model call: a tensor ``model(x)``, a tuple or list ``model(*x)``, a dict ``model(**x)``;
- model outputs -> the tensor the metric and the loss see: a tensor as it is; a tuple or list, its first
  element; a dict or a Hugging Face ``ModelOutput`` (duck-typed), its ``logits``, else its
  ``last_hidden_state``, else its first tensor value.

Inputs and targets are tensors or tuples, lists and dicts of tensors (nested); whatever else they hold
(ints, strings) travels as it is. Models or data that fit none of this pass their own ``batch`` and
``output`` functions (in a study file, by name: ``[evaluator] batch = "mymodule:split"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .errors import RanksearchError

__all__ = [
    "TARGET_KEYS",
    "BatchAdapter",
    "batch_size",
    "call_model",
    "describe",
    "first_samples",
    "leaf_tensors",
    "map_tensors",
    "repeat_first",
    "to_device",
]

TARGET_KEYS = ("labels", "label")
"""Keys of a dict batch that hold the targets (Hugging Face collators write ``labels``, datasets ``label``)."""

SplitFn = Callable[[object], tuple[object, object]]
OutputFn = Callable[[object], torch.Tensor]


def call_model(model: nn.Module | Callable, inputs: object) -> object:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple or list, ``model(**inputs)`` for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def map_tensors(function: Callable[[torch.Tensor], object], value: object) -> object:
    """``value`` with ``function`` applied to every tensor in it (through tuples, lists and dicts; dicts come
    back as plain dicts, named tuples as named tuples; anything else as it is)."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, Mapping):
        return {key: map_tensors(function, item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        items = [map_tensors(function, item) for item in value]
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*items)
        return tuple(items) if isinstance(value, tuple) else items
    return value


def to_device(value: object, device: torch.device | str) -> object:
    """``value`` with every tensor in it moved to ``device``."""
    return map_tensors(lambda tensor: tensor.to(device), value)


def leaf_tensors(value: object) -> list[torch.Tensor]:
    """Every tensor in ``value`` (through tuples, lists and dicts), in order."""
    found: list[torch.Tensor] = []
    map_tensors(found.append, value)
    return found


def batch_size(inputs: object) -> int:
    """The batch size of model inputs: dimension 0 of their first tensor."""
    tensors = [t for t in leaf_tensors(inputs) if t.ndim > 0]
    if not tensors:
        raise RanksearchError(f"the model inputs hold no tensor with a batch dimension: {describe(inputs)}")
    return tensors[0].shape[0]


def first_samples(value: object, count: int, size: int) -> object:
    """The first ``count`` samples of ``value``: every tensor whose dimension 0 is the batch ``size`` is cut."""
    return map_tensors(lambda t: t[:count] if t.ndim > 0 and t.shape[0] == size else t, value)


def repeat_first(value: object, batch: int) -> object:
    """``value`` at batch size ``batch``: the first sample of every batched tensor, repeated."""
    size = batch_size(value)
    return map_tensors(
        lambda t: t[:1].repeat(batch, *[1] * (t.ndim - 1)) if t.ndim > 0 and t.shape[0] == size else t, value
    )


def describe(value: object) -> object:
    """The shapes in ``value``, JSON-ready: a tensor's shape as a tuple, lists for tuples and lists, dicts for
    dicts, the type's name for anything else. What error messages and the dense measurement show."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, Mapping):
        return {str(key): describe(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [describe(item) for item in value]
    return type(value).__name__


@dataclass(frozen=True)
class BatchAdapter:
    """How batches are split and model outputs read (see the module docstring for the defaults).

    Attributes:
        batch: ``batch(batch) -> (inputs, targets)`` replacing the default split (``targets`` None: no labels).
        output: ``output(model_outputs) -> Tensor`` replacing the default choice of the output tensor.
    """

    batch: SplitFn | None = None
    output: OutputFn | None = None

    def split(self, batch: object) -> tuple[object, object]:
        """``(inputs, targets)`` of one batch; ``targets`` is None when the batch carries no labels."""
        if self.batch is not None:
            split = self.batch(batch)
            if not isinstance(split, (tuple, list)) or len(split) != 2:
                raise RanksearchError(
                    f"the batch function must return (inputs, targets), got {_kind(split)} (targets may be None)"
                )
            return split[0], split[1]
        if isinstance(batch, torch.Tensor):
            return batch, None
        if isinstance(batch, Mapping):
            return _split_dict(batch)
        if isinstance(batch, (tuple, list)) and batch:
            return batch[0], batch[1] if len(batch) > 1 else None
        raise RanksearchError(
            f"a batch must be a tensor, an (inputs, targets) tuple or a dict of model inputs, got {_kind(batch)}; "
            "pass a batch function (batch=...) for other batches"
        )

    def tensor(self, outputs: object) -> torch.Tensor:
        """The tensor the metric and the loss see, read from what the model returned."""
        if self.output is not None:
            chosen = self.output(outputs)
            if not isinstance(chosen, torch.Tensor):
                raise RanksearchError(f"the output function must return a tensor, got {_kind(chosen)}")
            return chosen
        return _output_tensor(outputs)

    def forward(self, model: nn.Module | Callable, inputs: object) -> torch.Tensor:
        """Call ``model`` on ``inputs`` (:func:`call_model`) and read its output tensor (:meth:`tensor`)."""
        return self.tensor(call_model(model, inputs))


def _kind(value: object) -> str:
    """A value's type, with its shapes for containers (for error messages)."""
    if isinstance(value, (tuple, list, Mapping)):
        return f"a {type(value).__name__} {describe(value)}"
    return f"a {type(value).__name__}"


def _split_dict(batch: Mapping) -> tuple[dict, object]:
    present = [key for key in TARGET_KEYS if key in batch]
    if len(present) > 1:
        raise RanksearchError(
            f"a dict batch holds both {' and '.join(map(repr, present))}: which are the targets? "
            "Pass a batch function (batch=...) to say"
        )
    inputs = {key: value for key, value in batch.items() if key not in present}
    if not inputs:
        raise RanksearchError(f"a dict batch holds only its targets ({present[0]!r}): no model inputs")
    return inputs, batch[present[0]] if present else None


def _output_tensor(outputs: object) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, (tuple, list)) and outputs:
        return _output_tensor(outputs[0])
    for key in ("logits", "last_hidden_state"):  # a dict, or a ModelOutput read by attribute
        value = outputs.get(key) if isinstance(outputs, Mapping) else getattr(outputs, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(outputs, Mapping):
        for value in outputs.values():
            if isinstance(value, torch.Tensor):
                return value
        raise RanksearchError(
            f"the model returned a {type(outputs).__name__} with keys {list(outputs)} and no tensor among them: "
            "pass an output function (output=...) that picks the tensor to measure"
        )
    raise RanksearchError(
        f"the model returned {_kind(outputs)}: ranksearch reads a tensor, the first element of a tuple or list, "
        "or the 'logits' (else 'last_hidden_state') of a dict; pass an output function (output=...) for others"
    )
