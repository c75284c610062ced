"""Per-key asyncio locks: a point's read-modify-write (a partial vector update) runs alone among this process's
writes to that point. Entries exist only while someone holds or waits for them. Across ingress replicas, the same
points' locks on their ring shards' sequencers (`shared`)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from router.replication.leases import LOCK_WAIT_S, MOVE_LEASE_S

log = logging.getLogger(__name__)


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Every key's lock, taken in sorted order (two callers sharing keys cannot deadlock)."""
        ordered = sorted(set(keys))
        for k in ordered:
            lock, users = self._locks.get(k, (None, 0))
            self._locks[k] = (lock or asyncio.Lock(), users + 1)
        taken: list[str] = []
        try:
            for k in ordered:
                await self._locks[k][0].acquire()
                taken.append(k)
            yield
        finally:
            for k in taken:
                self._locks[k][0].release()
            for k in ordered:
                lock, users = self._locks[k]
                if users == 1:
                    del self._locks[k]
                else:
                    self._locks[k] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class InFlight:
    """Operations in flight, counted by the placement epoch they began under (router.collection.coordinator's
    placement_epoch): a rebalance waits for the writes that placed by an older placement, and for the queries that
    chose their shards by one, before it deletes the copies those may still need (settled())."""

    def __init__(self) -> None:
        self._by_epoch: dict[int, int] = {}
        self._ended = asyncio.Condition()
        self.waiting = 0  # callers of settled() waiting now (tests wait on this, never on time)

    @contextlib.asynccontextmanager
    async def hold(self, epoch: int) -> AsyncIterator[None]:
        self._by_epoch[epoch] = self._by_epoch.get(epoch, 0) + 1
        try:
            yield
        finally:
            self._by_epoch[epoch] -= 1
            if not self._by_epoch[epoch]:
                del self._by_epoch[epoch]
            async with self._ended:
                self._ended.notify_all()

    async def settled(self, epoch: int) -> None:
        """Wait until nothing that began before epoch `epoch` is in flight."""
        self.waiting += 1
        try:
            async with self._ended:
                await self._ended.wait_for(lambda: not any(e < epoch for e in self._by_epoch))
        finally:
            self.waiting -= 1


async def run_routed(coord: Any, run: Callable[[], Awaitable[Any]], routed: Callable[[Any], Sequence[int]],
                     reruns: int) -> Any:
    """`run` (a query or its prefetches) counted in flight by the placement it routes by, so that a rebalance
    of this process deletes no old copy it may still read (reads.settled). With several ingress replicas a
    rebalance runs in another process, which cannot count this query: a query that visited only some shards
    while the catalog changed (a rebalance switched placements: copies it chose may be gone) runs again by the
    placement as the catalog has it now, at most `reruns` times. The catalog changes before any old copy is
    deleted, so an unchanged catalog after the reads means they saw every point where they looked."""
    for _ in range(reruns):
        seen = coord.placement_stamp() if coord.placement_stamp is not None else None
        async with coord.reads.hold(coord.placement_epoch):  # its shards, chosen in `run`, are read until the end
            answer = await run()
        if seen is None or len(routed(answer)) == coord.config.shards or coord.placement_stamp() == seen:
            return answer
    return answer



@contextlib.asynccontextmanager
async def shared(sequencers: Sequence[Any], ring_shard: Callable[[str], int], ids: Iterable[str],
                 lease_s: float = MOVE_LEASE_S) -> AsyncIterator[None]:
    """Hold `ids` across every ingress replica: each id's lock lives on the sequencer of its ring shard (the same
    for every ingress, whatever the placement), under a lease (router.replication.leases). First asked of every
    sequencer at once without waiting; if any id is held elsewhere, what was granted is given back and the ids
    are taken shard by shard in ascending order, waiting (two ingresses cannot deadlock). Released in any case.
    Nothing is held without sequencers (in-process mode: this process's KeyedLocks order its writes)."""
    groups: dict[int, list[str]] = {}
    for pid in dict.fromkeys(ids):
        groups.setdefault(ring_shard(pid), []).append(pid)
    if not groups or any(sequencers[s] is None for s in groups):
        yield
        return
    owner, order = uuid.uuid4().hex, sorted(groups)
    held: list[int] = []
    try:
        answers = await asyncio.gather(*(sequencers[s].lock(owner, groups[s], lease_s, 0.0) for s in order),
                                       return_exceptions=True)
        held = [s for s, a in zip(order, answers) if a == []]
        failed = next((a for a in answers if isinstance(a, BaseException)), None)
        if failed is not None:
            raise failed
        if len(held) < len(order):  # contended: give back, then in order
            await _release(sequencers, groups, owner, held)
            held = []
            for s in order:
                while await sequencers[s].lock(owner, groups[s], lease_s, LOCK_WAIT_S):
                    pass  # still held elsewhere after a bounded wait on the sequencer (leases.SharedLocks): again
                held.append(s)
        yield
    finally:
        await _release(sequencers, groups, owner, held)


async def _release(sequencers: Sequence[Any], groups: dict[int, list[str]], owner: str, shards: list[int]) -> None:
    """Give back `owner`'s ids on these shards' sequencers; one unreachable keeps them until the lease runs out."""
    answers = await asyncio.gather(*(sequencers[s].unlock(owner, groups[s]) for s in shards), return_exceptions=True)
    for s, lost in zip(shards, answers):
        if isinstance(lost, BaseException) or lost:
            log.warning("shard %d's sequencer: the move locks of %s were not released as held (%s): another "
                        "ingress may have moved them meanwhile (prism verify reports a point on two shards)",
                        s, lost if not isinstance(lost, BaseException) else "its ids", lost)
