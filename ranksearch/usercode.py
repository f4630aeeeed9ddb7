"""The user's own code named by ``"package.module:function"`` strings (study files, workers, settings).

A study file names the user's model factory, data factory and evaluation adapters this way; the study
file's folder is importable while they load, so ``mystudy.toml`` beside ``mymodel.py`` just works.
Strings (not callables) travel in settings, so that worker processes resolve them on their own.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .errors import RanksearchError

__all__ = ["call_user", "check_spec", "importable", "load_callable"]


def check_spec(spec: object, where: str) -> tuple[str, str]:
    """``(module, attribute)`` of a ``"package.module:function"`` string; a clear error naming ``where``."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise RanksearchError(f"{where} must be a string 'package.module:function', got {spec!r}")
    module, attribute = (part.strip() for part in spec.split(":"))
    if not module or not attribute:
        raise RanksearchError(f"{where} must be a string 'package.module:function', got {spec!r}")
    return module, attribute


@contextlib.contextmanager
def importable(folder: str | Path | None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the block runs (nothing with None)."""
    if folder is None:
        yield
        return
    entry = str(Path(folder).resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def load_callable(spec: str | Callable, where: str, folder: str | Path | None = None) -> Callable:
    """The callable ``spec`` names (a callable is returned as it is).

    Args:
        spec: ``"package.module:function"`` (the attribute may be dotted: ``"module:Class.method"``).
        where: what named it, for error messages, e.g. ``"study.toml: [model] factory"``.
        folder: importable while the module loads (the study file's folder).

    Raises:
        RanksearchError: the module is missing or fails to import, the attribute is missing or not callable.
    """
    if callable(spec):
        return spec
    module_name, attribute = check_spec(spec, where)
    with importable(folder):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and (error.name == module_name or module_name.startswith(error.name + ".")):
                searched = f" (searched {Path(folder).resolve()} and sys.path)" if folder is not None else ""
                raise RanksearchError(f"{where}: no module named {module_name!r}{searched}") from None
            raise RanksearchError(f"{where}: importing {module_name!r} failed: {error}") from None
        except Exception as error:
            raise RanksearchError(
                f"{where}: importing {module_name!r} failed: {type(error).__name__}: {error}"
            ) from None
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RanksearchError(f"{where}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RanksearchError(f"{where}: {spec!r} is not callable (an object of type {type(target).__name__})")
    return target


def call_user(function: Callable, options: Mapping[str, object], where: str) -> object:
    """``function(**options)``; whatever it raises becomes a RanksearchError naming ``where`` and the line that raised.

    Args:
        function: the user's callable (a model or data factory).
        options: its keyword arguments (a study file's ``options`` table).
        where: what named it, e.g. ``"study.toml: [model] factory 'mymodel:build'"``.
    """
    try:
        return function(**options)
    except RanksearchError as error:
        raise RanksearchError(f"{where}: {error}") from error
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)[1:]  # the first frame is this call
        origin = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise RanksearchError(f"{where} raised {type(error).__name__}: {error}{origin}") from error
