"""A throwaway PostgreSQL server on loopback, from the distribution's binaries (tests and benchmarks).

``postgres_server(folder)`` runs ``initdb`` in ``folder``, starts the server on a free 127.0.0.1 port
(trust authentication, no other listener) and yields its SQLAlchemy URL; the server stops on exit.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system user that the
Debian package creates. ``why_unavailable()`` says why it cannot run here, or returns None.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["postgres_server", "why_unavailable"]

SERVICE_USER = "postgres"


def _binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian keeps them out of PATH, under /usr/lib/postgresql)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def why_unavailable() -> str | None:
    """None if a server can be started here, else the reason (for a skip message)."""
    if _binaries() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)"
    if _as_root():
        try:
            import pwd

            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return f"running as root and there is no {SERVICE_USER!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start PostgreSQL as another user"
    try:
        import psycopg  # noqa: F401  (the driver SQLAlchemy 2.1 uses for postgresql:// URLs)
    except ImportError:
        return "the PostgreSQL driver is missing (pip install 'ranksearch[postgres]')"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str]) -> None:
    if _as_root():
        command = ["runuser", "-u", SERVICE_USER, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@contextmanager
def postgres_server(durable: bool = False) -> Iterator[str]:
    """Start a server in a fresh temporary folder; yields ``postgresql+psycopg://ranksearch@127.0.0.1:PORT/postgres``.

    ``durable=False`` turns fsync off (tests: faster, nothing to keep); benchmarks of the storage's
    overhead keep it on, as a real server would.
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    binaries = _binaries()
    folder = Path(tempfile.mkdtemp(prefix="ranksearch-postgres-"))  # not under pytest's root-only tmp folders
    data = folder / "data"
    try:
        if _as_root():
            shutil.chown(folder, SERVICE_USER)
        _run([str(binaries / "initdb"), "-D", str(data), "-U", "ranksearch", "--auth=trust", "--no-sync", "-E", "UTF8"])
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=100"
        options += "" if durable else " -c fsync=off -c synchronous_commit=off"
        _run([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"])
        try:
            yield f"postgresql+psycopg://ranksearch@127.0.0.1:{port}/postgres"
        finally:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
