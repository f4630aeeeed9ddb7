"""Opening Optuna storages: journal files, SQLite tuned for several local workers, PostgreSQL and others."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import optuna
import sqlalchemy

from ..errors import RanksearchError
from ..storage import beside_storage, journal_file, storage_file

__all__ = ["default_latency_table", "open_storage"]

SQLITE_BUSY_SECONDS = 60


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: a journal file, or an RDB storage (SQLite, PostgreSQL, MySQL...).

    File storages get their folder created. SQLite waits up to ``SQLITE_BUSY_SECONDS`` for a lock instead
    of failing at once, so several worker processes can share one file (``ranksearch run --workers N``).

    With ``heartbeat`` (seconds), a running trial records that it is alive that often; a trial silent for
    twice as long (its worker was killed) is marked failed when a worker next starts a trial. Journal
    files have no heartbeat: a killed worker's trial stays "running" there (it counts against the budget).
    """
    _check_url(url)
    path = storage_file(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RanksearchError(f"cannot create the folder for storage {url!r}: {error.strerror}") from None
    if journal_file(url) is not None:
        try:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        except OSError as error:
            raise RanksearchError(f"cannot open storage {url!r}: {error.strerror}") from None
    if url.startswith("journal:"):
        raise RanksearchError(f"storage {url!r}: a journal URL names a file, e.g. journal:///runs/study.log")
    storage = _rdb_storage(url, heartbeat)
    if path is not None:
        _tune_sqlite(storage.engine)
    return storage


def _check_url(url: str) -> None:
    if "://" not in url:
        raise RanksearchError(
            f"storage {url!r} is not a storage URL (e.g. sqlite:///runs/study.db, journal:///runs/study.log, "
            "postgresql://user:password@host/database)"
        )
    if url.startswith("sqlite:") and storage_file(url) is None:
        raise RanksearchError(
            f"storage {url!r} is in memory: a study there is lost when the run ends and cannot be reported; "
            "give a file, e.g. sqlite:///runs/study.db (in Python, storage=None keeps a study in memory)"
        )


def _rdb_storage(url: str, heartbeat: int | None) -> optuna.storages.RDBStorage:
    engine = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if url.startswith("sqlite:") else None
    beat = {} if heartbeat is None else {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what crash recovery needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
    except ImportError as error:  # no driver for this database
        raise RanksearchError(
            f"cannot open storage {url!r}: {error} (PostgreSQL: pip install 'ranksearch[postgres]' and use "
            "postgresql+psycopg://...)"
        ) from None
    except Exception as error:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
        raise RanksearchError(f"cannot open storage {url!r}: {type(error).__name__}: {error}") from None


def _tune_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Make a SQLite study safe and quick to share between processes on one machine.

    - Every transaction starts with ``BEGIN IMMEDIATE`` (the write lock first). Python's sqlite3 driver
      otherwise reads outside any transaction and begins only at the first write, so two workers could
      both see a queued trial waiting and both run it (Optuna's ``SELECT ... FOR UPDATE`` is a no-op on
      SQLite; ``tests/test_workers.py`` holds the regression test).
    - WAL mode with ``synchronous=NORMAL``: a commit does not wait for the disk, and a killed process
      still loses nothing committed. WAL needs every worker on one machine (not a network file system).
    """

    def on_connect(connection: sqlite3.Connection, _: object) -> None:
        connection.isolation_level = None  # the driver's own BEGIN off: ours below
        connection.execute("PRAGMA synchronous=NORMAL")
        try:  # kept in the file: a no-op once the database is in WAL mode
            connection.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:  # e.g. locked for longer than the busy timeout
            warnings.warn(f"SQLite study left in its rollback-journal mode: {error}", stacklevel=2)

    sqlalchemy.event.listen(engine, "connect", on_connect)
    sqlalchemy.event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections opened before the listeners reconnect with them


def default_latency_table(storage: str | None) -> Path | None:
    """``latency-table.json`` beside a SQLite storage file; None (in memory) for other storages."""
    return None if storage_file(storage) is None else beside_storage(storage, "latency-table.json")
