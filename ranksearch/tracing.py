"""One forward pass of a model on a zero input, recording the shapes chosen modules see.

What the MAC count, the latency table and the rank allocation need to know about a model's layers
(input and output shapes of each call) comes from :func:`trace_calls`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import RanksearchError

__all__ = ["ModuleCall", "trace_calls"]


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
    model: nn.Module, input_shape: Sequence[int], names: Iterable[str], *, dtype: torch.dtype | None = None
) -> list[ModuleCall]:
    """Every call of the modules ``names`` in one forward pass of ``model`` on zeros, in the order they return.

    Args:
        model: any module; its train/eval state is restored afterwards (it runs in eval mode).
        input_shape: the zero input's shape, batch included, e.g. ``(1, 3, 32, 32)``.
        names: qualified names of the modules to record (``model.get_submodule(name)``).
        dtype: the input's dtype; by default that of the model's first parameter (float32 without one).
            The input is on the first parameter's device (the CPU without one).

    Raises:
        RanksearchError: the forward pass failed (the message names the shape; the cause is chained).
    """
    shape = tuple(int(s) for s in input_shape)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = dtype or (first.dtype if first is not None else torch.float32)
    calls: list[ModuleCall] = []
    handles = [model.get_submodule(name).register_forward_hook(_recorder(name, calls)) for name in names]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=device, dtype=dtype))
    except Exception as error:  # a user model failing on this shape: say so plainly
        raise RanksearchError(f"the model's forward pass failed on an input of shape {shape}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():  # the caller's train/eval mode is left as it was
            module.train(training)
    return calls


def _recorder(name: str, calls: list[ModuleCall]) -> Callable[[nn.Module, tuple, object], None]:
    def record(module: nn.Module, args: tuple, output: object) -> None:
        in_shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
        out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        calls.append(ModuleCall(name, module, in_shape, out_shape))

    return record
