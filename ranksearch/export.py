"""Exporting a chosen config: rebuild it, check it against the study's record, optionally fine-tune it
longer, and save its config, compressed model and (optionally) ONNX graph. No Optuna here.

:meth:`ranksearch.RankSearch.export` picks the trial and calls :func:`export_config`;
``ranksearch export`` is a thin shell over that method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .config import CompressionConfig
from .errors import RanksearchError
from .evaluator import Evaluator
from .finetune import finetune_epochs
from .saving import save

__all__ = ["ExportedModel", "export_config"]


@dataclass
class ExportedModel:
    """What an export wrote, and the model it wrote (on the CPU, in eval mode)."""

    folder: Path
    config_path: Path
    model_path: Path
    model: nn.Module = field(repr=False)
    metadata: dict[str, object]
    """Provenance and measurements saved with the weights: study, trial, rule, recorded and final accuracy,
    MACs and params (absolute and as fractions of dense); with a fine-tune its epochs, lr and the
    accuracy before it."""
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
        recorded: the study's row of this trial (``macs_count``, ``params_count``, ``accuracy``): the
            rebuilt model must have exactly these MACs and params, or the model differs from the study's.
        train_loader: batches for the longer fine-tune (needed when ``epochs`` > 0).
        epochs: fine-tune the rebuilt model this many more epochs (cosine decay from ``lr``).
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
    if epochs:
        _finetune(evaluator, model, train_loader, epochs, lr, facts, log)
    folder = _folder(folder)
    config.save(folder / "config.json")
    model = model.cpu().eval()
    path = save(
        folder / "model.pt", model, config, evaluator.model, builtin=builtin, metadata=facts, cache=evaluator.cache
    )
    log(f"config: {folder / 'config.json'}\nmodel: {path}")
    load_hint = "rs.load(path)" if builtin else "rs.load(path, base_model=YourModel())"
    log(f"  load it with: import ranksearch as rs; model = {load_hint}")
    exported = ExportedModel(folder, folder / "config.json", path, model, facts)
    if onnx:
        _export_onnx(evaluator, exported, log)
    return exported


def _rebuild(
    evaluator: Evaluator,
    config: CompressionConfig,
    recorded: Mapping[str, object] | None,
    metadata: Mapping[str, object],
    log: Callable[[str], None],
) -> tuple[nn.Module, dict[str, object]]:
    """The compressed, briefly fine-tuned model as the study measured it, and its facts."""
    trial = metadata.get("trial", "the config")
    result = evaluator.evaluate(config, keep_model=True)
    if result.failure is not None:
        raise RanksearchError(f"trial {trial} could not be rebuilt: {result.failure}")
    facts = dict(metadata)
    if recorded is not None:
        if (result.macs, result.params) != (recorded["macs_count"], recorded["params_count"]):
            raise RanksearchError(
                f"trial {trial} recorded {recorded['macs_count']:,} MACs / {recorded['params_count']:,} params but "
                f"its config gives {result.macs:,} / {result.params:,} here: the model differs from the study's"
            )
        facts["accuracy_recorded"] = float(recorded["accuracy"])
    log(
        f"rebuilt trial {trial}: {result.macs:,} MACs ({result.macs_ratio:.1%} of dense), {result.params:,} "
        f"params ({result.params_ratio:.1%}); accuracy {result.accuracy:.4f}"
        + ("" if recorded is None else f" (recorded {float(recorded['accuracy']):.4f})")
    )
    facts.update(
        accuracy=result.accuracy,
        macs=result.macs,
        params=result.params,
        macs_ratio=result.macs_ratio,
        params_ratio=result.params_ratio,
    )
    return result.model, facts


def _finetune(
    evaluator: Evaluator,
    model: nn.Module,
    train_loader: Iterable,
    epochs: int,
    lr: float,
    facts: dict[str, object],
    log: Callable[[str], None],
) -> None:
    before = facts["accuracy"]
    finetune_epochs(model, train_loader, epochs=epochs, lr=lr, device=evaluator.settings.device)
    after = evaluator.measure(model)
    facts.update(finetune_epochs=epochs, finetune_lr=lr, accuracy=after, accuracy_before=before)
    log(f"fine-tuned {epochs} epochs: accuracy {before:.4f} -> {after:.4f} (dense {evaluator.dense.accuracy:.4f})")


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RanksearchError(f"cannot create the export folder {str(folder)!r}: {error.strerror}") from None
    return folder


def _export_onnx(evaluator: Evaluator, exported: ExportedModel, log: Callable[[str], None]) -> None:
    from .onnx_export import export_onnx  # onnx and onnxruntime are an optional extra

    example = evaluator.val_batches[0][0][:1].cpu()
    onnx = export_onnx(exported.model, example, exported.folder / "model.onnx")
    exported.onnx_path, exported.onnx_max_abs_diff = onnx.path, onnx.max_abs_diff
    diff = onnx.max_abs_diff
    log(f"onnx: {onnx.path}" + (f" (max |onnxruntime - torch| = {diff:.2e})" if diff is not None else ""))
