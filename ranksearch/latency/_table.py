"""The per-layer latency table: measured seconds on disk, reused across runs and studies on the same hardware.

The file is JSON: ``{"format": ..., "version": 1, "contexts": {context: {key: seconds}}}``. A context
names the hardware and how it was timed (device name, threads, dtype, torch version); a key names a
layer geometry, its input shape and the method and rank it was timed with. Saving re-reads the file and
merges, so two processes filling the same table lose nothing but a race on the very same key.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["LatencyTable"]

FORMAT = "ranksearch.latency-table"
VERSION = 1


class LatencyTable:
    """Seconds per ``(context, key)``, measured once and kept in ``path`` (None: in memory only).

    ``measured`` counts measurements this object made; ``hits`` counts lookups served from the table.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.measured = 0
        self.hits = 0
        self._entries: dict[str, dict[str, float]] = self._read() if self.path is not None else {}
        self._new: dict[str, dict[str, float]] = {}

    def _read(self) -> dict[str, dict[str, float]]:
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT or document.get("version") != VERSION:
                raise ValueError(f"not a version-{VERSION} {FORMAT} file")
            return {
                str(context): {str(key): float(seconds) for key, seconds in entries.items()}
                for context, entries in document["contexts"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            warnings.warn(
                f"latency table {str(self.path)!r} is unreadable ({type(error).__name__}: {error}); "
                "rebuilding it (its layers are measured again)",
                UserWarning,
                stacklevel=3,
            )
            return {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def get(self, context: str, key: str) -> float | None:
        """The stored seconds, or None."""
        return self._entries.get(context, {}).get(key)

    def get_or_measure(self, context: str, key: str, measure: Callable[[], float]) -> float:
        """The stored seconds for ``key``, measuring (and remembering) them on first use."""
        seconds = self.get(context, key)
        if seconds is not None:
            self.hits += 1
            return seconds
        seconds = float(measure())
        self._entries.setdefault(context, {})[key] = seconds
        self._new.setdefault(context, {})[key] = seconds
        self.measured += 1
        return seconds

    def save(self) -> None:
        """Write new entries to ``path`` (merged with what the file holds now); atomic replace."""
        if self.path is None or not self._new:
            return
        on_disk = self._read_quietly()
        for context, entries in self._new.items():
            on_disk.setdefault(context, {}).update(entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"format": FORMAT, "version": VERSION, "contexts": on_disk}
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=1, sort_keys=True)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        for context, entries in on_disk.items():  # what other processes added becomes visible here too
            self._entries[context] = {**entries, **self._entries.get(context, {})}
        self._new = {}

    def _read_quietly(self) -> dict[str, dict[str, float]]:
        with warnings.catch_warnings():  # already warned when this table was opened
            warnings.simplefilter("ignore", UserWarning)
            return self._read()
