"""From a study file to a running search: data, model (trained on first use), and the RankSearch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import load_dataset, make_loaders
from .errors import RanksearchError
from .models import build_model
from .study import RankSearch
from .studyfile import StudyFile
from .training import load_or_train

__all__ = ["PreparedStudy", "builtin_spec", "load_model", "prepare", "prepare_search"]


@dataclass
class PreparedStudy:
    """A study file made ready: the open search, its data loaders and the trained model."""

    search: RankSearch
    model: nn.Module
    train_loader: Iterable
    val_loader: Iterable
    builtin: dict[str, object] | None
    """``{"name", "options"}`` of a built-in model (None for a ``[model] path``): lets exports rebuild it."""


def builtin_spec(study_file: StudyFile, splits: object) -> dict[str, object] | None:
    """The built-in model's name and full options (in/out sizes from the data), or None for a saved module."""
    section = study_file.model
    if section.path is not None:
        return None
    options = {"in_channels": splits.input_shape[0], "num_classes": splits.num_classes, **section.options}
    return {"name": section.name, "options": options}


def load_model(study_file: StudyFile, splits: object, log: Callable[[str], None] = print) -> nn.Module:
    """The study's trained model: a saved module from ``[model] path``, or a built-in one trained on first use."""
    section = study_file.model
    if section.path is not None:
        path = Path(section.path)
        if path.is_dir():
            raise RanksearchError(
                f"{study_file.path}: [model] path {str(path)!r} is a folder, not a saved model "
                "(give the file torch.save(model, path) wrote)"
            )
        if not path.is_file():
            raise RanksearchError(f"{study_file.path}: [model] path {str(path)!r} does not exist")
        try:  # a full pickled module: only load files you trust
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise RanksearchError(f"{study_file.path}: [model] path {str(path)!r} cannot be loaded: {error}") from None
        if not isinstance(model, nn.Module):
            raise RanksearchError(
                f"{study_file.path}: [model] path {str(path)!r} holds a {type(model).__name__}, not a torch.nn.Module "
                "(save the module itself with torch.save(model, path))"
            )
        return model.eval()
    options = builtin_spec(study_file, splits)["options"]
    try:
        with torch.random.fork_rng(devices=[]):  # the baseline's seed also fixes its initial weights
            torch.manual_seed(study_file.training.train.seed)
            model = build_model(section.name, **options)
    except TypeError as error:
        raise RanksearchError(f"{study_file.path}: [model] options {section.options} do not fit: {error}") from None
    identity = {
        "model": section.name,
        "model_options": options,
        "data": study_file.data.name,
        "data_options": study_file.data.options,
    }
    _, val_loader = make_loaders(splits, batch_size=study_file.data.eval_batch_size)
    model, accuracy, path = load_or_train(
        model,
        identity,
        splits.train,
        val_loader,
        study_file.training.train,
        study_file.training.cache_dir,
        device=study_file.evaluator.device,
        log=log,
    )
    log(f"dense model {section.name}: accuracy {accuracy:.4f} on {study_file.data.name} ({path})")
    return model


def _heuristic_warm_starts(model: nn.Module, splits: object, budgets: tuple[float, ...]) -> list:
    if not budgets:
        return []
    from .heuristics import heuristic_configs

    return [config for _, _, config in heuristic_configs(model, (1, *splits.input_shape), budgets)]


def prepare_search(
    study_file: StudyFile,
    *,
    storage: str | None = None,
    sampler_seed: int | None = None,
    log: Callable[[str], None] = print,
) -> RankSearch:
    """Load data and model and open (or resume) the study the file describes.

    ``sampler_seed`` replaces the file's seed for the sampler only (each parallel worker has its own);
    the data order, and with it every trial's fine-tune, stays the file's.
    """
    return prepare(study_file, storage=storage, sampler_seed=sampler_seed, log=log).search


def prepare(
    study_file: StudyFile,
    *,
    storage: str | None = None,
    sampler_seed: int | None = None,
    log: Callable[[str], None] = print,
) -> PreparedStudy:
    """:func:`prepare_search`, also returning the loaders and model (for exports and longer fine-tunes)."""
    if study_file.evaluator.threads is not None:  # before the baseline trains
        torch.set_num_threads(study_file.evaluator.threads)
    try:
        splits = load_dataset(study_file.data.name, **study_file.data.options)
    except RanksearchError as error:
        raise RanksearchError(f"{study_file.path}: [data] {error}") from None
    train_loader, val_loader = make_loaders(
        splits,
        batch_size=study_file.data.batch_size,
        eval_batch_size=study_file.data.eval_batch_size,
        seed=study_file.study.seed,
    )
    model = load_model(study_file, splits, log)
    section = study_file.study
    search = RankSearch(
        model,
        train_loader,
        val_loader,
        objectives=section.objectives,
        storage=storage or study_file.storage,
        study_name=section.name,
        space=study_file.space,
        evaluator=study_file.evaluator,
        sampler=section.sampler,
        seed=section.seed if sampler_seed is None else sampler_seed,
        warm_start=section.warm_start,
        warm_start_configs=_heuristic_warm_starts(model, splits, section.warm_start_heuristics),
        strategy=section.strategy,
        targets=section.targets,
        screen=section.screen,
        latency=study_file.latency,
        heartbeat=section.heartbeat,
    )
    return PreparedStudy(search, model, train_loader, val_loader, builtin_spec(study_file, splits))
