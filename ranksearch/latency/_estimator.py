"""Predicting a compressed model's latency from per-layer measurements.

predicted = dense model latency - sum(dense latency of each replaced layer) + sum(its factorized latency)

Every term comes from the :class:`LatencyTable` (measured on first use): the dense model once per
(model structure, input shape), each layer once per (geometry, input shape) dense and once per
(method, rank). Layers with the same geometry and input share entries, within a model and across
studies. The whole compressed model can also be timed, to check the prediction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

from ..adapters import describe, repeat_first
from ..config import ResolvedLayer
from ..decompositions import is_hf_conv1d
from ..tracing import InputShape, is_shape, trace_calls
from ._measure import LatencySettings, _threads, device_name, measure_paired, measure_seconds
from ._table import LatencyTable

__all__ = ["LatencyEstimator", "layer_inputs", "structure_digest"]


def structure_digest(model: nn.Module) -> str:
    """A digest of a model's structure (module types and settings, parameter and buffer shapes), not its values."""
    parts = [f"{name}:{type(module).__name__}({module.extra_repr()})" for name, module in model.named_modules()]
    parts += [f"{name}:{tuple(t.shape)}" for name, t in model.state_dict().items()]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=10).hexdigest()


def layer_inputs(model: nn.Module, input_shape: InputShape) -> dict[str, tuple[int, ...]]:
    """Input shape of every Conv1d/Conv2d, Linear and Hugging Face ``Conv1D`` in one forward pass of ``model`` on
    ``input_shape`` (first call).

    The pass is :func:`~ranksearch.tracing.trace_calls`'s (zeros, eval mode; a RanksearchError if it fails);
    ``input_shape`` may be an example input there.
    """
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) or is_hf_conv1d(module)
    ]
    shapes: dict[str, tuple[int, ...]] = {}
    for call in trace_calls(model, input_shape, names):
        shapes.setdefault(call.name, call.input_shape)
    return shapes


def _geometry(module: nn.Module) -> str:
    """What a latency table entry of ``module`` depends on besides its input shape (Conv2d keys as before)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return (
            f"conv{module.weight.dim() - 2}d({module.in_channels}->{module.out_channels} k{module.kernel_size} "
            f"s{module.stride} p{module.padding} d{module.dilation} g{module.groups} {module.padding_mode} "
            f"bias={module.bias is not None})"
        )
    if is_hf_conv1d(module):
        in_features, out_features = module.weight.shape
        return f"linear({in_features}->{out_features} bias={module.bias is not None} hf-conv1d)"
    return f"linear({module.in_features}->{module.out_features} bias={module.bias is not None})"


class LatencyEstimator:
    """Measured-latency objective of one model: predicts compressed models from the latency table.

    Args:
        model: the dense model (its structure is timed, on the settings' device and dtype).
        sample_shape: one input sample's shape, e.g. ``(3, 32, 32)``; the batch is ``settings.batch_size``.
            For a model not called with one tensor, an example input instead (a tuple or dict of tensors,
            batch first, e.g. a Hugging Face batch's ``input_ids`` and ``attention_mask``): its first
            sample, repeated to ``settings.batch_size``, is what the model is timed on.
        settings: how to time.
        table: where layer latencies are kept (an in-memory table by default).

    ``input_shape`` is the timed input's shape (batch included), or the timed example input.
    """

    def __init__(
        self,
        model: nn.Module,
        sample_shape: InputShape,
        settings: LatencySettings | None = None,
        table: LatencyTable | None = None,
    ) -> None:
        self.settings = settings or LatencySettings()
        self.table = table if table is not None else LatencyTable()
        if is_shape(sample_shape):
            self.input_shape: InputShape = (self.settings.batch_size, *sample_shape)
            described = self.input_shape
        else:
            self.input_shape = repeat_first(sample_shape, self.settings.batch_size)
            described = describe(self.input_shape)
        with _threads(self.settings.threads):
            hardware = device_name(self.settings.device)
        runtime = "" if self.settings.runtime == "torch" else f" | {_runtime_version(self.settings.runtime)}"
        runtime += " | channels-last" if self.settings.channels_last else ""
        self.context = f"{hardware} | {self.settings.dtype} | torch {torch.__version__}{runtime}"
        """Where the table's timings hold: hardware, dtype, torch (and the runtime when it is not eager torch)."""
        self.layer_inputs = layer_inputs(model, self.input_shape)
        self.model = model
        key = f"model {structure_digest(model)} @ {described}"
        self.dense_seconds = self._lookup(key, model, self.input_shape)
        self.table.save()

    def _lookup(self, key: str, module: nn.Module, input_shape: InputShape) -> float:
        return self.table.get_or_measure(self.context, key, lambda: measure_seconds(module, input_shape, self.settings))

    def layer_key(self, name: str, module: nn.Module) -> str:
        """The table key of a dense layer: geometry and input shape (the method and rank are appended)."""
        return f"{_geometry(module)} @ {self.layer_inputs[name]}"

    def predict(self, resolved: Sequence[ResolvedLayer], compressed: nn.Module) -> float:
        """Predicted seconds of ``compressed`` (``apply_resolved(model, resolved)``), measuring unknown layers."""
        total = self.dense_seconds
        for layer in resolved:
            if layer.name not in self.layer_inputs:  # never runs in a forward pass (an unused head): costs nothing
                continue
            base, shape = self.layer_key(layer.name, layer.module), self.layer_inputs[layer.name]
            rank = "x".join(map(str, layer.rank)) if isinstance(layer.rank, tuple) else str(layer.rank)
            dense = self._lookup(f"{base} | dense", layer.module, shape)
            factorized = self._lookup(
                f"{base} | {layer.method.plain or layer.method.name}:{rank}",
                compressed.get_submodule(layer.name),
                shape,
            )
            total += factorized - dense
        self.table.save()
        return total

    def measure_model(self, model: nn.Module) -> float:
        """Measured seconds of a whole model (not stored: it checks the prediction)."""
        return measure_seconds(model, self.input_shape, self.settings)

    def measure_against_dense(self, model: nn.Module) -> tuple[float, float]:
        """Measured seconds of a whole model and of the dense model, timed interleaved (not stored).

        Timings taken minutes apart drift with the machine (by 30% on a busy 2-core CPU at batch 1), so a
        prediction is checked as a ratio: ``predict(...) / dense_seconds`` against ``seconds / reference``.
        """
        seconds, reference = measure_paired([model, self.model], self.input_shape, self.settings)
        return seconds, reference


def _runtime_version(runtime: str) -> str:
    """``onnxruntime 1.20.1``, ``torch.compile``: the runtime part of a latency context."""
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return runtime
