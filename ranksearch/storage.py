"""Storage URLs: where a SQLite study lives on disk, so its report, exports and latency table sit beside it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["beside_storage", "sqlite_file"]

SQLITE = "sqlite:///"


def sqlite_file(url: str | None) -> Path | None:
    """The database file of a ``sqlite:///path`` URL; None for in-memory SQLite and other databases."""
    if not url or not url.startswith(SQLITE) or url[len(SQLITE) :] in ("", ":memory:"):
        return None
    return Path(url[len(SQLITE) :])


def beside_storage(url: str | None, name: str) -> Path:
    """``name`` in the folder of a SQLite study's file, else under ``runs/`` (e.g. a report folder)."""
    path = sqlite_file(url)
    return (path.parent if path is not None else Path("runs")) / name
