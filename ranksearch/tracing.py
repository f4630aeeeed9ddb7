"""One forward pass of a model on a zero input (or an example input), recording the shapes chosen modules see.

What the MAC count, the latency table and the rank allocation need to know about a model's layers
(input and output shapes of each call) comes from :func:`trace_calls`. A model called with one tensor is
traced on zeros of an input shape; a model called otherwise (a tuple of tensors, or keyword tensors such as
a Hugging Face model's ``input_ids`` and ``attention_mask``) on an example input of that structure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import call_model, describe, map_tensors, to_device
from .errors import RanksearchError

__all__ = ["InputShape", "ModuleCall", "is_shape", "trace_calls"]

InputShape = Sequence[int] | torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
"""An input shape (batch included), or an example input: a tensor, a tuple or list of tensors (positional
inputs) or a dict of tensors (keyword inputs)."""


def is_shape(value: object) -> bool:
    """Whether ``value`` is an input shape (a sequence of ints, e.g. ``(1, 3, 32, 32)``), not an example input."""
    if isinstance(value, (torch.Tensor, Mapping, str, bytes)) or not isinstance(value, Iterable):
        return False
    return not any(isinstance(item, (torch.Tensor, Mapping, tuple, list)) for item in value)


@dataclass(frozen=True)
class ModuleCall:
    """One call of a traced module.

    Attributes:
        name: the module's qualified name (``""`` for the model itself).
        module: the module called.
        input_shape: shape of its first positional argument, e.g. ``(N, C, H, W)``; ``()`` if not a tensor.
        output_shape: shape of its output, e.g. ``(N, O, H', W')``; ``()`` if not a tensor.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def trace_calls(
    model: nn.Module, input_shape: InputShape, names: Iterable[str], *, dtype: torch.dtype | None = None
) -> list[ModuleCall]:
    """Every call of the modules ``names`` in one forward pass of ``model``, in the order they return.

    Args:
        model: any module; its train/eval state is restored afterwards (it runs in eval mode).
        input_shape: the zero input's shape, batch included, e.g. ``(1, 3, 32, 32)``; or an example input
            (a tensor, a tuple or list of tensors for ``model(*inputs)``, a dict of tensors for
            ``model(**inputs)``), used as it is (its values, its dtypes).
        names: qualified names of the modules to record (``model.get_submodule(name)``).
        dtype: the zero input's dtype; by default that of the model's first parameter (float32 without
            one). An example input keeps its own dtypes unless ``dtype`` is given, which its floating-point
            tensors are cast to. The input is on the first parameter's device (the CPU without one).

    Raises:
        RanksearchError: the forward pass failed (the message names the shapes; the cause is chained).
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    if is_shape(input_shape):
        shape = tuple(int(s) for s in input_shape)
        default = first.dtype if first is not None else torch.float32
        inputs: object = torch.zeros(shape, device=device, dtype=dtype or default)
        what = f"an input of shape {shape}"
    else:
        inputs = _cast_floats(to_device(input_shape, device), dtype)
        what = f"the example input {describe(input_shape)}"
    calls: list[ModuleCall] = []
    handles = [model.get_submodule(name).register_forward_hook(_recorder(name, calls)) for name in names]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, inputs)
    except Exception as error:  # a user model failing on this input: say so plainly
        raise RanksearchError(f"the model's forward pass failed on {what}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():  # the caller's train/eval mode is left as it was
            module.train(training)
    return calls


def _cast_floats(value: object, dtype: torch.dtype | None) -> object:
    """``value`` with its floating-point tensors cast to ``dtype`` (as it is when ``dtype`` is None)."""
    if dtype is None:
        return value
    return map_tensors(lambda t: t.to(dtype) if t.is_floating_point() else t, value)


def _recorder(name: str, calls: list[ModuleCall]) -> Callable[[nn.Module, tuple, object], None]:
    def record(module: nn.Module, args: tuple, output: object) -> None:
        in_shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
        out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        calls.append(ModuleCall(name, module, in_shape, out_shape))

    return record
