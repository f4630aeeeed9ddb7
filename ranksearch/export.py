"""Exporting a chosen config: rebuild it, check it against the study's record, optionally fine-tune it
longer, and save its config, compressed model and (optionally) ONNX graph. No Optuna here.

The qualities an export reports are those the study measured: ``accuracy`` with labels, ``fidelity`` (the
agreement with the dense model's outputs) when the study asked for it or its batches carry no labels. A
longer fine-tune keeps a checkpoint in the export folder after each epoch: the same export run again after an
interruption resumes it.

:meth:`ranksearch.RankSearch.export` picks the trial and calls :func:`export_config`;
``ranksearch export`` is a thin shell over that method.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from .adapters import batch_size, first_samples, to_device
from .calibration import model_digest
from .config import CompressionConfig
from .errors import RanksearchError
from .evaluator import Evaluation, Evaluator
from .finetune import finetune_epochs
from .saving import save

__all__ = ["ExportedModel", "export_config"]

QUALITIES = ("accuracy", "fidelity")


@dataclass
class ExportedModel:
    """What an export wrote, and the model it wrote (on the CPU, in eval mode)."""

    folder: Path
    config_path: Path
    model_path: Path
    model: nn.Module = field(repr=False)
    metadata: dict[str, object]
    """Provenance and measurements saved with the weights: study, trial, rule, the measured qualities
    (``accuracy`` with labels, ``fidelity`` where the study measured it) as recorded (``<quality>_recorded``)
    and as rebuilt, MACs and params (absolute and as fractions of dense); with a fine-tune its epochs, lr
    and the qualities before it (``<quality>_before``); ``data_aware`` when layers use data-aware methods
    (their names and the calibration data's batches, samples, digest and factory)."""
    onnx_path: Path | None = None
    onnx_max_abs_diff: float | None = None
    """Largest |onnxruntime - torch| output difference on one validation input (None: not checked)."""


def export_config(
    evaluator: Evaluator,
    config: CompressionConfig,
    folder: str | Path,
    *,
    recorded: Mapping[str, object] | None = None,
    train_loader: Iterable | None = None,
    epochs: int = 0,
    lr: float = 0.01,
    onnx: bool = False,
    builtin: Mapping[str, object] | None = None,
    metadata: Mapping[str, object] | None = None,
    log: Callable[[str], None] = print,
) -> ExportedModel:
    """Rebuild ``config`` on the evaluator's model and save it to ``folder`` (``config.json``, ``model.pt``,
    optionally ``model.onnx``).

    Args:
        evaluator: the study's evaluator (its model, factor cache, validation data and brief fine-tune).
        config: the config to export.
        folder: where to write (created).
        recorded: the study's row of this trial (``macs_count``, ``params_count``, ``accuracy`` and/or
            ``fidelity``): the rebuilt model must have exactly these MACs and params, or the model differs
            from the study's.
        train_loader: batches for the longer fine-tune (needed when ``epochs`` > 0).
        epochs: fine-tune the rebuilt model this many more epochs (cosine decay from ``lr``), with the
            evaluator's loss, batch adapter and, for batches without labels, distillation from its dense model.
        onnx: also write ``model.onnx`` and compare it with torch (needs ``ranksearch[onnx]``).
        builtin: ``{"name", "options"}`` of a built-in model, so the saved file loads without the base model.
        metadata: provenance to save with the weights (study, storage, trial, rule...).
        log: where progress lines go.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise RanksearchError(f"epochs must be an int >= 0, got {epochs!r}")
    if epochs and train_loader is None:
        raise RanksearchError("a fine-tune of more epochs needs a train_loader")
    model, facts = _rebuild(evaluator, config, recorded, metadata or {}, log)
    folder = _folder(folder)
    if epochs:
        _finetune(evaluator, model, train_loader, epochs, lr, facts, log, _checkpoint(folder, evaluator, config))
    config.save(folder / "config.json")
    model = model.cpu().eval()
    path = save(
        folder / "model.pt",
        model,
        config,
        evaluator.model,
        builtin=builtin,
        metadata=facts,
        cache=evaluator.cache,
        calibration=evaluator.calibration,
    )
    _discard_checkpoints(folder)  # the fine-tuned weights are in model.pt now
    log(f"config: {folder / 'config.json'}\nmodel: {path}")
    load_hint = "rs.load(path)" if builtin else "rs.load(path, base_model=YourModel())"
    log(f"  load it with: import ranksearch as rs; model = {load_hint}")
    exported = ExportedModel(folder, folder / "config.json", path, model, facts)
    if onnx:
        _export_onnx(evaluator, exported, log)
    return exported


def _finite(values: Mapping[str, object]) -> dict[str, float]:
    """The finite values among ``values`` (a quality not measured is None or NaN)."""
    return {name: float(v) for name, v in values.items() if v is not None and math.isfinite(float(v))}


def _qualities_text(values: Mapping[str, float], recorded: Mapping[str, float] | None = None) -> str:
    """``accuracy 0.9100 (recorded 0.9100), fidelity 0.9800 (recorded 0.9800)``."""
    parts = []
    for quality, value in values.items():
        note = f" (recorded {recorded[quality]:.4f})" if recorded is not None and quality in recorded else ""
        parts.append(f"{quality} {value:.4f}{note}")
    return ", ".join(parts) or "no quality measured"


def _rebuild(
    evaluator: Evaluator,
    config: CompressionConfig,
    recorded: Mapping[str, object] | None,
    metadata: Mapping[str, object],
    log: Callable[[str], None],
) -> tuple[nn.Module, dict[str, object]]:
    """The compressed, briefly fine-tuned model as the study measured it, and its facts."""
    trial = metadata.get("trial", "the config")
    result = evaluator.evaluate(config, keep_model=True, measure_latency=evaluator.latency is not None)
    if result.failure is not None:
        raise RanksearchError(f"trial {trial} could not be rebuilt: {result.failure}")
    facts = dict(metadata)
    was = None if recorded is None else _finite({q: recorded.get(q) for q in QUALITIES})
    if recorded is not None:
        if (result.macs, result.params) != (recorded["macs_count"], recorded["params_count"]):
            raise RanksearchError(
                f"trial {trial} recorded {recorded['macs_count']:,} MACs / {recorded['params_count']:,} params but "
                f"its config gives {result.macs:,} / {result.params:,} here: the model differs from the study's"
            )
        facts.update({f"{quality}_recorded": value for quality, value in was.items()})
    qualities = _finite({q: getattr(result, q) for q in QUALITIES})
    log(
        f"rebuilt trial {trial}: {result.macs:,} MACs ({result.macs_ratio:.1%} of dense), {result.params:,} "
        f"params ({result.params_ratio:.1%}); {_qualities_text(qualities, was)}"
    )
    facts.update(
        **qualities,
        macs=result.macs,
        params=result.params,
        macs_ratio=result.macs_ratio,
        params_ratio=result.params_ratio,
    )
    facts.update(_deployment_facts(evaluator, result, log))
    if result.data_aware_layers:
        facts["data_aware"] = _data_aware_facts(evaluator, result.data_aware_layers, log)
    return result.model, facts


def _deployment_facts(evaluator: Evaluator, result: Evaluation, log: Callable[[str], None]) -> dict[str, object]:
    """Latency (timed in the study's runtime, against the dense model timed next to it) and memory of the
    rebuilt model, when the study measures them."""
    facts: dict[str, object] = {}
    if result.latency_measured_seconds is not None:
        ratio = result.latency_measured_seconds / result.latency_reference_seconds
        facts["latency"] = {
            "measured_ms": result.latency_measured_seconds * 1e3,
            "dense_ms": result.latency_reference_seconds * 1e3,
            "measured_ratio": ratio,
            "predicted_ratio": result.latency_ratio,
            "runtime": evaluator.latency.settings.runtime,
            "context": evaluator.latency.context,
            "batch_size": evaluator.latency.settings.batch_size,
        }
        log(
            f"latency: {result.latency_measured_seconds * 1e3:.3f} ms against the dense model's "
            f"{result.latency_reference_seconds * 1e3:.3f} ms ({ratio:.1%}; predicted {result.latency_ratio:.1%}) "
            f"in {evaluator.latency.settings.runtime}, batch {evaluator.latency.settings.batch_size}"
        )
    if result.memory_bytes is not None:
        facts["memory"] = {
            "bytes": result.memory_bytes,
            "activations_bytes": result.memory_activations_bytes,
            "ratio": result.memory_ratio,
            **asdict(evaluator.memory.settings),
        }
        log(f"memory: {result.memory_bytes / 2**20:.2f} MiB, weights + peak activations ({result.memory_ratio:.1%})")
    return facts


def _data_aware_facts(evaluator: Evaluator, layers: list[str], log: Callable[[str], None]) -> dict[str, object]:
    """What the data-aware layers' factors depend on: the calibration data (kept in the saved metadata)."""
    calibration = evaluator.calibration
    facts = {
        "layers": list(layers),
        "calibration_batches": calibration.batches,
        "calibration_samples": calibration.samples,
        "calibration_digest": calibration.data_digest,
        "calibration_factory": evaluator.settings.calibration,
    }
    source = evaluator.settings.calibration or "the training loader"
    log(
        f"  {len(layers)} layer(s) data-aware: fitted to {calibration.batches} batches ({calibration.samples} samples) "
        f"of {source}, digest {calibration.data_digest[:12]}; the saved weights load without them, a rebuild "
        "from the config needs the same data"
    )
    return facts


def _finetune(
    evaluator: Evaluator,
    model: nn.Module,
    train_loader: Iterable,
    epochs: int,
    lr: float,
    facts: dict[str, object],
    log: Callable[[str], None],
    checkpoint: Path,
) -> None:
    """Fine-tune ``model`` in place as the study's brief fine-tune does (the evaluator's loss, batch adapter,
    gradient clipping and distillation from the dense model, the whole loss of batches without labels), then
    measure the qualities the rebuild measured. The state after each epoch is kept in ``checkpoint``, so the
    same export run again after an interruption resumes after its last finished epoch."""
    before = {quality: facts[quality] for quality in QUALITIES if quality in facts}
    if checkpoint.exists():
        log(f"resuming the fine-tune from {checkpoint}")
    finetune_epochs(
        model, train_loader, epochs=epochs, lr=lr, device=evaluator.settings.device, loss_fn=evaluator.loss_fn,
        adapter=evaluator.adapter, teacher=evaluator.model, fidelity=evaluator.fidelity_kind,
        temperature=evaluator.settings.distill_temperature, grad_clip=evaluator.settings.grad_clip,
        distill=evaluator.distill, log=log, checkpoint=checkpoint,
    )  # fmt: skip
    measure = {"accuracy": evaluator.measure, "fidelity": evaluator.measure_fidelity}
    dense = {"accuracy": evaluator.dense.accuracy, "fidelity": 1.0}
    changes = []
    for quality, value in before.items():
        facts[quality] = after = measure[quality](model)
        facts[f"{quality}_before"] = value
        changes.append(f"{quality} {value:.4f} -> {after:.4f} (dense {dense[quality]:.4f})")
    facts.update(finetune_epochs=epochs, finetune_lr=lr, finetune_grad_clip=evaluator.settings.grad_clip,
                 finetune_distill=evaluator.distill)  # fmt: skip
    log(f"fine-tuned {epochs} epochs: {', '.join(changes) or 'no quality measured'}")


def _checkpoint(folder: Path, evaluator: Evaluator, config: CompressionConfig) -> Path:
    """The longer fine-tune's checkpoint, named by what it belongs to: the dense model's weights and the config
    (:func:`~ranksearch.finetune.finetune_epochs` refuses one of other epochs or lr)."""
    text = f"{model_digest(evaluator.model)}|{config.to_json()}"
    return folder / f".finetune-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}.pt"


def _discard_checkpoints(folder: Path) -> None:
    for checkpoint in folder.glob(".finetune-*.pt"):
        checkpoint.unlink(missing_ok=True)


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RanksearchError(f"cannot create the export folder {str(folder)!r}: {error.strerror}") from None
    return folder


def _export_onnx(evaluator: Evaluator, exported: ExportedModel, log: Callable[[str], None]) -> None:
    from .onnx_export import export_onnx  # onnx and onnxruntime are an optional extra

    inputs = evaluator.val_batches[0][0]  # a tensor, or a tuple or dict of them (one validation sample kept)
    example = to_device(first_samples(inputs, 1, batch_size(inputs)), "cpu")
    onnx = export_onnx(exported.model, example, exported.folder / "model.onnx")
    exported.onnx_path, exported.onnx_max_abs_diff = onnx.path, onnx.max_abs_diff
    diff = onnx.max_abs_diff
    log(f"onnx: {onnx.path}" + (f" (max |onnxruntime - torch| = {diff:.2e})" if diff is not None else ""))
