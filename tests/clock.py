"""A clock that moves only when a test moves it: pass it where prism takes `clock=`, then `advance`."""
from __future__ import annotations

import time


class FakeClock:
    def __init__(self, start: float | None = None):
        self.t = time.monotonic() if start is None else start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
