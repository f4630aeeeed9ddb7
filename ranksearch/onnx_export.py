"""export_onnx(model, example_input, path): a (compressed) model as an ONNX file, checked with onnxruntime.

The example input is a tensor, a tuple or list of tensors (``model(*inputs)``) or a dict of tensors
(``model(**inputs)``, e.g. a Hugging Face model's ``input_ids`` and ``attention_mask``, which become the
ONNX inputs of those names).

Uses torch's default exporter, the ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``),
which needs the ``onnx`` and ``onnxscript`` packages; ``onnxruntime`` is needed only for verification.
All three come with the optional extra::

    pip install 'ranksearch[onnx]'

Every module a ranksearch method builds exports: the factorized convs and linears are standard layers,
and :class:`~ranksearch.decompositions.tt.TTMatrixLinear` is reshapes, transposes and matmuls. The legacy
TorchScript exporter (``dynamo=False``) also handles them and is faster, but torch deprecates it with a
warning on every call and plans to remove it, so it is not used here.

Example::

    small = rs.apply(model, rs.CompressionConfig({"layer1.0.conv1": ("tucker2", (16, 8))}))
    result = export_onnx(small, torch.randn(1, 3, 32, 32), "small.onnx")
    result.max_abs_diff  # onnxruntime vs torch on the example input
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from .adapters import call_model, describe
from .errors import RanksearchError

__all__ = [
    "OnnxExport",
    "OnnxExportError",
    "OnnxExtraMissingError",
    "OnnxVerificationError",
    "export_onnx",
    "onnx_feed",
]

EXTRA_HINT = "ONNX export needs the onnx extra: pip install 'ranksearch[onnx]'"

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4

# torch's exporter logs one line per torchvision op it cannot register when torchvision is absent
# (torch.onnx._internal.exporter._registration); irrelevant to these models and printed on every export.
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CLASS_PREFIX = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>: ")  # "<class 'pkg.mod.Error'>: msg" -> "Error: msg"


class OnnxExportError(RanksearchError):
    """The model could not be exported to ONNX, or the exported file does not behave like the model."""


class OnnxExtraMissingError(OnnxExportError):
    """``onnx`` or ``onnxscript`` is not installed (the message names which)."""


class OnnxVerificationError(OnnxExportError):
    """onnxruntime's output differs from torch's by more than the tolerance, or onnxruntime cannot run it."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file (weights inside it; models over 2 GB get a side file of external data).
        opset: the default-domain ONNX opset of the file.
        dynamic_batch: whether the file's input has a symbolic batch dimension (dimension 0).
        max_abs_diff: largest ``|onnxruntime - torch|`` over all outputs on the example input; None when
            verification was off or onnxruntime is not installed.
        seconds: wall-clock time of the whole call (export, save and verification).
    """

    path: Path
    opset: int
    dynamic_batch: bool
    max_abs_diff: float | None
    seconds: float


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxExtraMissingError(f"{EXTRA_HINT} (module {module!r} is not installed)") from None


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


class _DropTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known, harmless noise, and nothing else."""
    logger = logging.getLogger(_REGISTRATION_LOGGER)
    notice_filter = _DropTorchvisionNotice()
    logger.addFilter(notice_filter)
    # onnxscript's optimizer tries to fold constants and logs each node it cannot (BERT's reshapes): not an error
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    folding_level = folding.level
    folding.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # torch 2.13's own torch.export deep-copies its module call graph, whose pytree specs trip the
            # deprecation shim of torch.utils._pytree.LeafSpec (copyreg.__newobj__ -> typing_extensions).
            # Internal to torch and not actionable here; under `-W error` it would abort the export.
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            # Several inputs sharing the one batch dimension (a dict of inputs): torch names it once and says so.
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used, since it shares")
            yield
    finally:
        logger.removeFilter(notice_filter)
        folding.setLevel(folding_level)


def _flatten(output: object) -> list[torch.Tensor]:
    """Output tensors in the order the exporter lays them out (tensors, tuples/lists, dict values)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _flatten(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _flatten(item)]
    hint = ""
    if "Cache" in type(output).__name__:  # transformers' DynamicCache & co: the decoder's key/value cache
        hint = (
            " (a Hugging Face decoder returns its key/value cache: build it with config.use_cache=False, "
            "or export a module that returns only the logits)"
        )
    raise OnnxExportError(
        f"model output must be tensors (or tuples, lists, dicts of them), got {type(output).__name__}{hint}"
    )


def _summary(error: BaseException) -> str:
    """One line from torch's multi-paragraph export error: its 'Exception summary' when it has one."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        if after:
            return _CLASS_PREFIX.sub(r"\1: ", after[0])
    return lines[0] if lines else type(error).__name__


def _named_inputs(example_input: object) -> dict[str, torch.Tensor]:
    """The example input's tensors by ONNX input name: ``input`` for one tensor, ``input_<i>`` for a tuple's,
    the keys of a dict."""
    if isinstance(example_input, torch.Tensor):
        return {"input": example_input}
    if isinstance(example_input, Mapping):
        return dict(example_input)
    return {f"input_{index}": tensor for index, tensor in enumerate(example_input)}


def onnx_feed(session: object, example_input: object) -> dict[str, object]:
    """The numpy arrays an onnxruntime ``session`` of an :func:`export_onnx` file takes for ``example_input``
    (its inputs by name; a lone tensor whatever the exporter named it; inputs the graph dropped left out)."""
    named = {name: tensor.detach().cpu() for name, tensor in _named_inputs(example_input).items()}
    if isinstance(example_input, torch.Tensor):
        return {session.get_inputs()[0].name: named["input"].numpy()}
    return {i.name: named[i.name].numpy() for i in session.get_inputs()}


def _verify(
    ort: ModuleType, path: Path, example_input: object, expected: list[torch.Tensor], rtol: float, atol: float
) -> float:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings go straight to stderr
    float64 = any(x.dtype == torch.float64 for x in _named_inputs(example_input).values())
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, onnx_feed(session, example_input))
    except Exception as error:  # onnxruntime raises its own classes (Fail, NotImplemented, InvalidArgument...)
        hint = " (some of its CPU kernels, Conv among them, are float32 only)" if float64 else ""
        raise OnnxVerificationError(
            f"onnxruntime cannot run the exported model{hint}: {_summary(error)}; pass verify=False to skip this check"
        ) from error
    if len(got) != len(expected):
        raise OnnxVerificationError(f"the ONNX model has {len(got)} outputs, the torch model {len(expected)}")
    max_abs_diff = 0.0
    for index, (array, reference) in enumerate(zip(got, expected, strict=True)):
        actual = torch.from_numpy(array).to(reference.dtype)
        reference = reference.detach().cpu()
        if actual.shape != reference.shape:
            raise OnnxVerificationError(
                f"output {index}: onnxruntime gives shape {tuple(actual.shape)}, torch {tuple(reference.shape)}"
            )
        if actual.numel() == 0:
            continue
        diff = (actual - reference).abs()
        max_abs_diff = max(max_abs_diff, float(diff.max()))
        bad = diff > atol + rtol * reference.abs()
        if bad.any() or not torch.isfinite(diff).all():
            raise OnnxVerificationError(
                f"output {index}: onnxruntime differs from torch by up to {float(diff.max()):.3g} "
                f"({int(bad.sum())} of {diff.numel()} values beyond atol={atol:g} + rtol={rtol:g} * |torch|)"
            )
    return max_abs_diff


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor | tuple | list | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    opset: int | None = None,
    dynamic_batch: bool = True,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> OnnxExport:
    """Export ``model`` (a ranksearch-compressed one or any other) to the ONNX file ``path``.

    Args:
        model: an ``nn.Module``. It is deep-copied and the copy put in eval mode; ``model`` itself is not
            modified (not even its train/eval mode).
        example_input: what the model accepts (dtypes and device): a tensor (``model(x)``; the ONNX input
            ``input``), a tuple or list of tensors (``model(*x)``; inputs ``input_0``, ``input_1``...) or a
            dict of tensors (``model(**x)``; inputs named by its keys). Used to trace the model and, with
            ``verify``, to compare onnxruntime's output with torch's.
        path: the ``.onnx`` file to write (its directory must exist); overwritten if present.
        verify: run the file with onnxruntime on ``example_input`` and check every output against torch:
            ``|onnx - torch| <= atol + rtol * |torch|`` elementwise, by default ``rtol=1e-3, atol=1e-4``
            (far above float32 reordering, far below a wrong graph). Skipped, with ``max_abs_diff=None``,
            when onnxruntime is not installed. Some of onnxruntime's CPU kernels (Conv) are float32 only:
            verify a float32 model.
        opset: the default-domain ONNX opset; None for torch's default. torch's exporter emits opset 18
            or newer and converts down to an older one it is asked for, logging that it does; if the
            conversion fails the file keeps 18: ``OnnxExport.opset`` has the real one.
        dynamic_batch: make dimension 0 of every input (and the outputs) symbolic, so the file runs with
            any batch size. If the model's code fixes the batch size (e.g. ``x.reshape(2, -1)``), torch
            specializes it and the file keeps the example's batch size: see ``OnnxExport.dynamic_batch``.
        rtol, atol: the verification tolerance above.

    Returns:
        an :class:`OnnxExport` (path, opset, dynamic_batch, max_abs_diff, seconds).

    Raises:
        OnnxExtraMissingError: ``onnx`` or ``onnxscript`` is not installed.
        OnnxExportError: bad arguments, the model fails on ``example_input``, or torch cannot export it
            (the message has torch's summary; the chained exception its full report).
        OnnxVerificationError: onnxruntime cannot run the file, or its output is out of tolerance.
    """
    start = time.perf_counter()
    path = _check_arguments(model, example_input, path, rtol=rtol, atol=atol, opset=opset)
    _require("onnx")
    _require("onnxscript")
    ort = _optional("onnxruntime") if verify else None
    copied = copy.deepcopy(model).eval()
    expected = _reference_outputs(copied, example_input)
    program = _export(copied, example_input, path, opset=opset, dynamic_batch=dynamic_batch)
    return OnnxExport(
        path=path,
        opset=program.model.opset_imports.get("", -1),
        dynamic_batch=_has_dynamic_batch(program),
        max_abs_diff=None if ort is None else _verify(ort, path, example_input, expected, rtol, atol),
        seconds=time.perf_counter() - start,
    )


def _check_arguments(
    model: object, example_input: object, path: object, *, rtol: float, atol: float, opset: object
) -> Path:
    """``path`` as a Path, once the arguments of :func:`export_onnx` are checked (an OnnxExportError if not)."""
    if not isinstance(model, nn.Module):
        raise OnnxExportError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not _is_example(example_input):
        shapes = f" {describe(example_input)}" if isinstance(example_input, (tuple, list, Mapping)) else ""
        raise OnnxExportError(
            "example_input must be a torch.Tensor (or a tuple or list of tensors, or a dict of tensors: the "
            f"model's inputs), got {type(example_input).__name__}{shapes}"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise OnnxExportError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise OnnxExportError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise OnnxExportError(f"cannot write {str(path)!r}: it is a directory")
    if not (rtol >= 0 and atol >= 0):
        raise OnnxExportError(f"rtol and atol must be >= 0, got rtol={rtol!r}, atol={atol!r}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 1):
        raise OnnxExportError(f"opset must be a positive int or None, got {opset!r}")
    return path


def _is_example(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return bool(value) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(v, torch.Tensor) for v in value)


def _reference_outputs(model: nn.Module, example_input: object) -> list[torch.Tensor]:
    """torch's output tensors of ``model`` on ``example_input`` (what onnxruntime's must match)."""
    try:
        with torch.no_grad():
            return _flatten(call_model(model, example_input))
    except OnnxExportError:
        raise
    except Exception as error:
        if isinstance(example_input, torch.Tensor):
            what = f"of shape {tuple(example_input.shape)} and dtype {example_input.dtype}"
        else:
            what = f"{describe(example_input)}"
        raise OnnxExportError(f"the model fails on example_input {what}: {type(error).__name__}: {error}") from error


def _export_arguments(example_input: object, dynamic_batch: bool) -> dict[str, object]:
    """``torch.onnx.export``'s args, kwargs, input names and dynamic shapes for ``example_input``."""
    batch = torch.export.Dim("batch")
    named = _named_inputs(example_input)
    dims = {name: ({0: batch} if dynamic_batch and t.ndim > 0 else None) for name, t in named.items()}
    if isinstance(example_input, Mapping):  # keyword inputs: dynamic shapes by argument name
        args, kwargs, shapes = (), dict(example_input), dims
    else:
        args, kwargs, shapes = tuple(named.values()), None, tuple(dims.values())
    any_dynamic = any(dim is not None for dim in dims.values())
    return {
        "args": args,
        "kwargs": kwargs,
        "input_names": list(named),
        "dynamic_shapes": shapes if any_dynamic else None,
    }


def _export(
    model: nn.Module, example_input: object, path: Path, *, opset: int | None, dynamic_batch: bool
) -> torch.onnx.ONNXProgram:
    """Export ``model`` with torch's exporter and save it to ``path``; torch's error summarized if it fails."""
    arguments = _export_arguments(example_input, dynamic_batch)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                dynamo=True,
                verbose=False,  # else it prints its progress to stdout
                opset_version=opset,
                **arguments,
            )
            program.save(path)  # a side file of external data only when the weights exceed 2 GB
    except Exception as error:  # torch.onnx.OnnxExporterError, or whatever torch.export raised inside it
        raise OnnxExportError(
            f"torch.onnx.export failed for {type(model).__name__}: {_summary(error)} (the chained exception has "
            "torch's full report)"
        ) from error
    return program


def _has_dynamic_batch(program: torch.onnx.ONNXProgram) -> bool:
    """Whether dimension 0 of the exported graph's input is symbolic."""
    graph_input = program.model.graph.inputs[0]
    return graph_input.shape is not None and len(graph_input.shape) > 0 and not isinstance(graph_input.shape[0], int)
