"""Study files: a TOML description of a whole rank search, validated key by key.

```toml
[study]            # name, storage, objectives, n_trials, timeout, sampler, seed, strategy, targets, screen,
                   # warm_start, warm_start_heuristics
[model]            # name (built-in) + options, or path (a torch.save'd nn.Module)
[data]             # name (built-in dataset) + options, batch_size, eval_batch_size
[training]         # training of a built-in model on first use: epochs, lr, batch_size, weight_decay, seed, augment,
                   # cache_dir
[space]            # SearchSpace: methods, grid, cost_fractions, rank_fractions, rank_multiple, include, exclude, ...
[evaluator]        # EvaluatorSettings: finetune_steps, lr, ..., eval_batches, bn_batches, distill, ...
[latency]          # LatencySettings: device, dtype, batch_size, threads, warmup, repeats, check_every, table
```

Each section maps onto one frozen dataclass (the search space and evaluator sections onto the very
classes the Python API takes), so a key means the same thing in both places. Unknown keys, wrong types
and bad values are errors that name the file, the section and the key. Relative paths are relative to
the working directory.

Renamed keys still work, with a ``FutureWarning`` that names the new one: ``[baseline]`` is now
``[training]`` (it trains the dense model), ``[study] warm_start_baselines`` is now
``warm_start_heuristics`` (the rank heuristics of :mod:`ranksearch.heuristics`).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # imported where a whole file is read: reading [study] alone needs no torch
    from .evaluator import EvaluatorSettings
    from .latency import LatencySettings
    from .space import SearchSpace
    from .training import TrainSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
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
        sampler: tpe, nsga2, nsga3 or random.
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
        screen: candidates the proxy scores per ``allocate`` trial (1: no screening).
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


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: a built-in model by ``name`` (with ``options``), or a ``path`` to a saved module."""

    name: str | None = None
    path: str | None = None
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSection:
    """``[data]``: a built-in dataset by ``name`` with ``options``, and the loaders' batch sizes."""

    name: str = "digits"
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

    @property
    def storage(self) -> str:
        """The storage URL, defaulting to ``sqlite:///runs/<name>.db``."""
        return self.study.storage_url


_SECTIONS = ("study", "model", "data", "training", "space", "evaluator", "latency")
_RENAMED_SECTIONS = {"baseline": "training"}
_RENAMED_STUDY_KEYS = {"warm_start_baselines": "warm_start_heuristics"}


_NAMES = {int: "int", float: "number", str: "string", bool: "boolean", type(None): "nothing"}


def _type_name(hint: object, article: bool = True) -> str:
    """``"an int"``, ``"a list of strings"``, ``"a string or nothing"``... for error messages."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a, article) for a in typing.get_args(hint) if a is not type(None))
    if origin is tuple:
        return ("a " if article else "") + f"list of {_type_name(typing.get_args(hint)[0], article=False)}s"
    if origin in (dict, Mapping) or hint is dict:
        return ("a " if article else "") + "table"
    name = _NAMES.get(hint, str(hint))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}" if article else name


def _coerce(value: object, hint: object) -> object:
    """``value`` converted to ``hint`` (lists to tuples, ints to floats), or TypeError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except TypeError:
                pass
        raise TypeError
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item) for v in value)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise TypeError
        args = typing.get_args(hint)
        return {k: _coerce(v, args[1]) for k, v in value.items()} if len(args) == 2 else dict(value)
    if hint is object:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise TypeError
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise TypeError


def _build(cls: type, table: object, where: str) -> object:
    """An instance of dataclass ``cls`` from a TOML table; errors name ``where`` and the key."""
    if not isinstance(table, dict):
        raise RanksearchError(f"{where} must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            close = get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(names)})"
            raise RanksearchError(f"{where}: unknown key {key!r}{hint}")
        try:
            kwargs[key] = _coerce(value, hints[key])
        except TypeError:
            raise RanksearchError(
                f"{where}: {key} must be {_type_name(hints[key])}, got {value!r} ({type(value).__name__})"
            ) from None
    try:
        return cls(**kwargs)
    except RanksearchError as error:
        raise RanksearchError(f"{where}: {error}") from None


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
    train = _build(_settings_classes()["training"], table, f"{path}: [training]")
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
    study = _build(StudySection, document.get("study", {}), f"{path}: [study]")
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
    from .space import SearchSpace
    from .training import TrainSettings

    return {"training": TrainSettings, "space": SearchSpace, "evaluator": EvaluatorSettings, "latency": LatencySettings}


def load_study_file(path: str | Path) -> StudyFile:
    """Read and validate a study file."""
    path = Path(path)
    document = _read_document(path)
    study = _study_section(document, path)
    model = _build(ModelSection, document.get("model", {}), f"{path}: [model]")
    if (model.name is None) == (model.path is None):
        raise RanksearchError(f"{path}: [model] needs exactly one of 'name' (a built-in model) or 'path'")
    data = _build(DataSection, document.get("data", {}), f"{path}: [data]")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(data, key) < 1:
            raise RanksearchError(f"{path}: [data] {key} must be >= 1, got {getattr(data, key)}")
    classes = _settings_classes()
    return StudyFile(
        path=path,
        study=study,
        model=model,
        data=data,
        training=_training_section(document.get("training", {}), path),
        space=_build(classes["space"], document.get("space", {}), f"{path}: [space]"),
        evaluator=_build(classes["evaluator"], document.get("evaluator", {}), f"{path}: [evaluator]"),
        latency=None
        if "latency" not in document
        else _build(classes["latency"], document["latency"], f"{path}: [latency]"),
    )
