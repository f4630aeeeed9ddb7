"""A resumable, shareable store of a long benchmark's measurements, and a work queue over it.

Several processes (``search_quality.py --jobs N``, or the same command started twice) share one folder:

- ``points.jsonl``: one measured point per line, appended under a file lock;
- ``clocks.json``: per-arm clocks (seconds spent, facts like trial counts), read-modify-written under the lock;
- ``claims/<unit>``: the pid of the process working on a unit; a claim whose process is gone is stale and
  taken over, so a killed run resumes where it stopped.

Clocks count CPU seconds of the process (``time.process_time``): a benchmark's processes run one thread each,
so on an idle core this equals wall-clock, and other load on a shared machine does not eat an arm's budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

cpu_clock = time.process_time
"""The benchmark's clock: CPU seconds of this process (see the module docs)."""


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content at once: readers see the old file or the new one, never half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


class PointStore:
    """Points and per-arm clocks in ``folder/points.jsonl`` and ``folder/clocks.json``; what is there is reused.

    Reads see what other processes wrote since (the files are re-read when they change).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.points_file, self.clocks_file = folder / "points.jsonl", folder / "clocks.json"
        self._lock_file = folder / ".lock"
        self._rows: list[dict] = []
        self._read_bytes = 0
        self._clocks: dict[str, dict] = {}
        self._clocks_stamp: tuple[int, int] | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (between processes) while the block runs."""
        with self._lock_file.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def rows(self) -> list[dict]:
        if self.points_file.exists() and self.points_file.stat().st_size > self._read_bytes:
            with self.points_file.open("rb") as handle:
                handle.seek(self._read_bytes)
                new = handle.read()
            complete = new[: new.rfind(b"\n") + 1]  # a line being appended right now is read next time
            self._rows += [json.loads(line) for line in complete.decode().splitlines() if line]
            self._read_bytes += len(complete)
        return self._rows

    @property
    def clocks(self) -> dict[str, dict]:
        if self.clocks_file.exists():
            stat = self.clocks_file.stat()
            if (stat.st_mtime_ns, stat.st_size) != self._clocks_stamp:
                self._clocks = json.loads(self.clocks_file.read_text())
                self._clocks_stamp = (stat.st_mtime_ns, stat.st_size)
        return self._clocks

    def has(self, arm: str, seed: int | None, key: object) -> bool:
        return self.get(arm, seed, key) is not None

    def get(self, arm: str, seed: int | None, key: object) -> dict | None:
        return next((r for r in self.rows if r["arm"] == arm and r["seed"] == seed and r["key"] == key), None)

    def add(self, **row: object) -> dict:
        with self.locked(), self.points_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        return row

    def clock(self, name: str, seconds: float | None = None, **extra: object) -> dict:
        """The stored clock of ``name``; with ``seconds``, add them (and store ``extra`` facts)."""
        if seconds is None:
            return dict(self.clocks.get(name, {"seconds": 0.0}))
        with self.locked():
            self._clocks_stamp = None  # re-read: another process may have written since
            clocks = dict(self.clocks)
            entry = clocks.setdefault(name, {"seconds": 0.0})
            entry["seconds"] += seconds
            entry.update(extra)
            write_atomic(self.clocks_file, json.dumps(clocks, indent=1))
        return dict(entry)

    def update_json(self, name: str, change: Callable[[dict], None]) -> dict:
        """Read-modify-write ``folder/name`` (a JSON object) under the lock; returns the new content."""
        path = self.folder / name
        with self.locked():
            content = json.loads(path.read_text()) if path.exists() else {}
            change(content)
            write_atomic(path, json.dumps(content, indent=1))
        return content

    def read_json(self, name: str) -> dict:
        path = self.folder / name
        return json.loads(path.read_text()) if path.exists() else {}

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


@dataclass
class Unit:
    """One piece of a benchmark: ``run`` it once ``after`` are done; ``done`` says whether it is stored."""

    name: str
    run: Callable[[], None]
    done: Callable[[], bool]
    after: Sequence[str] = field(default_factory=tuple)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust the signal check
    return state != "Z"


class Claims:
    """Which process works on which unit: ``folder/claims/<unit>`` holds its pid."""

    def __init__(self, store: PointStore) -> None:
        self.store = store
        self.folder = store.folder / "claims"
        self.folder.mkdir(exist_ok=True)

    def _path(self, unit: str) -> Path:
        return self.folder / re.sub(r"[^\w.@-]+", "_", unit)

    def owner(self, unit: str) -> int | None:
        """The live process that holds ``unit``, or None."""
        path = self._path(unit)
        try:
            pid = int(path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid and _alive(pid) else None

    def take(self, unit: str) -> bool:
        """Claim ``unit`` for this process; False when a live process holds it."""
        path = self._path(unit)
        with self.store.locked():
            if path.exists():
                if self.owner(unit) not in (None, os.getpid()):
                    return False
                path.unlink()  # stale: its process is gone
            path.write_text(str(os.getpid()))
        return True

    def release(self, unit: str) -> None:
        self._path(unit).unlink(missing_ok=True)


def work(units: Sequence[Unit], store: PointStore, log: Callable[[str], None] = print, poll: float = 10.0) -> None:
    """Run every unit not done yet, in order, skipping those another process holds or that wait for others;
    return when all are done."""
    by_name = {u.name: u for u in units}
    missing = {d for u in units for d in u.after if d not in by_name}
    if missing:
        raise ValueError(f"units wait for unknown units: {sorted(missing)}")
    claims = Claims(store)
    waiting_since: float | None = None
    while True:
        pending = [u for u in units if not u.done()]
        if not pending:
            return
        ready = [u for u in pending if all(by_name[d].done() for d in u.after)]
        unit = next((u for u in ready if claims.take(u.name)), None)
        if unit is None:
            if waiting_since is None:
                waiting_since = time.monotonic()
                held = {u.name: claims.owner(u.name) for u in pending}
                busy = ", ".join(f"{n} (pid {p})" for n, p in held.items() if p) or "nothing"
                log(f"  waiting: {len(pending)} units left, others are working on {busy}")
            if not any(claims.owner(u.name) for u in pending):
                raise RuntimeError(f"no unit can run and no process works on one: {[u.name for u in pending]}")
            time.sleep(poll)
            continue
        waiting_since = None
        try:
            unit.run()
        finally:
            claims.release(unit.name)
        if not unit.done():
            raise RuntimeError(f"unit {unit.name} ran but its result is not stored")
