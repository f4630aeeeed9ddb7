"""Study files: a TOML description of a whole rank search, validated key by key.

```toml
[study]            # name, storage, objectives, n_trials, timeout, sampler, seed, strategy, targets, screen,
                   # warm_start, warm_start_heuristics
[model]            # name (built-in) | path (a torch.save'd nn.Module) | factory ("module:function") | torchvision |
                   # timm | transformers, + options (keyword arguments), weights (a state dict file)
[data]             # name (built-in dataset) | factory ("module:function"), + options, batch_size, eval_batch_size
[training]         # training of a built-in model on first use: epochs, lr, batch_size, weight_decay, seed, augment,
                   # cache_dir
[space]            # SearchSpace: methods, grid, cost_fractions, rank_fractions, rank_multiple, include, exclude, ...
[evaluator]        # EvaluatorSettings: finetune_steps, lr, ..., eval_batches, bn_batches, distill, ...
[latency]          # LatencySettings: device, dtype, batch_size, threads, warmup, repeats, check_every, table
[memory]           # MemorySettings: device, dtype, batch_size, cpu_method (default: [latency]'s deployment)
```

Each section maps onto one frozen dataclass (the search space and evaluator sections onto the very
classes the Python API takes), so a key means the same thing in both places. Unknown keys, wrong types
and bad values are errors that name the file, the section and the key. Relative paths (``[model] path``,
``weights``, ``transformers``, storage, caches, data roots) are relative to the working directory; user code
(``"module:function"``) is imported with the study file's folder importable (:mod:`ranksearch.usercode`).

Renamed keys still work, with a ``FutureWarning`` that names the new one: ``[baseline]`` is now
``[training]`` (it trains the dense model), ``[study] warm_start_baselines`` is now
``warm_start_heuristics`` (the rank heuristics of :mod:`ranksearch.heuristics`).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._calibration_section import calibration_section
from ._tables import build_section
from .errors import RanksearchError
from .objectives import (
    DEFAULT_OBJECTIVES,
    DEFAULT_SAMPLER,
    DEFAULT_SCREEN,
    DEFAULT_STRATEGY,
    HEARTBEAT_SECONDS,
    WARM_START_FRACTIONS,
    check_objectives,
    check_sampler,
    check_strategy,
    check_targets,
    default_storage,
)
from .usercode import check_spec

if TYPE_CHECKING:  # imported where a whole file is read: reading [study] alone needs no torch
    from .evaluator import EvaluatorSettings
    from .latency import LatencySettings
    from .memory import MemorySettings
    from .space import SearchSpace
    from .training import TrainSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "MODEL_SOURCES",
    "USER_CODE_KEYS",
    "DataSection",
    "ModelSection",
    "StudyFile",
    "StudySection",
    "TrainingSection",
    "load_study_file",
    "load_study_section",
]


@dataclass(frozen=True)
class StudySection:
    """``[study]``: identity, storage, objectives and budget.

    Attributes:
        name: the study's name in the storage (default: the file's stem).
        storage: Optuna storage URL (default: ``sqlite:///runs/<name>.db``).
        objectives: two or more of accuracy, macs, params.
        n_trials: the total trial budget; re-running continues until it is reached.
        timeout: stop starting new trials after this many seconds (per run).
        sampler: tpe, nsga2, nsga3, gp or random.
        seed: sampler seed.
        warm_start: kept-rank fractions of the uniform configs tried first (after the dense model).
        warm_start_heuristics: MACs budgets (fractions of dense) at which the rank heuristics' configs are tried
            first too (uniform and error-balanced SVD/Tucker-2, and VBMF Tucker-2; see
            :func:`ranksearch.heuristics.heuristic_configs`); empty: none. Formerly ``warm_start_baselines``.
        heartbeat: seconds between a running trial's "alive" marks; a trial of a killed worker is marked
            failed after twice that.
        strategy: ``allocate`` (sensitivity curves + knob search, the default) or ``per-layer``.
        targets: budgets to aim at, e.g. ``{ macs = [0.1, 0.25, 0.5] }`` (fractions of dense; macs, params,
            latency); the report shows the best trial per target.
        screen: candidates the proxy scores per ``allocate`` trial, at most (1: no screening; fewer where proxies
            are not cheap against a full evaluation).
    """

    name: str = ""
    storage: str | None = None
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    n_trials: int = 50
    timeout: float | None = None
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    warm_start: tuple[float, ...] = WARM_START_FRACTIONS
    warm_start_heuristics: tuple[float, ...] = ()
    heartbeat: int = HEARTBEAT_SECONDS
    strategy: str = DEFAULT_STRATEGY
    targets: dict[str, object] = field(default_factory=dict)
    screen: int = DEFAULT_SCREEN

    @property
    def storage_url(self) -> str:
        """``storage``, defaulting to ``sqlite:///runs/<name>.db``."""
        return self.storage or default_storage(self.name)


MODEL_SOURCES = ("name", "path", "factory", "torchvision", "timm", "transformers")
"""The ``[model]`` keys that say where the dense model comes from: exactly one is given."""
USER_CODE_KEYS = ("metric", "loss", "batch", "output", "calibration")
"""Evaluator settings naming user code (``"module:function"``), where the settings class has them
(``calibration`` comes from ``[calibration] factory``)."""


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: where the dense model comes from, exactly one of

    - ``name``: a built-in model, trained on first use (``[training]``);
    - ``path``: a module saved with ``torch.save(model, path)``, used as it is;
    - ``factory``: ``"module:function"`` returning an ``nn.Module`` (the study file's folder is importable);
    - ``torchvision`` / ``timm``: a model name, built without pretrained weights (nothing is downloaded);
    - ``transformers``: a local folder (``save_pretrained``) or ``config.json``; ``options.task`` picks the
      ``AutoModelFor...`` class.

    ``options`` are keyword arguments (of the built-in model, factory or zoo builder); ``weights`` is a state
    dict file loaded into a factory's or zoo model (``torch.load(..., weights_only=True)``). Every model but a
    built-in one is used as it comes, without training.
    """

    name: str | None = None
    path: str | None = None
    factory: str | None = None
    torchvision: str | None = None
    timm: str | None = None
    transformers: str | None = None
    options: dict[str, object] = field(default_factory=dict)
    weights: str | None = None

    @property
    def source(self) -> str:
        """The key of :data:`MODEL_SOURCES` that is given."""
        return next(key for key in MODEL_SOURCES if getattr(self, key) is not None)


@dataclass(frozen=True)
class DataSection:
    """``[data]``: a built-in dataset by ``name`` (``digits`` by default) or a ``factory`` (``"module:function"``
    returning train and val data, see :func:`ranksearch.data.loaders_from`), its ``options`` (keyword arguments),
    and the batch sizes of the loaders made from datasets."""

    name: str | None = None
    factory: str | None = None
    options: dict[str, object] = field(default_factory=dict)
    batch_size: int = 64
    eval_batch_size: int = 256


@dataclass(frozen=True)
class TrainingSection:
    """``[training]`` (formerly ``[baseline]``): how a built-in model is trained on first use, and where the
    trained dense model is cached (``runs/baselines`` by default, the folder earlier versions used)."""

    train: TrainSettings = field(default_factory=lambda: _settings_classes()["training"]())
    cache_dir: str = "runs/baselines"


@dataclass(frozen=True)
class StudyFile:
    """A parsed, validated study file."""

    path: Path
    study: StudySection
    model: ModelSection
    data: DataSection
    training: TrainingSection
    space: SearchSpace
    evaluator: EvaluatorSettings
    latency: LatencySettings | None = None
    """Latency measurement (None: only the defaults a ``latency`` objective brings)."""
    memory: MemorySettings | None = None
    """Memory counting (None: the defaults a ``memory`` objective or target brings)."""

    @property
    def storage(self) -> str:
        """The storage URL, defaulting to ``sqlite:///runs/<name>.db``."""
        return self.study.storage_url

    @property
    def folder(self) -> Path:
        """The study file's folder: importable while the user code it names loads."""
        return self.path.resolve().parent


_SECTIONS = ("study", "model", "data", "training", "space", "evaluator", "calibration", "latency", "memory")
_RENAMED_SECTIONS = {"baseline": "training"}
_RENAMED_STUDY_KEYS = {"warm_start_baselines": "warm_start_heuristics"}


def _check_study_section(study: StudySection, path: Path) -> None:
    """Budgets, seed and warm starts of ``[study]`` (the types are already checked)."""
    if study.n_trials < 1:
        raise RanksearchError(f"{path}: [study] n_trials must be >= 1, got {study.n_trials}")
    if study.timeout is not None and not study.timeout > 0:  # NaN too
        raise RanksearchError(f"{path}: [study] timeout must be > 0 seconds, got {study.timeout}")
    if study.screen < 1:
        raise RanksearchError(f"{path}: [study] screen must be an int >= 1 (candidates per trial), got {study.screen}")
    for check in (lambda: check_strategy(study.strategy), lambda: check_targets(study.targets)):
        try:
            check()
        except RanksearchError as error:
            raise RanksearchError(f"{path}: [study] {error}") from None
    if study.heartbeat < 1:
        raise RanksearchError(f"{path}: [study] heartbeat must be an int >= 1 (seconds), got {study.heartbeat}")
    if not 0 <= study.seed < 2**32:  # what the samplers (numpy) accept
        raise RanksearchError(f"{path}: [study] seed must be an int in [0, 2**32), got {study.seed}")
    for key, what in (("warm_start", "fractions"), ("warm_start_heuristics", "budgets")):
        for value in getattr(study, key):
            if not 0 < value <= 1:
                raise RanksearchError(f"{path}: [study] {key} {what} must be numbers in (0, 1], got {value}")


def _renamed(document: dict, path: Path) -> dict:
    """``document`` with renamed sections and keys under their new names (a FutureWarning for each)."""
    document = dict(document)
    for old, new in _RENAMED_SECTIONS.items():
        _rename(document, old, new, (f"[{old}]", f"[{new}]", "section"), path)
    if isinstance(document.get("study"), dict):
        document["study"] = dict(document["study"])
        for old, new in _RENAMED_STUDY_KEYS.items():
            _rename(document["study"], old, new, (f"[study] {old}", new, "key"), path)
    return document


def _rename(table: dict, old: str, new: str, labels: tuple[str, str, str], path: Path) -> None:
    """Move ``table[old]`` to ``table[new]`` with a FutureWarning; both given is an error."""
    if old not in table:
        return
    old_label, new_label, kind = labels
    if new in table:
        raise RanksearchError(f"{path}: {old_label} is the old name of {new_label}: give only {new_label}")
    warnings.warn(f"{path}: {old_label} is now called {new_label}; rename the {kind}", FutureWarning, stacklevel=4)
    table[new] = table.pop(old)


def _training_section(table: object, path: Path) -> TrainingSection:
    if not isinstance(table, dict):
        raise RanksearchError(f"{path}: [training] must be a table")
    table = dict(table)
    cache_dir = table.pop("cache_dir", TrainingSection.cache_dir)
    if not isinstance(cache_dir, str):
        raise RanksearchError(f"{path}: [training] cache_dir must be a string, got {cache_dir!r}")
    train = build_section(_settings_classes()["training"], table, f"{path}: [training]")
    return TrainingSection(train=train, cache_dir=cache_dir)


def _read_document(path: Path) -> dict:
    """The file's TOML, with renamed sections and keys under their new names and unknown sections refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RanksearchError(f"cannot read study file {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise RanksearchError(
            f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x})"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RanksearchError(f"{path}: not valid TOML: {error}") from None
    if not document:
        raise RanksearchError(f"{path}: the study file is empty (it needs at least [model] and [data])")
    document = _renamed(document, path)
    unknown = [key for key in document if key not in _SECTIONS]
    if unknown:
        raise RanksearchError(f"{path}: unknown section [{unknown[0]}] (valid: {', '.join(_SECTIONS)})")
    return document


def _study_section(document: dict, path: Path) -> StudySection:
    study = build_section(StudySection, document.get("study", {}), f"{path}: [study]")
    if not study.name:
        study = dataclasses.replace(study, name=path.stem)
    try:
        check_objectives(study.objectives)
        check_sampler(study.sampler)
    except RanksearchError as error:
        raise RanksearchError(f"{path}: [study] {error}") from None
    _check_study_section(study, path)
    return study


def load_study_section(path: str | Path) -> StudySection:
    """Only the ``[study]`` section of a study file, validated: what reading a stored study needs (no torch)."""
    path = Path(path)
    return _study_section(_read_document(path), path)


def _settings_classes() -> dict[str, type]:
    """The classes of the sections that the Python API takes too (their modules import torch)."""
    from .evaluator import EvaluatorSettings
    from .latency import LatencySettings
    from .memory import MemorySettings
    from .space import SearchSpace
    from .training import TrainSettings

    classes = (TrainSettings, SearchSpace, EvaluatorSettings, LatencySettings, MemorySettings)
    return dict(zip(("training", "space", "evaluator", "latency", "memory"), classes, strict=True))


def _model_section(document: dict, path: Path) -> ModelSection:
    table, keys = document.get("model", {}), [f.name for f in dataclasses.fields(ModelSection)]
    unknown = [key for key in table if key not in keys] if isinstance(table, dict) else []
    if unknown:  # most likely an argument of the model, one level too high
        raise RanksearchError(
            f"{path}: [model]: unknown key {unknown[0]!r} (valid: {', '.join(keys)}; the model's own arguments go in "
            f"options = {{ {unknown[0]} = ... }})"
        )
    model = build_section(ModelSection, table, f"{path}: [model]")
    given = [key for key in MODEL_SOURCES if getattr(model, key) is not None]
    if len(given) != 1:
        keys = "'name' (a built-in model), 'path', 'factory', 'torchvision', 'timm' or 'transformers'"
        raise RanksearchError(
            f"{path}: [model] needs exactly one of {keys}" + (f"; got {' and '.join(given)}" if given else "")
        )
    if model.factory is not None:
        check_spec(model.factory, f"{path}: [model] factory")
    elif not getattr(model, given[0]).strip():
        raise RanksearchError(f"{path}: [model] {given[0]} is empty")
    if model.weights is not None and given[0] in ("name", "path"):
        why = "is trained by ranksearch ([training])" if given[0] == "name" else "holds its weights"
        raise RanksearchError(
            f"{path}: [model] weights goes with factory, torchvision, timm or transformers: a [model] {given[0]} "
            f"model {why}"
        )
    return model


def _data_section(document: dict, path: Path, model: ModelSection) -> DataSection:
    data = build_section(DataSection, document.get("data", {}), f"{path}: [data]")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(data, key) < 1:
            raise RanksearchError(f"{path}: [data] {key} must be >= 1, got {getattr(data, key)}")
    if data.factory is None:
        return data if data.name is not None else dataclasses.replace(data, name="digits")
    if data.name is not None:
        raise RanksearchError(f"{path}: [data] needs one of 'name' (a built-in dataset) or 'factory', not both")
    check_spec(data.factory, f"{path}: [data] factory")
    if model.name is not None:
        raise RanksearchError(
            f"{path}: [model] name = {model.name!r} is a built-in model, trained on a built-in [data] name; with "
            "[data] factory give your own trained model ([model] factory, path, torchvision, timm or transformers)"
        )
    return data


def _evaluator_section(document: dict, path: Path, cls: type) -> EvaluatorSettings:
    table = {**document.get("evaluator", {}), **calibration_section(document, path)}
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in USER_CODE_KEYS:
        if isinstance(table, dict) and key in table and key in fields:
            check_spec(table[key], f"{path}: [evaluator] {key}")
    return build_section(cls, table, f"{path}: [evaluator]")


def load_study_file(path: str | Path) -> StudyFile:
    """Read and validate a study file."""
    path = Path(path)
    document = _read_document(path)
    study = _study_section(document, path)
    model = _model_section(document, path)
    classes = _settings_classes()
    return StudyFile(
        path=path,
        study=study,
        model=model,
        data=_data_section(document, path, model),
        training=_training_section(document.get("training", {}), path),
        space=build_section(classes["space"], document.get("space", {}), f"{path}: [space]"),
        evaluator=_evaluator_section(document, path, classes["evaluator"]),
        **{o: build_section(classes[o], document[o], f"{path}: [{o}]") for o in ("latency", "memory") if o in document},
    )
