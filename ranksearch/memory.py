"""Deployment memory of a model: its weights at the deployment dtype plus the peak activation memory of one
inference forward pass. Every size here is in bytes.

:class:`MemoryMeter` is the ``memory`` objective's measurement (no Optuna here): the dense model once, then
every compressed model, at the deployment's device, dtype and batch size (:class:`MemorySettings`).
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Union

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .adapters import call_model, leaf_tensors, map_tensors, repeat_first
from .errors import RanksearchError
from .latency import DTYPES, LatencySettings
from .latency._measure import checked_device
from .tracing import InputShape, is_shape

__all__ = [
    "CPU_METHODS",
    "MemoryMeter",
    "MemorySettings",
    "MemoryUse",
    "cuda_activation_peak",
    "measured_cpu_activation_peak",
    "memory_use",
    "traced_activation_peak",
    "weight_bytes",
]

Inputs = Union[torch.Tensor, tuple, Mapping[str, Any]]


@dataclass(frozen=True)
class MemoryUse:
    """The memory of one inference forward pass of a model, in bytes."""

    weights_bytes: int  #: parameters and buffers at the deployment dtype
    activations_bytes: int  #: peak of the tensors alive in the forward pass beyond weights and input (outputs count)
    method: str  #: "cuda allocator", "traced" (:func:`traced_activation_peak`) or "profiler" (measured on the CPU)

    @property
    def total_bytes(self) -> int:
        """Weights plus peak activations, in bytes."""
        return self.weights_bytes + self.activations_bytes


def _check(dtype: object = torch.float32, inputs: object = ()) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise RanksearchError(f"memory dtype {dtype!r} is not a floating-point torch dtype (e.g. torch.bfloat16)")
    if not isinstance(inputs, (torch.Tensor, tuple, Mapping)):
        raise RanksearchError(f"memory inputs must be a tensor, tuple or dict, not a {type(inputs).__name__}")


def weight_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of every parameter and buffer of ``model``, a shared (tied) tensor once.

    Floating-point tensors count at ``dtype``'s size when it is given (at their own otherwise); other tensors
    (integer buffers such as BatchNorm's ``num_batches_tracked``) always at their own.
    """
    _check(dtype or torch.float32)
    seen: set[object] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        key = (t.data_ptr(), t.numel()) if t.data_ptr() else id(t)  # 0: meta tensors
        if key not in seen:
            seen.add(key)
            total += t.numel() * (dtype.itemsize if dtype and t.is_floating_point() else t.element_size())
    return total


def _forward(model: nn.Module, inputs: Inputs) -> object:
    """``model(inputs)``, ``model(*inputs)`` for a tuple, ``model(**inputs)`` for a dict."""
    _check(inputs=inputs)
    try:
        return call_model(model, inputs)
    except Exception as error:
        message = f"the forward pass of {type(model).__name__} failed: {type(error).__name__}: {error}"
        raise RanksearchError(message) from error


def _storage_pointer(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without one storage (sparse...)
        return 0


class _LiveStorages(TorchDispatchMode):
    """Sees every op's outputs; counts the bytes of the storages they newly allocate while those are alive."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__()
        self.existing = existing | {0}  # storages there before (weights, inputs); 0: none
        self.live: dict[int, int] = {}
        self.finalizers: list[weakref.finalize] = []
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # an output on an argument's storage is a view or an in-place result: nothing new
        given = {_storage_pointer(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        output = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(output):
            pointer = _storage_pointer(tensor) if isinstance(tensor, torch.Tensor) else 0
            if pointer not in given and pointer not in self.existing and pointer not in self.live:
                storage = tensor.untyped_storage()
                self.live[pointer] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                # torch keeps a storage's Python object while the storage lives: this runs as it is freed
                self.finalizers.append(weakref.finalize(storage, self._free, pointer))
        return output

    def _free(self, pointer: int) -> None:
        self.current -= self.live.pop(pointer, 0)


def traced_activation_peak(model: nn.Module, inputs: Inputs) -> int:
    """Peak bytes of the tensors one forward pass allocates, counted op by op (a CPU estimate, in bytes).

    Runs ``model`` once under ``torch.inference_mode`` in a dispatch mode that sees every aten op's outputs: a
    new storage (not an argument's: views and in-place results add nothing; not a weight's or an input's)
    counts from the op that made it until it is freed; the outputs count. What a kernel allocates and frees
    inside one op is not seen: convolution workspace, the intermediates of fused RNN and attention kernels.
    """
    _check(inputs=inputs)
    existing = (*model.parameters(), *model.buffers(), *leaf_tensors(inputs))
    tracker = _LiveStorages({_storage_pointer(t) for t in existing})
    with torch.inference_mode(), tracker:
        _forward(model, inputs)  # the outputs count when they are made: the peak is kept as it rises
    for finalizer in tracker.finalizers:
        finalizer.detach()
    return tracker.peak


def cuda_activation_peak(model: nn.Module, inputs: Inputs) -> int:
    """Peak bytes CUDA's caching allocator held during one forward pass beyond what it held before (bytes).

    On the device of the first CUDA input (else the current one), after an unmeasured forward so that one-time
    allocations (cuBLAS's workspace) do not count. Sizes are rounded up to 512 bytes; kernel workspace counts.
    """
    if not torch.cuda.is_available():
        raise RanksearchError("the CUDA activation peak needs CUDA, which is not available on this machine")
    device = next((t.device for t in leaf_tensors(inputs) if t.is_cuda), torch.device("cuda"))
    with torch.cuda.device(device), torch.inference_mode():
        _forward(model, inputs)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _forward(model, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base


def measured_cpu_activation_peak(model: nn.Module, inputs: Inputs) -> int:
    """Peak bytes the CPU allocator held during one forward pass beyond what it held before (bytes).

    A check of :func:`traced_activation_peak`: the raw ``[memory]`` records of ``torch.profiler`` (every
    CPU allocation and free; its parsed events fold those inside an op into the op) summed in time order, after
    one unmeasured forward. Kernel workspace counts here, so this is at least the traced estimate.
    """
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # else every profiler start and stop prints a line on stderr
    with torch.inference_mode():
        _forward(model, inputs)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
            _forward(model, inputs)
    results = getattr(recorded.profiler, "kineto_results", None)
    if results is None:
        raise RanksearchError("this torch's profiler gave no memory records (profiler.kineto_results is missing)")
    cpu = torch.autograd.DeviceType.CPU
    records = [e for e in results.events() if e.name() == "[memory]" and e.device_type() == cpu]
    sizes = (record.nbytes() for record in sorted(records, key=lambda record: record.start_ns()))
    return max(accumulate(sizes, initial=0))


CPU_METHODS = ("traced", "profiler")
"""How the CPU activation peak is counted: ``traced`` (live op outputs, what any runtime must hold) or
``profiler`` (the allocator's records of eager PyTorch, kernel scratch included)."""


def memory_use(
    model: nn.Module,
    inputs: Inputs,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    cpu_method: str = "traced",
) -> MemoryUse:
    """Weights and peak activations (bytes) of one inference forward pass of ``model`` on ``inputs``.

    ``model`` runs in eval mode, copied to ``device`` and ``dtype`` unless it is there already (its modes are
    restored after; its weights are not touched); the inputs'
    floating-point tensors are cast to ``dtype`` (integer ones, e.g. token ids, keep theirs) and moved. On
    CUDA the caching allocator measures the peak; on the CPU it is traced (:func:`traced_activation_peak`),
    or with ``cpu_method="profiler"`` measured (:func:`measured_cpu_activation_peak`).
    """
    target = checked_device(device, "memory")
    _check(dtype, inputs)
    if cpu_method not in CPU_METHODS:
        raise RanksearchError(f"memory cpu_method must be one of {', '.join(CPU_METHODS)}, got {cpu_method!r}")
    # a model already on the device and dtype (every trial's, on the CPU) is measured as it is: no copy per trial
    placed = _placed(model, target, dtype)
    measured = model if placed else copy.deepcopy(model).to(device=target, dtype=dtype)
    moved = map_tensors(lambda t: t.to(target, dtype) if t.is_floating_point() else t.to(target), inputs)
    modes = [(module, module.training) for module in measured.modules()]
    measured.eval()
    try:
        if target.type == "cuda":
            return MemoryUse(weight_bytes(measured), cuda_activation_peak(measured, moved), "cuda allocator")
        if cpu_method == "profiler":
            return MemoryUse(weight_bytes(measured), measured_cpu_activation_peak(measured, moved), "profiler")
        return MemoryUse(weight_bytes(measured), traced_activation_peak(measured, moved), "traced")
    finally:
        for module, training in modes:  # the caller's modes, submodule by submodule
            module.training = training


def _placed(model: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether every tensor of ``model`` is on ``device`` and every floating one in ``dtype``."""
    return all(
        t.device.type == device.type
        and (device.index is None or t.device.index == device.index)
        and (not t.is_floating_point() or t.dtype == dtype)
        for t in (*model.parameters(), *model.buffers())
    )


@dataclass(frozen=True)
class MemorySettings:
    """Where the ``memory`` objective is counted: the deployment's device, dtype and inference batch size.

    A study with latency settings counts memory at theirs (:meth:`like`); without, float32 at batch 1 on the
    evaluator's device. ``cpu_method`` (:data:`CPU_METHODS`): on the CPU, ``traced`` counts the live op
    outputs, deterministic and runtime-independent; ``profiler`` measures eager PyTorch's allocations, whose
    kernel scratch (oneDNN's reordered copies) made factorized convs at batch 32 up to 1.45x heavier than the
    trace says (``benchmarks/RESULTS_memory.md``).
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    cpu_method: str = "traced"

    def __post_init__(self) -> None:
        if self.cpu_method not in CPU_METHODS:
            raise RanksearchError(f"memory cpu_method must be one of {', '.join(CPU_METHODS)}, got {self.cpu_method!r}")
        if self.dtype not in DTYPES:
            raise RanksearchError(f"memory dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise RanksearchError(f"memory batch_size must be an int >= 1, got {b!r}")
        checked_device(self.device, "memory")

    @classmethod
    def like(cls, latency: LatencySettings) -> MemorySettings:
        """The memory settings of a deployment timed with ``latency``."""
        return cls(device=latency.device, dtype=latency.dtype, batch_size=latency.batch_size)


class MemoryMeter:
    """The ``memory`` objective of one model: weights plus peak activations of one forward at the settings'
    batch size, for the dense model (``dense``, measured here) and any compressed one (:meth:`measure`).

    ``sample`` is one input sample's shape (the batch is ``settings.batch_size``), or an example input
    whose first sample is repeated to the batch size (:func:`ranksearch.adapters.repeat_first`).
    """

    def __init__(self, model: nn.Module, sample: InputShape, settings: MemorySettings | None = None) -> None:
        self.settings = settings or MemorySettings()
        batch = self.settings.batch_size
        self.inputs = torch.zeros(batch, *sample) if is_shape(sample) else repeat_first(sample, batch)
        self.dense = self.measure(model)

    def measure(self, model: nn.Module) -> MemoryUse:
        """Weights and peak activations of ``model`` (bytes) at the settings' device, dtype and batch."""
        s = self.settings
        return memory_use(model, self.inputs, device=s.device, dtype=DTYPES[s.dtype], cpu_method=s.cpu_method)
