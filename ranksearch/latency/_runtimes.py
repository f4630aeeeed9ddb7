"""The runtimes a model is timed in: eager PyTorch, ``torch.compile``, onnxruntime.

Deployers rarely ship eager PyTorch, and a factorized layer that is slower than the dense one in eager mode
can be faster once a compiler fuses it (or the reverse). :func:`forward_runner` prepares a module once for a
runtime and returns a callable that runs one forward pass; :func:`~ranksearch.latency.measure_seconds`
times that callable the same way for every runtime.

- ``torch``: the module as it is (eager), under ``torch.inference_mode``.
- ``torch.compile``: ``torch.compile(module, dynamic=False)`` (Inductor; on the CPU it needs a C++
  compiler), after ``torch._dynamo.reset()``; the first calls compile, so the warm-up runs absorb the
  compilation (about 10 s per module on a 2-core CPU: a latency table of many layers takes a while).
- ``onnxruntime``: the module exported by :func:`ranksearch.onnx_export.export_onnx` (torch's exporter,
  fixed batch) and run in an ``InferenceSession`` with the settings' threads (intra-op) on the CPU provider,
  or the CUDA provider for a CUDA device. Needs ``pip install 'ranksearch[onnx]'``.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ..adapters import call_model
from ..errors import RanksearchError

__all__ = ["RUNTIMES", "check_runtime", "forward_runner", "session_options"]

RUNTIMES = ("torch", "torch.compile", "onnxruntime")
ONNXRUNTIME_HINT = "the onnxruntime runtime needs the onnx extra: pip install 'ranksearch[onnx]'"


def check_runtime(runtime: object, device: torch.device) -> None:
    """A clear error for an unknown runtime, or one that cannot run here (a missing package, a missing
    CUDA provider)."""
    if runtime not in RUNTIMES:
        raise RanksearchError(f"latency runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime":
        ort = _onnxruntime()
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RanksearchError(
                "latency runtime onnxruntime on a CUDA device needs onnxruntime's CUDA provider "
                "(pip install onnxruntime-gpu); this onnxruntime has " + ", ".join(ort.get_available_providers())
            )


def _onnxruntime() -> ModuleType:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise RanksearchError(f"{ONNXRUNTIME_HINT} (module 'onnxruntime' is not installed)") from None


def forward_runner(model: nn.Module, inputs: object, runtime: str, threads: int | None) -> Callable[[], object]:
    """One forward pass of ``model`` (prepared: on its device and dtype, in eval mode) on ``inputs``, in
    ``runtime``; the preparation (compiling, exporting) happens here, once."""
    if runtime == "torch":
        return lambda: call_model(model, inputs)
    if runtime == "torch.compile":
        # Every module timed is a new graph for the same forward code: without a reset, dynamo's recompile
        # limit (8 per code object) would silently leave later modules running eagerly.
        torch._dynamo.reset()
        compiled = torch.compile(model, dynamic=False)
        return lambda: call_model(compiled, inputs)
    if runtime == "onnxruntime":
        return _onnxruntime_runner(model, inputs, threads)
    raise RanksearchError(f"latency runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def session_options(ort: ModuleType, threads: int | None) -> object:
    """onnxruntime session options for timing: ``threads`` intra-op threads (None: torch's thread count, as the
    torch runtimes use), one inter-op thread, and no spinning between runs. A spinning thread pool keeps its
    cores busy after each run, which steals them from the next module timed (the dense reference is timed
    interleaved with each model): on a 2-core CPU, batch-1 timings of the same model then varied 0.1-3.4x."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _onnxruntime_runner(model: nn.Module, inputs: object, threads: int | None) -> Callable[[], object]:
    from ..onnx_export import export_onnx, onnx_feed  # imports the exporter's packages only when used

    ort = _onnxruntime()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, inputs, path, verify=False, dynamic_batch=False)
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(path.read_bytes(), session_options(ort, threads), providers=providers)
    feed = onnx_feed(session, inputs)
    return lambda: session.run(None, feed)
