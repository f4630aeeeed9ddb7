"""calibrate(model, loader): the second moment of every compressible layer's inputs, for data-aware methods.

One no-grad pass over a few batches, with forward pre-hooks on the chosen layers. Nothing is kept of the
activations: each hook turns its input into the vectors the layer multiplies by its weight (a Linear's
rows; a convolution's im2col patches, computed in chunks of at most ``_CHUNK_ELEMENTS`` values, with the
layer's own padding mode, stride and dilation) and adds ``x^T x`` to a float64 accumulator per layer
(per group for a grouped conv). Memory is therefore ``8 * groups * d^2`` bytes per layer, independent of
the number of samples; when all layers together exceed ``max_bytes`` they are gathered in several passes
over the same (kept) calibration batches, a group of layers per pass. Layers called one after the other
on the same input tensor (an attention's q/k/v) compute ``x^T x`` once.

Padding is left out: when a batch's inputs are a dict with a 2-D ``attention_mask`` (Hugging Face), the
rows of a Linear's ``(batch, tokens, d)`` input where the mask is 0 are not counted.

Attention projections of an ``nn.MultiheadAttention`` are hooked on the model's searchable view
(:func:`~ranksearch.attention.searchable_view`: unpacked, sharing the weights), where they are called.

:class:`Calibration` maps layer names to :class:`~ranksearch.decompositions.InputStatistics`; it saves to
and loads from one file, so worker processes and later runs reuse it (the study keeps it next to its
storage, keyed by a digest of the model's weights and the calibration inputs).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from math import prod
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._fixed_data import take_batches
from .adapters import BatchAdapter, batch_size, call_model, leaf_tensors
from .attention import searchable_view
from .decompositions import InputStatistics, is_linear_like
from .decompositions._modules import linear_dims
from .errors import RanksearchError
from .layers import compressible_layers

__all__ = ["Calibration", "calibrate", "calibrate_batches", "input_vectors", "model_digest"]

_CHUNK_ELEMENTS = 1 << 23
"""Largest im2col block formed at once (8 Mi values, 32 MiB in float32)."""

DEFAULT_MAX_BYTES = 2 << 30
"""Default cap on the accumulators of one pass (2 GiB of float64 second moments)."""

_FORMAT = 1


class Calibration(Mapping[str, InputStatistics]):
    """Per-layer input statistics, by the layer names of :func:`~ranksearch.compressible_layers`.

    Attributes:
        batches: calibration batches seen; samples: inputs (batch rows) seen.
        data_digest: digest of the model's weights and the calibration inputs (what the statistics depend on).
        seconds: time :func:`calibrate` took (passes included).
        passes: forward passes over the batches (more than one when ``max_bytes`` split the layers).
    """

    def __init__(
        self,
        statistics: Mapping[str, InputStatistics],
        *,
        batches: int,
        samples: int,
        data_digest: str,
        seconds: float = 0.0,
        passes: int = 1,
    ) -> None:
        self._statistics = dict(statistics)
        self.batches, self.samples, self.data_digest = batches, samples, data_digest
        self.seconds, self.passes = seconds, passes

    def __getitem__(self, name: str) -> InputStatistics:
        try:
            return self._statistics[name]
        except KeyError:
            raise KeyError(
                f"no calibration statistics for layer {name!r} (calibrated: {len(self._statistics)} layers; "
                "was it calibrated on another model, or with layers= leaving it out?)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._statistics)

    def __len__(self) -> int:
        return len(self._statistics)

    def __repr__(self) -> str:
        return (
            f"Calibration({len(self)} layers, {self.batches} batches, {self.samples} samples, "
            f"digest={self.data_digest[:12]})"
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the second moments."""
        return sum(s.second_moment.numel() * 8 for s in self._statistics.values())

    def save(self, path: str | Path) -> Path:
        """Write the statistics to ``path`` (a torch file); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "batches": self.batches,
            "samples": self.samples,
            "data_digest": self.data_digest,
            "seconds": self.seconds,
            "passes": self.passes,
            "layers": {n: {"second_moment": s.second_moment, "samples": s.samples} for n, s in self.items()},
        }
        temporary = path.with_name(path.name + ".tmp")
        torch.save(payload, temporary)
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read statistics written by :meth:`save`."""
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RanksearchError(f"no calibration file at {path}") from None
        except Exception as error:  # torch raises several kinds for a file that is not its own
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RanksearchError(f"{path} is not a ranksearch calibration file ({first})") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise RanksearchError(f"{path} is not a ranksearch calibration file (format {_FORMAT})")
        statistics = {
            name: InputStatistics(entry["second_moment"], int(entry["samples"]))
            for name, entry in payload["layers"].items()
        }
        return cls(
            statistics,
            batches=payload["batches"],
            samples=payload["samples"],
            data_digest=payload["data_digest"],
            seconds=payload["seconds"],
            passes=payload["passes"],
        )


def model_digest(model: nn.Module) -> str:
    """BLAKE2b digest of every parameter and buffer (names, shapes, dtypes, bytes) of ``model``."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        _update(h, name, tensor)
    return h.hexdigest()


def _update(h: hashlib.blake2b, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach().contiguous().cpu()
    h.update(f"{name}|{tuple(data.shape)}|{data.dtype}".encode())
    h.update(data.reshape(-1).view(torch.uint8).numpy())


def _geometry(module: nn.Module) -> tuple[int, int]:
    """``(groups, d)``: the vectors a layer multiplies by its weight, per group."""
    if is_linear_like(module):
        return 1, linear_dims(module)[1]
    return module.groups, module.weight[0].numel()


def _paddings(conv: nn.Module) -> list[tuple[int, int]]:
    """Per spatial axis, (before, after) padding, with torch's split of ``'same'``."""
    pads = []
    for axis, (k, d) in enumerate(zip(conv.kernel_size, conv.dilation, strict=True)):
        if conv.padding == "same":
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        elif conv.padding == "valid":
            pads.append((0, 0))
        else:
            pads.append((conv.padding[axis], conv.padding[axis]))
    return pads


def input_vectors(module: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The vectors ``module`` multiplies its weight by, as ``(rows, groups, d)`` blocks (float32 or wider).

    A Linear (or Hugging Face Conv1D): the input's last axis. A Conv1d/Conv2d: im2col patches, columns in the
    order of ``weight.reshape(O, -1)`` (per group), with the layer's padding mode, stride and dilation; the
    batch is cut into chunks so that no block holds more than ``_CHUNK_ELEMENTS`` values.
    """
    groups, dim = _geometry(module)
    x = x.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if is_linear_like(module):
        yield x.reshape(-1, 1, dim)
        return
    nd = len(module.kernel_size)
    if x.dim() == nd + 1:  # unbatched
        x = x.unsqueeze(0)
    pads = _paddings(module)
    kernel, stride, dilation = tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)
    if nd == 1:  # as a Conv2d of height 1
        x, pads = x.unsqueeze(2), [(0, 0), *pads]
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    flat_pad = [p for before_after in reversed(pads) for p in before_after]  # F.pad order: last axis first
    per_sample = (
        dim * groups * prod(_out_size(x.shape[2 + a], pads[a], kernel[a], stride[a], dilation[a]) for a in range(2))
    )
    step = max(1, _CHUNK_ELEMENTS // max(1, per_sample))
    for start in range(0, x.shape[0], step):
        chunk = x[start : start + step]
        if any(flat_pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            chunk = F.pad(chunk, flat_pad, mode=mode)
        columns = F.unfold(chunk, kernel, dilation=dilation, stride=stride)  # (n, C*prod(k), L)
        yield columns.transpose(1, 2).reshape(-1, groups, dim)


def _out_size(size: int, pad: tuple[int, int], kernel: int, stride: int, dilation: int) -> int:
    return max(1, (size + sum(pad) - dilation * (kernel - 1) - 1) // stride + 1)


def calibrate(
    model: nn.Module,
    loader: Iterable,
    *,
    layers: Sequence[str] | None = None,
    batches: int = 8,
    adapter: BatchAdapter | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool = False,
) -> Calibration:
    """Gather the input second moment of ``layers`` (default: every compressible layer) over ``batches``.

    Args:
        model: the dense model (left untouched; run in eval mode under no_grad).
        loader: yields batches the ``adapter`` understands (labels are not needed); the first ``batches``
            are drawn with ``seed`` (as the evaluator draws its fixed batches) and kept for the passes.
        layers: layer names, as :func:`~ranksearch.compressible_layers` lists them.
        device: where the forward passes run (default: the model's device).
        max_bytes: cap on the float64 accumulators of one pass; more layers mean more passes.
        progress: print one line per pass.

    A layer the forward pass never calls gets no statistics (a :class:`RanksearchError` lists them).
    """
    if not isinstance(batches, int) or isinstance(batches, bool) or batches < 1:
        raise RanksearchError(f"calibration batches must be a positive int, got {batches!r}")
    start = time.perf_counter()
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    kept = take_batches(loader, batches, torch.device(device), "calibration", seed, adapter)
    return calibrate_batches(model, kept, layers=layers, max_bytes=max_bytes, progress=progress, start=start)


def calibrate_batches(
    model: nn.Module,
    batches: Sequence[tuple[object, object]],
    *,
    layers: Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool = False,
    start: float | None = None,
) -> Calibration:
    """:func:`calibrate` on batches already split into ``(inputs, targets)`` and on the model's device (the
    evaluator's fixed training batches); ``start`` is when the timing began (default: now)."""
    start = time.perf_counter() if start is None else start
    kept = list(batches)
    view = searchable_view(model)
    names = list(compressible_layers(model)) if layers is None else list(layers)
    modules = {}
    for name in names:
        try:
            modules[name] = view.get_submodule(name)
        except AttributeError:
            raise RanksearchError(f"calibration: the model has no layer {name!r}") from None
    data = hashlib.blake2b(model_digest(model).encode(), digest_size=16)
    for index, (inputs, _) in enumerate(kept):
        for leaf in leaf_tensors(inputs):
            _update(data, str(index), leaf)
    samples = sum(batch_size(inputs) for inputs, _ in kept)
    passes = _passes(modules, max_bytes)
    statistics: dict[str, InputStatistics] = {}
    was_training = view.training
    view.eval()
    try:
        for number, group in enumerate(passes, 1):
            statistics.update(_one_pass(view, group, kept))
            if progress:
                print(f"calibration pass {number}/{len(passes)}: {len(group)} layers, {len(kept)} batches")
    finally:
        view.train(was_training)
    missing = [n for n in names if n not in statistics]
    if missing:
        raise RanksearchError(
            f"calibration: {len(missing)} layer(s) never ran in the forward pass: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
        )
    return Calibration(
        statistics,
        batches=len(kept),
        samples=samples,
        data_digest=data.hexdigest(),
        seconds=time.perf_counter() - start,
        passes=len(passes),
    )


def _passes(modules: Mapping[str, nn.Module], max_bytes: int) -> list[dict[str, nn.Module]]:
    """The layers split into groups whose accumulators fit ``max_bytes`` (a larger layer goes alone)."""
    passes: list[dict[str, nn.Module]] = [{}]
    used = 0
    for name, module in modules.items():
        groups, dim = _geometry(module)
        size = 8 * groups * dim * dim
        if passes[-1] and used + size > max_bytes:
            passes.append({})
            used = 0
        passes[-1][name] = module
        used += size
    return passes


def _one_pass(view: nn.Module, modules: Mapping[str, nn.Module], kept: Sequence) -> dict[str, InputStatistics]:
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    last: list = [None, None, None]  # the previous hook's input tensor, layer geometry and result
    mask: list = [None]  # the batch's attention mask (bool, (batch, tokens)), if any
    names_of: dict[int, list[str]] = {}
    for name, module in modules.items():
        names_of.setdefault(id(module), []).append(name)

    def hook(module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        groups, dim = _geometry(module)
        if mask[0] is not None and is_linear_like(module) and x.dim() == 3 and x.shape[:2] == mask[0].shape:
            x = x[mask[0]]  # the real tokens' rows only
        geometry = (
            "linear"
            if is_linear_like(module)
            else (module.kernel_size, module.stride, module.padding, module.dilation, module.padding_mode, groups)
        )
        key = (args[0]._version, dim, geometry)
        if not (last[0] is args[0] and last[1] == key):  # identity, not address: freed memory is reused
            total = torch.zeros(groups, dim, dim, dtype=torch.float64)
            rows = 0
            for block in input_vectors(module, x):  # (rows, g, d)
                product = (
                    torch.einsum("ngi,ngj->gij", block, block) if groups > 1 else (block[:, 0].T @ block[:, 0])[None]
                )
                total += product.double().cpu()
                rows += block.shape[0]
            last[:] = [args[0], key, (total, rows)]
        total, rows = last[2]
        for name in names_of[id(module)]:
            if name in sums:
                sums[name] += total
            else:
                sums[name] = total.clone()
            counts[name] = counts.get(name, 0) + rows

    handles = [m.register_forward_pre_hook(hook) for m in {id(m): m for m in modules.values()}.values()]
    try:
        with torch.no_grad():
            for inputs, _ in kept:
                mask[0] = _attention_mask(inputs)
                call_model(view, inputs)
                last[:] = [None, None, None]
    finally:
        for handle in handles:
            handle.remove()
    return {name: InputStatistics(sums[name] / max(1, counts[name]), counts[name]) for name in sums}


def _attention_mask(inputs: object) -> torch.Tensor | None:
    """A dict batch's 2-D ``attention_mask`` as booleans (True: a real token), else None."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    return mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
