"""Stopwatch: wall times of consecutive phases (the evaluator's per-stage seconds)."""

from __future__ import annotations

import time

__all__ = ["Stopwatch"]


class Stopwatch:
    """Wall times of consecutive phases, written to ``seconds`` by name as each one ends."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.start = self.clock = time.perf_counter()

    def lap(self, name: str) -> None:
        """End phase ``name`` (begun at the previous lap, or at the start) and begin the next one."""
        now = time.perf_counter()
        self.seconds[name] = now - self.clock
        self.clock = now

    def total(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start
