"""One shard's replicas behind one read/write interface (`ReplicatedShard`): sequenced quorum writes, the operation
log, heal, and anti-entropy. What it knows of each replica is a `router.replication.replica_set.ReplicaSet`; how
reads reach the replicas (spread by load, failover, hedging, batching) is `router.replication.reads`; how replicas
are brought back in step is `router.replication.repair`.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings
from cluster.errors import ShardUnavailable, describe
from router.replication.oplog import LoggedOp, OpLog, estimate_bytes
from router.replication.reads import Reads
from router.replication.repair import REFUSALS, RESYNC_BATCH, Repairs, apply_op  # noqa: F401 - RESYNC_BATCH: re-exported
from router.replication.replica_set import (  # noqa: F401 - re-exported: callers import them from here
    FAIL_THRESHOLD, PROBE_INTERVAL_S, ReplicaSet, ReplicaState, quorum,
)
from shards.api import PointRow, ShardApi

log = logging.getLogger(__name__)
T = TypeVar("T")


DEFAULT_TIMEOUT_S = 10.0
HEAL_PING_TIMEOUT_S = 2.0
# The only ingress asks its sequencer this often even when its view shows nothing to heal: a sequencer that Ray
# restarted (it reloads its journal) runs its own heal loop only once called, and what a write in flight when it
# died left on some replicas only is replayed by a heal pass.
SEQUENCER_POLL_S = 5.0
SEQUENCER_RETRY_PAUSE_S = 0.05  # first pause before a write is sent again to a sequencer that did not answer


@dataclass(frozen=True)
class ShardView:
    """What a shard's sequencer knows about its replicas, as an ingress needs it to route reads.

    `epoch` names the sequencer's journal: a view from another epoch (the journal was lost or the collection made
    again) replaces the ingress's copy instead of being merged into it."""

    epoch: str
    seq: int
    committed: int
    applied: tuple[int, ...]
    resyncs: int = 0
    agreement: tuple[str, ...] = ()               # per replica: "", "verifying" or "diverged" (anti-entropy)
    checked_at: tuple[float | None, ...] = ()      # per replica: wall-clock time it was last found equal
    mismatches: int = 0                           # replicas found differing from the reference, ever
    repairs: int = 0                              # ids repaired by anti-entropy, ever
    archive: dict | None = None                   # the journal archive's status (router.replication.archive)


class ReplicatedShard(Reads, Repairs):
    """The replicas of one shard behind one read/write interface; the router never picks a replica itself."""

    def __init__(self, shard: int, clients: Sequence[ShardApi], *, key: str = "", write_quorum: str | int = "majority",
                 timeout_s: float = DEFAULT_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
                 observe: Callable[[int, float], None] | None = None, batching: BatchSettings | None = None,
                 hedge: bool = True, journal: Any | None = None, sequencer: Any | None = None,
                 read_replicas: str = "spread", rng: random.Random | None = None):
        """`read_replicas`: "spread" reads over the replicas by load (`rng` draws the choices), "sticky" to one
        preferred replica (router.replication.selection). `journal` (router.replication.sequencer.Journal): persist the sequence numbers, the log and what each replica
        applied, and start from what it holds (this object is then a shard's sequencer). `sequencer`: send writes
        and heal passes to the shard's sequencer instead of ordering them here (this object is then one of any
        number of ingress copies; its replica view follows the sequencer's answers)."""
        self.shard = shard
        self.batching = batching
        self.hedge = hedge and len(clients) > 1  # hedged reads need a second replica
        self.hedged = 0  # reads that went to a second replica because the first was slower than its p95
        self.clients = list(clients)
        self.state = ReplicaSet(shard, len(self.clients), key=key, clock=clock, read_replicas=read_replicas,
                                rng=rng or random.Random())
        self.quorum = quorum(write_quorum, len(self.clients))
        self.timeout_s = timeout_s
        self.observe = observe
        self.log = OpLog()  # bounded in count and bytes: a replica further behind is resynced from a caught-up one
        self.resyncs = 0  # replicas rebuilt by copying (they were further behind than the log)
        self.mismatches = 0  # anti-entropy: replicas found differing from the reference
        self.repairs = 0     # anti-entropy: ids copied to a differing replica
        # Anti-entropy (router.replication.repair.Repairs.anti_entropy) during heal passes: every this many seconds and right
        # after a replica restart; None: never (an ingress copy: its sequencer does it).
        self.anti_entropy_interval_s: float | None = None
        self.digest_rescan_s: float | None = None
        self.next_anti_entropy = 0.0
        self.journal = journal
        self.sequencer = sequencer
        self.poll_sequencer = True  # False: the only ingress (see _heal_through_sequencer)
        self.ask_sequencer = False  # a call to the sequencer failed (it may have died mid-write): ask it next pass
        self.next_sequencer_poll = clock() + SEQUENCER_POLL_S
        self.epoch = ""   # the sequencer's journal whose view this copy holds
        if journal is not None:
            self.log = journal.load(self.state)
            self.epoch = journal.epoch
        # Point-in-time recovery: each write is stamped with the wall-clock time (never decreasing within the
        # shard) and, with an archive (router.replication.archive), shipped to the snapshot store.
        self.wall: Callable[[], float] = time.time
        self.last_at = max((op.at for op in self.log), default=0.0)
        self.archive: Any | None = None
        self.archive_view: dict | None = None  # an ingress copy: the sequencer's archive status
        self._shipping: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> its shipment lock
        self._ship_task: asyncio.Task | None = None
        self._locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._coalescers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {replica: Coalescer}

    def _lock(self) -> asyncio.Lock:
        """Per event loop: this shard's writes and replays apply in sequence order."""
        return self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())

    # -- writes ------------------------------------------------------------------------------------------------
    async def upsert(self, rows: Sequence[PointRow], wait: bool = True) -> list[int]:
        return await self._write("upsert", list(rows), wait)

    async def delete(self, ids: Sequence[str], wait: bool = True) -> list[int]:
        return await self._write("delete", list(ids), wait)

    async def _write(self, kind: str, args: Sequence[Any], wait: bool = True) -> list[int]:
        """Sequence the write, send it to every caught-up replica, acknowledge at the write quorum.

        Replicas that miss it (down, failed, or already behind) are stale until `heal` replays the log to them: a
        write that missed its quorum rolls forward (503, "may still be applied"). A write refused (a bad request,
        or a value Milvus will not store) ends nowhere: abandoned when every target refused it, undone where it
        landed when only some did (docs/operations.md, "Replica agreement").
        With a sequencer, it orders and sends the write and this copy adopts its replica view."""
        if self.sequencer is not None:
            answer = await self._through_sequencer(kind, args, wait)
            self.adopt(answer.view)  # a refused write too: it may have left a replica behind
            return answer.result()
        async with self._lock():
            rs = self.state
            targets = rs.write_targets()
            seq = rs.next_seq()
            op = LoggedOp(seq, kind, args, self.stamp())
            size = self.journal.append(op, self.log) if self.journal is not None else None  # before any replica
            # sees it: a sequencer restart replays it
            results = await asyncio.gather(
                *(asyncio.wait_for(apply_op(self.clients[r], kind, args, wait), self.timeout_s) for r in targets),
                return_exceptions=True,
            )
            refusals = [(r, res) for r, res in zip(targets, results) if isinstance(res, REFUSALS)]
            if refusals and len(refusals) == len(targets):  # refused everywhere: it landed nowhere
                rs.abandon(seq)
                if self.journal is not None:
                    self.journal.abandon(seq)
                    self.journal.save(rs)
                raise refusals[0][1]
            if refusals:  # refused by some, applied (or maybe applied) by others: undone where it landed
                try:
                    op, results = await self._undo(op, refusals[0][0], targets, results)
                except Exception as exc:  # noqa: BLE001 - rolled forward instead: a replay refused is copied over
                    log.warning("shard %d: undoing write %d failed (%s); the replicas that refused it are healed "
                                "from one that applied it", self.shard, seq, describe(exc))
            if size is None and self.archive is not None:
                size = estimate_bytes(op)  # once, for the log and the archive
            self.log.append(op, size)
            if self.archive is not None and self.archive.record(op, size):
                self._ship_soon()
            acked, errors = [], []
            for r, res in zip(targets, results):
                if isinstance(res, BaseException):
                    reason = f"replica {r}: {describe(res)}"
                    rs.on_failure(r, reason, fatal=isinstance(res, ShardUnavailable))
                    errors.append(reason)
                else:
                    rs.applied(r, seq)
                    rs.on_success(r)
                    acked.append(res)
            if len(acked) >= self.quorum:
                rs.commit(seq)
            if self.journal is not None:
                self.journal.save(rs)
            if refusals:
                raise refusals[0][1]
            if len(acked) < self.quorum:
                raise ShardUnavailable(
                    f"write to shard {self.shard} not acknowledged: {len(acked)} of {len(self.clients)} replicas "
                    f"applied it, quorum is {self.quorum}; it is logged and may still be applied (the replicas "
                    "that missed it get it once back), so retrying it is safe"
                    + (f" ({'; '.join(errors)})" if errors else ""), shards=[self.shard])
            return acked

    async def _through_sequencer(self, kind: str, args: Sequence[Any], wait: bool) -> Any:
        """The sequencer's answer to the write. A call that fails on the way (its actor died or is restarting)
        is sent again until it answers, within `timeout_s`: the write may or may not be in its journal (one that
        waited for the shard's write lock when it died is not), and the caller's ShardUnavailable would roll it
        forward (Elasticsearch keeps it) whether or not anything will replay it; applied twice is the same as
        once. Any failure leaves this copy asking the sequencer to heal on its next pass."""
        deadline, pause = time.monotonic() + self.timeout_s, SEQUENCER_RETRY_PAUSE_S
        while True:
            try:
                return await self.sequencer.write(kind, args, wait)
            except ShardUnavailable:
                self.ask_sequencer = True  # no view came back: it may have died with the write on some replicas
                if time.monotonic() + pause > deadline:
                    raise
            except BaseException:
                self.ask_sequencer = True
                raise
            await asyncio.sleep(pause)  # a backoff while Ray restarts the sequencer, not a synchronisation
            pause = min(2 * pause, 1.0)

    # -- the journal archive -----------------------------------------------------------------------------------
    def stamp(self) -> float:
        """Now, by the wall clock, never before the last stamp: a write's `at` (under the write lock)."""
        self.last_at = max(self.wall(), self.last_at)
        return self.last_at

    def _ship_soon(self) -> None:
        if self._ship_task is None or self._ship_task.done():
            self._ship_task = asyncio.get_running_loop().create_task(self.ship_archive())

    async def ship_archive(self) -> dict | None:
        """Ship the held writes to the archive now (one shipment at a time); its status after."""
        if self.sequencer is not None:
            self.archive_view = await self.sequencer.ship_archive()
            return self.archive_view
        if self.archive is None:
            return None
        async with self._shipping.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
            async with self._lock():
                (batch, seen), through = self.archive.take(), self.stamp()
            if await asyncio.to_thread(self.archive.ship, batch, seen, through):
                self.archive.shipped()
        return self.archive.status()

    def start_archive(self, archive: Any) -> None:
        """Archive this shard's writes from now on (and what its journal holds past the archived ones)."""
        archive.start(self.log, self.state.seq)
        self.last_at = max(self.last_at, archive.index.through)  # later stamps never fall inside what it covers
        self.archive = archive

    def archive_status(self) -> dict | None:
        return self.archive.status() if self.archive is not None else self.archive_view

    # -- healing -----------------------------------------------------------------------------------------------
    async def heal(self, probe_now: bool = False) -> tuple[int, int]:
        """Probe dead replicas and replay missed writes to stale ones; returns (healed, failed).
        With a sequencer, it heals (replays, resyncs) and this copy adopts its view, then probes the replicas
        this copy saw fail on reads. `probe_now`: dead replicas are probed now, not at their backoff's end."""
        if probe_now:
            self.state.probe_now()
        if self.sequencer is not None:
            return await self._heal_through_sequencer(probe_now)
        healed = failed = 0
        for r in self.state.needs_healing():
            async with self._lock():
                try:
                    await self._catch_up(r)
                    healed += 1
                except Exception as exc:  # noqa: BLE001 - recorded on the replica, retried on the next probe
                    self.state.probe_failed(r, f"heal: {describe(exc)}")
                    log.warning("shard %d replica %d: heal failed: %s", self.shard, r, describe(exc))
                    failed += 1
        if self.anti_entropy_interval_s is not None:
            now = self.state.clock()
            restarted = any(st.agreement == "verifying" for st in self.state.states)
            if restarted or now >= self.next_anti_entropy:
                self.next_anti_entropy = now + self.anti_entropy_interval_s
                try:
                    await self.anti_entropy(self.digest_rescan_s)
                except Exception as exc:  # noqa: BLE001 - compared again on the next pass
                    log.warning("shard %d: anti-entropy pass failed: %s", self.shard, describe(exc))
                    failed += 1
        if self.journal is not None and (healed or failed):
            self.journal.save(self.state)
        if self.archive is not None and self.archive.due():
            await self.ship_archive()
        return healed, failed

    async def _heal_through_sequencer(self, probe_now: bool = False) -> tuple[int, int]:
        healed = failed = 0
        # With one ingress every write's answer updates this view, so the sequencer is asked only when a replica
        # is behind here, or not known to agree (verifying, diverged: this copy learns when it is repaired), after
        # a call to it failed (it died, maybe mid-write: a restarted sequencer heals only once called), and every
        # SEQUENCER_POLL_S; with several, each pass also learns what the others' writes left behind.
        rs, now = self.state, self.state.clock()
        if probe_now or self.poll_sequencer or self.ask_sequencer or now >= self.next_sequencer_poll \
                or rs.needs_healing() or any(st.agreement for st in rs.states):
            self.ask_sequencer = True
            healed, failed, view = await (self.sequencer.heal(probe_now) if probe_now else self.sequencer.heal())
            self.ask_sequencer, self.next_sequencer_poll = False, now + SEQUENCER_POLL_S
            self.adopt(view)
        for st in rs.states:
            if st.healthy or now < st.next_probe_at:
                continue
            try:
                await asyncio.wait_for(self.clients[st.replica].ping(), HEAL_PING_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - recorded on the replica, retried on the next probe
                rs.probe_failed(st.replica, f"probe: {describe(exc)}")
                failed += 1
            else:
                rs.on_success(st.replica)
                healed += 1
        return healed, failed

    # -- the sequencer's view ----------------------------------------------------------------------------------
    def view(self) -> ShardView:
        rs = self.state
        return ShardView(self.epoch, rs.seq, rs.committed, tuple(st.applied_seq for st in rs.states), self.resyncs,
                         tuple(st.agreement for st in rs.states), tuple(st.checked_at for st in rs.states),
                         self.mismatches, self.repairs, self.archive_status())

    def adopt(self, view: ShardView) -> None:
        """Take the sequencer's replica view. Views of one epoch only move forward (answers to concurrent writes
        arrive in any order); a new epoch replaces this copy's."""
        rs = self.state
        if view.epoch != self.epoch:
            self.epoch, rs.seq, rs.committed = view.epoch, view.seq, view.committed
            for st, a in zip(rs.states, view.applied):
                st.applied_seq = a
        else:
            rs.seq, rs.committed = max(rs.seq, view.seq), max(rs.committed, view.committed)
            for st, a in zip(rs.states, view.applied):
                st.applied_seq = max(st.applied_seq, a)
        self.resyncs, self.mismatches, self.repairs = view.resyncs, view.mismatches, view.repairs
        self.archive_view = view.archive
        if len(view.agreement) == len(rs.states):
            for st, a, t in zip(rs.states, view.agreement, view.checked_at):
                st.agreement, st.checked_at = a, t

    async def _catch_up(self, r: int) -> None:
        rs, client = self.state, self.clients[r]
        info = await asyncio.wait_for(client.ping(), HEAL_PING_TIMEOUT_S)
        rs.saw_incarnation(r, (info or {}).get("incarnation"), verify=self.anti_entropy_interval_s is not None)
        start = rs.states[r].applied_seq
        ops = [op for op in self.log if op.seq > start]
        if start < rs.seq and (not ops or ops[0].seq != start + 1):  # the writes it missed left the log
            await self._resync_replica(r)
            return
        for op in ops:  # replayed visibly: the replica serves reads (bounded ones too) as soon as it is caught up
            try:
                await asyncio.wait_for(apply_op(client, op.kind, op.args, True), self.timeout_s)
            except REFUSALS as exc:
                await self._skip_refused(r, op, exc)
            rs.applied(r, op.seq)
        rs.on_success(r)


    # -- status ------------------------------------------------------------------------------------------------
    async def _each(self, ask: Callable[[ShardApi], Awaitable[T]], timeout_s: float) -> list[T | None]:
        """`ask` every replica at once; None where one did not answer (status reports it as such)."""
        async def one(client: ShardApi) -> T | None:
            try:
                return await asyncio.wait_for(ask(client), timeout_s)
            except Exception:  # noqa: BLE001 - a replica that does not answer is reported as such
                return None
        return list(await asyncio.gather(*(one(c) for c in self.clients)))

    async def counts(self) -> list[dict[str, int] | None]:
        """Points per space on every replica (None where one did not answer)."""
        return await self._each(lambda c: c.count(), self.timeout_s)

    async def nodes(self) -> list[str | None]:
        """The Ray node each replica runs on (None: in-process, or not answering)."""
        return await self._each(lambda c: c.node(), HEAL_PING_TIMEOUT_S)

    def replica_report(self) -> list[dict]:
        return self.state.replica_report()


def replicate(config: CollectionConfig, clients: Sequence[Sequence[ShardApi]], *, first_shard: int = 0,
              timeout_s: float = DEFAULT_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
              observe: Callable[[int, float], None] | None = None,
              batching: BatchSettings | None = None, hedge: bool = True,
              sequencers: Sequence[Any] | None = None, poll_sequencer: bool = True,
              read_replicas: str = "spread") -> list[ReplicatedShard]:
    """One ReplicatedShard per row of clients; `clients[i]` are the replicas of shard `first_shard + i`.
    `sequencers[i]`: shard `first_shard + i`'s sequencer (router.replication.sequencer); its current view is adopted at once,
    so a new ingress never reads from a replica the sequencer knows is behind. `poll_sequencer=False`: this is
    the only ingress, which asks the sequencers to heal only when its own view has a replica behind."""
    out = []
    for i, row in enumerate(clients):
        seq = sequencers[i] if sequencers is not None else None
        sh = ReplicatedShard(first_shard + i, row, key=f"{config.name}/{first_shard + i}",
                             write_quorum=config.write_quorum, timeout_s=timeout_s, clock=clock, observe=observe,
                             batching=batching, hedge=hedge, sequencer=seq, read_replicas=read_replicas)
        if seq is not None:
            sh.adopt(seq.initial)
            sh.poll_sequencer = poll_sequencer
        out.append(sh)
    return out
