"""From a study file to a running search: data, model (trained on first use), and the RankSearch.

The user code a study file names (``[model] factory``, ``[data] factory``, ``[evaluator] metric`` ...) is loaded
with the study file's folder importable, and resolved here once, before any trial: a missing module or function
fails at the start, naming the file, section and key, in the main process and in every worker (each worker
prepares the study from the same file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import DataSplits, load_dataset, loaders_from, make_loaders
from .errors import RanksearchError
from .models import build_model, load_weights, zoo_model
from .study import RankSearch
from .studyfile import USER_CODE_KEYS, StudyFile
from .training import load_or_train
from .usercode import call_user, importable, load_callable

__all__ = ["PreparedStudy", "StudyData", "builtin_spec", "load_data", "load_model", "prepare", "prepare_search"]


@dataclass
class PreparedStudy:
    """A study file made ready: the open search, its data loaders and the trained model."""

    search: RankSearch
    model: nn.Module
    train_loader: Iterable
    val_loader: Iterable
    builtin: dict[str, object] | None
    """``{"name", "options"}`` of a built-in model (None for any other): lets exports rebuild it."""


@dataclass
class StudyData:
    """The study's loaders, and the built-in dataset they batch (None for a ``[data] factory``'s own data)."""

    train_loader: Iterable
    val_loader: Iterable
    splits: DataSplits | None


def builtin_spec(study_file: StudyFile, splits: object) -> dict[str, object] | None:
    """The built-in model's name and full options (in/out sizes from the data), or None for any other model."""
    section = study_file.model
    if section.name is None:
        return None
    options = {"in_channels": splits.input_shape[0], "num_classes": splits.num_classes, **section.options}
    return {"name": section.name, "options": options}


def load_data(study_file: StudyFile) -> StudyData:
    """The loaders of ``[data]``: a built-in dataset, or what the user's ``factory`` returns.

    The factory is called with ``options`` as keyword arguments, under ``torch.manual_seed([study] seed)`` (so data
    it draws from torch's generator is the same in every worker); datasets it returns are batched with the
    section's batch sizes, the training set shuffled by the study's seed.
    """
    section, seed = study_file.data, study_file.study.seed
    if section.factory is None:
        try:
            splits = load_dataset(section.name, **section.options)
        except RanksearchError as error:
            raise RanksearchError(f"{study_file.path}: [data] {error}") from None
        loaders = make_loaders(
            splits, batch_size=section.batch_size, eval_batch_size=section.eval_batch_size, seed=seed
        )
        return StudyData(*loaders, splits)
    where = f"{study_file.path}: [data] factory"
    with importable(study_file.folder), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        factory = load_callable(section.factory, where, study_file.folder)
        data = call_user(factory, section.options, f"{where} {section.factory!r}")
    try:
        train_loader, val_loader = loaders_from(data, section.batch_size, section.eval_batch_size, seed)
    except RanksearchError as error:
        raise RanksearchError(f"{where} {section.factory!r} returned {error}") from None
    return StudyData(train_loader, val_loader, data if isinstance(data, DataSplits) else None)


def load_model(study_file: StudyFile, splits: DataSplits | None, log: Callable[[str], None] = print) -> nn.Module:
    """The study's dense model: a built-in one trained on first use, or the user's, used as it comes.

    ``splits`` (the built-in dataset) is what a built-in model is sized for and trained on; other models ignore it.
    """
    section = study_file.model
    if section.path is not None:
        return _saved_model(study_file)
    if section.name is None:
        return _user_model(study_file, log)
    if splits is None:
        raise RanksearchError(f"{study_file.path}: [model] name = {section.name!r} needs a built-in [data] name")
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


def _saved_model(study_file: StudyFile) -> nn.Module:
    """``[model] path``: a whole module saved with ``torch.save(model, path)`` (its classes importable)."""
    path = Path(study_file.model.path)
    if path.is_dir():
        raise RanksearchError(
            f"{study_file.path}: [model] path {str(path)!r} is a folder, not a saved model "
            "(give the file torch.save(model, path) wrote)"
        )
    if not path.is_file():
        raise RanksearchError(f"{study_file.path}: [model] path {str(path)!r} does not exist")
    try:  # a full pickled module: only load files you trust
        with importable(study_file.folder):  # its class may live beside the study file
            model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise RanksearchError(f"{study_file.path}: [model] path {str(path)!r} cannot be loaded: {error}") from None
    if not isinstance(model, nn.Module):
        raise RanksearchError(
            f"{study_file.path}: [model] path {str(path)!r} holds a {type(model).__name__}, not a torch.nn.Module "
            "(save the module itself with torch.save(model, path))"
        )
    return model.eval()


def _user_model(study_file: StudyFile, log: Callable[[str], None]) -> nn.Module:
    """``[model] factory``, ``torchvision``, ``timm`` or ``transformers`` (+ ``weights``), used as it comes.

    The model is built under ``torch.manual_seed([study] seed)``, so a randomly initialised one is the same in
    every worker (the study refuses a worker whose weights differ).
    """
    section = study_file.model
    source = section.source
    spec = getattr(section, source)
    where = f"{study_file.path}: [model] {source}"
    with importable(study_file.folder), torch.random.fork_rng(devices=[]):
        torch.manual_seed(study_file.study.seed)
        if source == "factory":
            model = call_user(load_callable(spec, where, study_file.folder), section.options, f"{where} {spec!r}")
        else:
            try:
                model = zoo_model(source, spec, section.options)
            except RanksearchError as error:
                raise RanksearchError(f"{where} {spec!r}: {error}") from None
    if not isinstance(model, nn.Module):
        raise RanksearchError(
            f"{where} {spec!r} returned an object of type {type(model).__name__}, not a torch.nn.Module"
        )
    if section.weights is not None:
        try:
            load_weights(model, section.weights)
        except RanksearchError as error:
            raise RanksearchError(f"{study_file.path}: [model] weights {error}") from None
    weights = f" with weights {section.weights}" if section.weights else ""
    log(
        f"dense model from [model] {source} = {spec!r}{weights}: used as it is ([training] trains built-in models only)"
    )
    return model.eval()


def _resolve_evaluator_code(study_file: StudyFile) -> None:
    """Import the user code ``[evaluator]`` names now (a missing one fails here, naming the key); the modules stay
    imported, so the evaluator finds them wherever it resolves the names."""
    for key in USER_CODE_KEYS:
        spec = getattr(study_file.evaluator, key, None)
        if spec is not None:
            where = "[calibration] factory" if key == "calibration" else f"[evaluator] {key}"
            load_callable(spec, f"{study_file.path}: {where}", study_file.folder)


def _heuristic_warm_starts(model: nn.Module, data: StudyData, study_file: StudyFile) -> list:
    budgets = study_file.study.warm_start_heuristics
    if not budgets:
        return []
    from .heuristics import heuristic_configs

    if data.splits is not None:
        input_shape = data.splits.input_shape
    else:  # the user's data: the shape of one validation batch's inputs
        batch = next(iter(data.val_loader), None)
        if not isinstance(batch, (tuple, list)) or not batch or not torch.is_tensor(batch[0]):
            raise RanksearchError(
                f"{study_file.path}: [study] warm_start_heuristics needs validation batches of (inputs, targets) "
                "tensors"
            )
        input_shape = tuple(batch[0].shape[1:])
    return [config for _, _, config in heuristic_configs(model, (1, *input_shape), budgets)]


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
    section = study_file.study
    with importable(study_file.folder):
        data = load_data(study_file)
        model = load_model(study_file, data.splits, log)
        _resolve_evaluator_code(study_file)
        search = RankSearch(
            model,
            data.train_loader,
            data.val_loader,
            objectives=section.objectives,
            storage=storage or study_file.storage,
            study_name=section.name,
            space=study_file.space,
            evaluator=study_file.evaluator,
            sampler=section.sampler,
            seed=section.seed if sampler_seed is None else sampler_seed,
            warm_start=section.warm_start,
            warm_start_configs=_heuristic_warm_starts(model, data, study_file),
            strategy=section.strategy,
            targets=section.targets,
            screen=section.screen,
            latency=study_file.latency,
            memory=study_file.memory,
            heartbeat=section.heartbeat,
        )
    return PreparedStudy(search, model, data.train_loader, data.val_loader, builtin_spec(study_file, data.splits))
