"""Storage URLs: where a file-based study lives on disk, so its report, exports and latency table sit beside it.

Two file storages exist: ``sqlite:///path.db`` (Optuna's RDB storage on SQLite, the default) and
``journal:///path.log`` (Optuna's journal file storage, an append-only log). Any other URL is a database
server that SQLAlchemy reaches (``postgresql://...``, ``mysql+pymysql://...``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["JOURNAL", "SQLITE", "beside_storage", "journal_file", "sqlite_file", "storage_file"]

SQLITE = "sqlite:///"
JOURNAL = "journal:///"


def sqlite_file(url: str | None) -> Path | None:
    """The database file of a ``sqlite:///path`` URL; None for in-memory SQLite and other databases."""
    if not url or not url.startswith(SQLITE) or url[len(SQLITE) :] in ("", ":memory:"):
        return None
    return Path(url[len(SQLITE) :])


def journal_file(url: str | None) -> Path | None:
    """The log file of a ``journal:///path`` URL (``journal:////abs/path`` for an absolute path); else None."""
    if not url or not url.startswith(JOURNAL) or not url[len(JOURNAL) :]:
        return None
    return Path(url[len(JOURNAL) :])


def storage_file(url: str | None) -> Path | None:
    """The file of a SQLite or journal storage; None for in-memory and server storages."""
    return sqlite_file(url) or journal_file(url)


def beside_storage(url: str | None, name: str) -> Path:
    """``name`` in the folder of a file storage, else under ``runs/`` (e.g. a report folder)."""
    path = storage_file(url)
    return (path.parent if path is not None else Path("runs")) / name
