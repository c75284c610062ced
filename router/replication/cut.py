"""A snapshot's cut of one shard: the shard's state at one sequence number, read while writes go on.

How (the snapshot's reader, router.collection.snapshots, drives it):
1. `mark`: the shard's sequence number s0 (under the write lock, so no write numbered <= s0 is still on its way),
   and the replicas that have applied it;
2. the reader copies every point from one of those replicas (keyset pages of whole points), without any lock;
3. `cut`, in rounds: under the write lock only the sequence number S and the ids the operation log shows written
   since the last round (microseconds); then, without the lock, those ids read (Strong) from a replica that has
   applied S. Such a read holds every write <= S and perhaps some after it; so under the lock again, the next S'
   and the ids written in (S, S']: if none of them was read this round, the cut is S. Otherwise the next round
   reads them for S'. Only if `ROUNDS` rounds all raced a write does a last round read under the lock.
An id no write touched after s0 has not changed since s0, so its copy from step 2 is its state at S; every other
id's state at S is the last read of it in step 3. The write pause is the longest hold of the write lock, measured
and returned: microseconds unless the last round under the lock was needed. This does not lean on writes being
visible when acknowledged (wait=false writes are not): a replica's applied seq and a Strong read are enough. If the
log no longer holds every write after s0 (a bound was reached while copying), the cut is refused and the snapshot
can be retried.

The same code runs in a process that orders the shard's writes itself and in a shard's sequencer (the Ray actor).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import ShardUnavailable
from router.replication.oplog import OpLog
from router.replication.reads import SCAN_TIMEOUT_S
from shards.api import EXPORT_PAGE, PointRow

ROUNDS = 8  # rounds without the lock before the last one (which takes the lock whatever it holds)
EXPORT_BATCH = 1_000


@dataclass(frozen=True)
class Mark:
    seq: int
    epoch: str
    replicas: list[int]  # replicas that have applied every write up to `seq`


@dataclass
class Cut:
    seq: int
    epoch: str
    rows: dict[str, PointRow] = field(default_factory=dict)  # ids written after the mark, as they stand at `seq`
    gone: set[str] = field(default_factory=set)                 # ids written after the mark, absent at `seq`
    pause_ms: float = 0.0
    rounds: int = 0
    at: float = 0.0  # wall-clock time of the cut: writes after it are stamped no earlier (point-in-time restore)


def written_since(log: OpLog, since: int, upto: int) -> set[str]:
    """Ids the writes numbered (since, upto] touched; ShardUnavailable if the log no longer holds all of them."""
    if upto <= since:
        return set()
    ops = [op for op in log if since < op.seq <= upto]
    if {op.seq for op in ops} != set(range(since + 1, upto + 1)):
        raise ShardUnavailable(f"the shard took more writes while it was copied than its operation log holds "
                               f"(writes {since + 1}..{upto}); retry the snapshot", shards=[])
    out: set[str] = set()
    for op in ops:
        if op.kind == "upsert":
            out.update(p.id for p in op.args)
        elif op.kind == "delete":
            out.update(str(i) for i in op.args)
        else:  # "restore": a refused write undone
            out.update(p.id for p in op.args[0])
            out.update(str(i) for i in op.args[1])
    return out


def caught_up(host: Any, seq: int) -> list[int]:
    rs = host.state
    return [r for r in rs.read_order() if rs.states[r].applied_seq >= seq]


async def _first(host: Any, replicas: Sequence[int], call: Any) -> Any:
    """`call(client)` on the first of `replicas` that answers."""
    errors = []
    for r in replicas:
        try:
            return await call(host.clients[r])
        except Exception as exc:  # noqa: BLE001 - try the next replica that has the writes
            errors.append(f"replica {r}: {exc}")
    raise ShardUnavailable(f"shard {host.shard}: no replica that has applied the snapshot's cut answered "
                           f"({'; '.join(errors) or 'none has'})", shards=[host.shard])


async def export(host: Any, replicas: Sequence[int], ids: Sequence[str]) -> list[PointRow]:
    """`ids` as one of `replicas` holds them (the next one if it fails)."""
    async def call(client: Any) -> list[PointRow]:
        rows: list[PointRow] = []
        for i in range(0, len(ids), EXPORT_BATCH):
            rows += await asyncio.wait_for(client.export(list(ids[i:i + EXPORT_BATCH])), host.timeout_s)
        return rows
    return await _first(host, replicas, call)


async def export_page(host: Any, replicas: Sequence[int], after: str, limit: int = EXPORT_PAGE) -> list[PointRow]:
    """One keyset page of whole points above `after` from one of `replicas` (ShardApi.export_page)."""
    timeout = max(host.timeout_s, SCAN_TIMEOUT_S)  # a whole-shard read of maintenance, as reads.read(scan=True)
    return await _first(host, replicas, lambda client: asyncio.wait_for(client.export_page(after, limit), timeout))


async def mark(host: Any) -> Mark:
    """Step 1 on the shard's write path `host` (a ReplicatedShard that orders the writes)."""
    async with host._lock():
        seq = host.state.seq
    return Mark(seq, getattr(host, "epoch", ""), caught_up(host, seq))


async def cut(host: Any, since: int, rounds: int = ROUNDS) -> Cut:
    """Step 3: the shard's state at the cut for every id written after `since` (step 1's seq)."""
    out = Cut(since, getattr(host, "epoch", ""))
    holds: list[float] = []

    async def held(fn: Any) -> Any:
        """`fn()` under the write lock (as a write waits: the writes numbered <= seq have landed and are logged);
        the time it held the lock, which is what a write to this shard waited."""
        async with host._lock():
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                holds.append(time.perf_counter() - t0)

    def take(ids: set[str], rows: list[PointRow]) -> None:
        got = {r.id: r for r in rows}
        for pid in ids:
            if pid in got:
                out.rows[pid] = got[pid]
                out.gone.discard(pid)
            else:
                out.rows.pop(pid, None)
                out.gone.add(pid)

    def since_last() -> tuple[int, set[str], float]:
        """(the shard's seq now, ids written since the last round, the wall-clock stamp of this moment: writes
        after it are stamped no earlier; point-in-time restore)"""
        upto = host.state.seq
        return upto, written_since(host.log, out.seq, upto), (host.stamp() if hasattr(host, "stamp") else time.time())

    upto, ids, at = await held(since_last)
    for _ in range(rounds):
        if ids:  # read without the lock: what it returns holds every write <= upto, and maybe some after it
            take(ids, await export(host, caught_up(host, upto), sorted(ids)))
        out.seq, out.at, out.rounds, read = upto, at, out.rounds + 1, ids
        upto, ids, at = await held(since_last)
        if not ids & read:  # no write after S touched an id this round read: each is as it stood at S, and every
            out.pause_ms = round(max(holds) * 1000, 3)  # other id's last read held at S too (not written since)
            return out
    # Writes kept landing on the ids being read: the last round under the lock, which no write can race.
    async with host._lock():
        t0 = time.perf_counter()
        upto, ids, at = since_last()
        if ids:
            take(ids, await export(host, caught_up(host, upto), sorted(ids)))
        out.seq, out.at, out.rounds = upto, at, out.rounds + 1
        holds.append(time.perf_counter() - t0)
    out.pause_ms = round(max(holds) * 1000, 3)
    return out
