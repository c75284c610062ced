"""Where a query's time goes: named laps, timed in one place. Pure: no I/O, the observer is injected."""
from __future__ import annotations

import time
from collections.abc import Callable


class LapTimer:
    """Where a query's time went: named laps in milliseconds (`ms`), each also observed (Prometheus) when asked to."""

    def __init__(self, observe: Callable[[str, float], None] | None):
        self.observe = observe
        self.t0 = self.last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = round((now - self.last) * 1000, 3)
        if self.observe is not None:
            self.observe(stage, now - self.last)
        self.last = now

    def total_ms(self) -> float:
        return round((time.perf_counter() - self.t0) * 1000, 3)
