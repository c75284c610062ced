"""Per-id locks with a lease, held on a shard's sequencer for several ingress replicas (issue 28): a move of a routed
point (read where it lives, write the new copy, delete the old) runs alone among every ingress's moves of that point.

`LeaseTable` is the pure table (an injected clock, no waiting); `SharedLocks` waits on it in one event loop (the
sequencer's). A lease expires `lease_s` after it was granted, so an ingress that died holding ids cannot block them
for ever; an owner that outlived its lease learns it when it releases (`release` returns the ids it no longer held).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

# Longer than any one move should take (an Elasticsearch write, a shard write and a delete, each with its timeout):
# a holder past its lease may be overtaken, and a crashed one blocks its ids this long at most.
MOVE_LEASE_S = 60.0
LOCK_WAIT_S = 1.0  # the longest one call waits on a sequencer for ids held elsewhere (then it is asked again)


class LeaseTable:
    """id -> (owner, expiry). All or nothing: `grant` takes every id asked for, or none."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._held: dict[str, tuple[str, float]] = {}

    def _holder(self, pid: str, now: float) -> str | None:
        owner, until = self._held.get(pid, (None, 0.0))
        return owner if owner is not None and until > now else None

    def conflicts(self, owner: str, ids: Iterable[str]) -> list[str]:
        """The ids another owner holds under a live lease."""
        now = self.clock()
        return [pid for pid in ids if self._holder(pid, now) not in (None, owner)]

    def grant(self, owner: str, ids: Iterable[str], lease_s: float) -> list[str]:
        """Take every id for `owner` for `lease_s` (renewing its own) and return []; or, if another owner holds any
        of them, take none and return those."""
        ids = list(dict.fromkeys(ids))
        blocked = self.conflicts(owner, ids)
        if not blocked:
            until = self.clock() + lease_s
            for pid in ids:
                self._held[pid] = (owner, until)
        return blocked

    def release(self, owner: str, ids: Iterable[str]) -> list[str]:
        """Free the ids `owner` holds; returns those it asked for but no longer held (its lease ran out: another
        owner may have taken them meanwhile). Another owner's ids are left alone."""
        now, lost = self.clock(), []
        for pid in dict.fromkeys(ids):
            held_by, until = self._held.get(pid, (None, 0.0))
            if held_by == owner:
                del self._held[pid]
            if held_by != owner or until <= now:
                lost.append(pid)
        self._expire(now)
        return lost

    def next_expiry(self, ids: Iterable[str]) -> float | None:
        """When the first live lease among these ids runs out (None: none is held)."""
        now = self.clock()
        ends = [self._held[pid][1] for pid in ids if self._holder(pid, now) is not None]
        return min(ends) if ends else None

    def _expire(self, now: float) -> None:
        for pid in [p for p, (_, until) in self._held.items() if until <= now]:
            del self._held[pid]

    def __len__(self) -> int:
        return sum(1 for _, until in self._held.values() if until > self.clock())


class SharedLocks:
    """A LeaseTable that callers wait on: `take` returns [] once every id is granted (a release, or the first
    blocking lease running out, wakes it), or the ids still held by others after waiting `wait_s` (0: not at all).
    The wait is bounded because a waiter occupies one of the sequencer actor's concurrent calls, which the holder
    needs for its shard writes: the caller asks again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.table = LeaseTable(clock)
        self._changed = asyncio.Condition()

    async def take(self, owner: str, ids: list[str], lease_s: float = MOVE_LEASE_S,
                   wait_s: float = LOCK_WAIT_S) -> list[str]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        async with self._changed:
            while (blocked := self.table.grant(owner, ids, lease_s)) and loop.time() < give_up:
                until = self.table.next_expiry(blocked)
                timeout = give_up - loop.time()
                if until is not None:
                    timeout = min(timeout, max(0.0, until - self.table.clock()))
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass  # a blocking lease ran out, or the wait is over: grant once more
            return blocked

    async def release(self, owner: str, ids: list[str]) -> list[str]:
        async with self._changed:
            lost = self.table.release(owner, ids)
            self._changed.notify_all()
        return lost
