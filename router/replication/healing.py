"""The ingress's background healer: one pass a period over every collection, supervised. Pure (no Ray, no Serve):
the pass, the sleep and the counters are injected, so a test runs the loop itself.

A pass that raises is logged and counted and the loop goes on; the loop itself, should it ever end (a bug in the
counting, a cancelled sleep that was not ours), is restarted by `supervise` and counted: a heal task that dies
silently leaves stale replicas stale forever (it happened: a shadowed import made the error branch raise).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cluster.errors import describe

log = logging.getLogger("prism.healing")
HEAL_PERIOD_S = 1.0
RESTART_PAUSE_S = 1.0  # a loop that keeps dying does not spin


@dataclass
class HealLoop:
    """`heal()` once every `period_s`; returns {"healed": n, "failed": n}. `failed(n)` counts failures (probes
    and passes), `restarted()` counts loop restarts."""

    heal: Callable[[], Awaitable[dict[str, int]]]
    failed: Callable[[int], None] = lambda n: None
    restarted: Callable[[], None] = lambda: None
    period_s: float = HEAL_PERIOD_S
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    passes: int = 0
    pass_failures: int = 0
    restarts: int = 0

    async def run(self) -> None:
        """The loop: never ends on its own; one bad pass is logged, counted and followed by the next."""
        while True:
            await self.sleep(self.period_s)
            self.passes += 1
            try:
                done = await self.heal()
            except Exception as exc:  # noqa: BLE001 - healing retries on the next pass
                self.pass_failures += 1
                log.warning("healing pass failed: %s", describe(exc))
                self.failed(1)
                continue
            if done.get("failed"):
                self.failed(done["failed"])

    async def supervise(self) -> None:
        """`run`, restarted (and counted) whenever it ends, by an exception or otherwise; only cancellation of
        this task stops it."""
        while True:
            try:
                await self.run()
                why = "ended"
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - whatever killed it, the healer must come back
                why = describe(exc)
            self.restarts += 1
            log.error("the heal loop stopped (%s); restarting it", why)
            try:
                self.restarted()
            except Exception:  # noqa: BLE001 - counting must not stop the supervisor
                log.exception("counting a heal loop restart failed")
            await self.sleep(RESTART_PAUSE_S)
