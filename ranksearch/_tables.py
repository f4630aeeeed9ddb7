"""TOML tables onto frozen dataclasses: every key checked against the class's type hints, errors naming it.

Study files (:mod:`ranksearch.studyfile`) build each section with :func:`build_section`: unknown keys (with a
close match suggested), wrong types and the class's own validation errors all name the table and the key.
TOML lists become tuples and ints become floats where the hint says so.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from difflib import get_close_matches

from .errors import RanksearchError

__all__ = ["build_section"]

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


def build_section(cls: type, table: object, where: str) -> object:
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
