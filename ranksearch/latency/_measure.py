"""Timing a module the way it will run: warmed up, synchronized on CUDA, repeated, the median kept."""

from __future__ import annotations

import contextlib
import copy
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..adapters import map_tensors
from ..errors import RanksearchError
from ..tracing import InputShape, is_shape
from ._runtimes import check_runtime, forward_runner

__all__ = [
    "DTYPES",
    "LatencySettings",
    "checked_device",
    "device_name",
    "measure_paired",
    "measure_seconds",
    "prepared",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured (all of it is part of a study's identity).

    Attributes:
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``...): where inference is timed.
        dtype: ``float32``; ``bfloat16`` or ``float16`` on CUDA only.
        batch_size: the inference batch size the latency is for.
        threads: CPU threads while timing (``torch.set_num_threads``; restored after); None keeps torch's.
        warmup: untimed runs before timing (cuDNN/oneDNN pick their kernels, caches fill).
        repeats: timed samples; the median is kept.
        min_sample_seconds: each sample loops the module until it lasts at least this long, so
            microsecond layers are not lost in timer resolution.
        check_every: also time the whole compressed model every N-th trial, to compare with the
            prediction (0 = never; Pareto points are measured at the end of a run either way).
        table: path of the per-layer latency table (default: ``latency/<device>.json`` beside the study).
        runtime: what runs the model: ``"torch"`` (eager, the default), ``"torch.compile"`` or
            ``"onnxruntime"`` (the exported graph; ``pip install 'ranksearch[onnx]'``); see
            :mod:`ranksearch.latency._runtimes`. Layers, whole models and spot checks are all timed in it.
        channels_last: time 4-D tensors (Conv2d weights and image inputs) in the channels-last memory
            format, which cuDNN's fastest convolutions (and tensor cores) want; eager torch and
            ``torch.compile`` only.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    threads: int | None = None
    warmup: int = 3
    repeats: int = 15
    min_sample_seconds: float = 0.002
    check_every: int = 10
    table: str | None = None
    runtime: str = "torch"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise RanksearchError(f"latency dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        device = checked_device(self.device, "latency")
        if device.type == "cpu" and self.dtype != "float32":
            raise RanksearchError(f"latency dtype {self.dtype} is for CUDA devices; on the CPU use float32")
        check_runtime(self.runtime, device)
        if not isinstance(self.channels_last, bool):
            raise RanksearchError(f"latency setting channels_last must be true or false, got {self.channels_last!r}")
        if self.channels_last and self.runtime == "onnxruntime":
            raise RanksearchError(
                "latency setting channels_last is for the torch runtimes; onnxruntime picks its own layout"
            )
        for name, low in (("batch_size", 1), ("warmup", 0), ("repeats", 1), ("check_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RanksearchError(f"latency setting {name} must be an int >= {low}, got {value!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise RanksearchError(f"latency setting threads must be an int >= 1 or None, got {self.threads!r}")
        s = self.min_sample_seconds
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise RanksearchError(f"latency setting min_sample_seconds must be a number >= 0, got {s!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def checked_device(device: object, what: str) -> torch.device:
    """``device`` as a torch device, or an error naming ``what`` it is for: not a device, not cpu or cuda, or
    CUDA asked for where there is none."""
    try:
        checked = torch.device(device)
    except (RuntimeError, TypeError):
        raise RanksearchError(f"{what} device {device!r} is not a torch device") from None
    if checked.type not in ("cpu", "cuda"):
        raise RanksearchError(f"{what} device {device!r}: only cpu and cuda are supported")
    if checked.type == "cuda" and not torch.cuda.is_available():
        raise RanksearchError(f"{what} device {device!r} requested but CUDA is not available on this machine")
    return checked


def device_name(device: str | torch.device) -> str:
    """A readable name of the hardware behind ``device`` (CPU model and cores, or the GPU's name)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} x{torch.get_num_threads()} threads"


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepared(module: nn.Module, settings: LatencySettings) -> nn.Module:
    """An eval-mode copy of ``module`` on the settings' device and dtype, channels-last if asked (the original
    is not touched)."""
    copied = copy.deepcopy(module).to(device=settings.device, dtype=settings.torch_dtype).eval()
    return copied.to(memory_format=torch.channels_last) if settings.channels_last else copied


def measure_seconds(
    module: nn.Module,
    input_shape: InputShape,
    settings: LatencySettings,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds of one forward pass of ``module`` on a random input of ``input_shape`` (batch included).

    ``input_shape`` may also be an example input (a tensor, a tuple of tensors for ``module(*inputs)``, a
    dict of tensors for ``module(**inputs)``), timed as it is: moved to the settings' device, its
    floating-point tensors cast to the settings' dtype (integer ones, e.g. token ids, kept).

    The module is copied to the settings' device and dtype, prepared for the settings' ``runtime``
    (compiled, or exported to ONNX and loaded in onnxruntime) and run under ``torch.inference_mode``:
    ``warmup`` untimed runs, then ``repeats`` samples; a sample loops the module ``n`` times (``n``
    chosen once so a sample lasts ``min_sample_seconds``) and counts ``time / n``. CUDA work is
    synchronized before each clock reading.
    """
    return measure_paired([module], input_shape, settings, clock=clock)[0]


def measure_paired(
    modules: Sequence[nn.Module],
    input_shape: InputShape,
    settings: LatencySettings,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Median seconds of one forward pass of each of ``modules`` (same input), timed interleaved.

    Each module is prepared and warmed up as in :func:`measure_seconds`; then every round takes one sample
    of each module in turn (the order alternating between rounds), so that the machine's drift (frequency,
    other load, the allocator's state) hits all of them alike: the ratio of two results is far steadier
    than the ratio of two timings taken minutes apart. With one module this is :func:`measure_seconds`.
    """
    device = torch.device(settings.device)
    inputs = _timing_inputs(input_shape, settings)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with _threads(settings.threads):
        forwards = [forward_runner(prepared(m, settings), inputs, settings.runtime, settings.threads) for m in modules]
    with _threads(settings.threads), torch.inference_mode():
        loops = [_warm_up(forward, settings, sync, clock) for forward in forwards]
        samples: list[list[float]] = [[] for _ in forwards]
        for round_ in range(settings.repeats):
            order = range(len(forwards)) if round_ % 2 == 0 else reversed(range(len(forwards)))
            for i in order:
                start = clock()
                for _ in range(loops[i]):
                    forwards[i]()
                sync()
                samples[i].append((clock() - start) / loops[i])
    return [statistics.median(s) for s in samples]


def _timing_inputs(input_shape: InputShape, settings: LatencySettings) -> object:
    """The timed input on the settings' device and dtype: random for a shape, else the example (integer
    tensors kept), channels-last if asked."""
    device, dtype = torch.device(settings.device), settings.torch_dtype
    if is_shape(input_shape):
        inputs = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    else:
        inputs = map_tensors(lambda t: t.to(device, dtype) if t.is_floating_point() else t.to(device), input_shape)
    if settings.channels_last:
        inputs = map_tensors(lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t, inputs)
    return inputs


def _warm_up(forward: Callable[[], object], settings: LatencySettings, sync: Callable[[], None], clock) -> int:
    """Run ``forward`` ``warmup`` times, then once timed; returns the loops per sample that make a sample
    last ``min_sample_seconds`` (at most 10,000)."""
    for _ in range(settings.warmup):
        forward()
    sync()
    start = clock()
    forward()
    sync()
    once = clock() - start
    if settings.min_sample_seconds > 0 and once < settings.min_sample_seconds:
        return min(10_000, max(1, math.ceil(settings.min_sample_seconds / max(once, 1e-7))))
    return 1
