"""How a shard's replicas are brought back in step: a refused write undone, a refused replay copied over, a
replica too far behind resynced, replicas compared by digest and repaired (anti-entropy). A mixin of
`router.replication.replicas.ReplicatedShard`, kept apart by job; everything here runs under the shard's write lock."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from cluster.errors import InvalidRequest, ShardUnavailable, SpaceNotFound, WriteRefused, describe
from router.replication.antientropy import Comparison, compare, now_s
from router.replication.oplog import LoggedOp

log = logging.getLogger("router.replication.replicas")
RESYNC_BATCH = 1_000     # points per page of a resync copy
# A replica's refusal of a write: the same write would be refused again, so it is never replayed.
REFUSALS = (InvalidRequest, SpaceNotFound, WriteRefused)


async def apply_op(client: Any, kind: str, args: Sequence[Any], wait: bool = True) -> int:
    if kind == "upsert":
        return await client.upsert(args, wait)
    if kind == "delete":
        return await client.delete(args, wait)
    if kind == "restore":  # [rows to put back, ids to remove]: a refused write undone (Repairs._undo)
        rows, gone = args
        n = await client.upsert(rows, wait) if rows else 0
        return n + (await client.delete(gone, wait) if gone else 0)
    raise ValueError(f"unknown write kind {kind!r}")


class Repairs:
    """Repairs over `self.clients`, `self.state` (a ReplicaSet), `self.log`, `self.journal`, `self.timeout_s`."""

    async def _undo(self, op: LoggedOp, refuser: int, targets: list[int], results: list[Any]
                    ) -> tuple[LoggedOp, list[Any]]:
        """A write some targets refused and others applied: put back, on every replica, what the refusing one
        holds for the write's ids (it holds them as they were before the write: the targets had all applied
        every earlier write). The logged op becomes that restore, so replicas that missed it, or whose outcome is
        unknown, replay the restore, never the refused write. Returns the restore and each target's outcome of it
        (an exception where it is not known to hold it). Under the write lock."""
        ids = [p.id for p in op.args] if op.kind == "upsert" else list(op.args)
        before = await asyncio.wait_for(self.clients[refuser].export(ids), self.timeout_s)
        restore = LoggedOp(op.seq, "restore", [before, sorted(set(ids) - {p.id for p in before})], op.at)
        if self.journal is not None:
            self.journal.replace(restore)  # the last frame of a seq wins on load
        outcomes: list[Any] = []
        for r, res in zip(targets, results):
            if isinstance(res, REFUSALS):
                outcomes.append(0)  # it never changed: it holds the restored state
                continue
            try:
                outcomes.append(await asyncio.wait_for(apply_op(self.clients[r], restore.kind, restore.args, True),
                                                       self.timeout_s))
            except Exception as exc:  # noqa: BLE001 - it stays behind and is healed with the restore
                outcomes.append(exc)
        log.warning("shard %d: write %d refused by replica %d and applied elsewhere: undone (%d ids)", self.shard,
                    op.seq, refuser, len(ids))
        return restore, outcomes


    async def _skip_refused(self, r: int, op: LoggedOp, exc: BaseException) -> None:
        """Replica `r` refuses to replay `op`, which another replica applied: `r` takes that replica's rows for the
        op's ids instead (the later ops replayed after it give every id its last value, as on the source). With no
        replica that applied it, nobody holds it: the op is dropped from the log (replaying it forever would keep
        `r` behind for good)."""
        rs = self.state
        ids = [p.id for p in op.args] if op.kind == "upsert" else \
            list(op.args) if op.kind == "delete" else [p.id for p in op.args[0]] + list(op.args[1])
        sources = sorted((i for i in range(len(self.clients)) if i != r and rs.states[i].healthy
                          and rs.states[i].applied_seq >= op.seq), key=lambda i: -rs.states[i].applied_seq)
        if not sources:
            log.warning("shard %d: write %d refused on replay by replica %d (%s) and held by no replica: dropped",
                        self.shard, op.seq, r, describe(exc))
            return
        await self._copy_ids(sources[0], r, ids)
        log.warning("shard %d: write %d refused on replay by replica %d (%s): its %d ids copied from replica %d",
                    self.shard, op.seq, r, describe(exc), len(ids), sources[0])

    async def _copy_ids(self, src: int, dst: int, ids: Sequence[str]) -> None:
        """Make replica `dst` hold what replica `src` holds for `ids` (rows copied, ids `src` lacks removed)."""
        rows = await asyncio.wait_for(self.clients[src].export(list(ids)), self.timeout_s)
        await asyncio.wait_for(apply_op(self.clients[dst], "restore", [rows, sorted(set(ids) - {p.id for p in rows})]),
                               self.timeout_s)

    async def _resync_replica(self, r: int) -> None:
        """Copy a caught-up replica onto replica `r`, which is further behind than the operation log: every point
        the source holds (keyset pages of RESYNC_BATCH ids, exported whole and upserted visibly), then whatever
        `r` holds that the source does not is deleted. Runs under the shard's write lock (writes wait; reads go to
        the other replicas, as `r` is not readable until it is done)."""
        rs, target = self.state, self.clients[r]
        sources = [i for i in rs.read_order() if i != r and rs.states[i].applied_seq >= rs.seq and rs.states[i].healthy]
        if not sources:
            raise ShardUnavailable(f"replica {r} of shard {self.shard} is {rs.seq - rs.states[r].applied_seq} writes "
                                   "behind, beyond the operation log, and no caught-up replica can be copied from",
                                   shards=[self.shard])
        src, behind = self.clients[sources[0]], rs.seq - rs.states[r].applied_seq
        held: set[str] = set()
        copied = removed = 0
        after = ""
        while page := await asyncio.wait_for(src.scan(after, RESYNC_BATCH), self.timeout_s):
            rows = await asyncio.wait_for(src.export(page), self.timeout_s)
            if rows:
                await asyncio.wait_for(target.upsert(rows, True), self.timeout_s)
            held.update(page)
            copied += len(rows)
            after = page[-1]
        after = ""
        while page := await asyncio.wait_for(target.scan(after, RESYNC_BATCH), self.timeout_s):
            extra = [i for i in page if i not in held]
            if extra:
                await asyncio.wait_for(target.delete(extra, True), self.timeout_s)
                removed += len(extra)
            after = page[-1]
        rs.applied(r, rs.seq)
        rs.on_success(r)
        self.resyncs += 1
        log.warning("shard %d replica %d was %d writes behind, beyond the operation log: copied %d points from "
                    "replica %d, removed %d", self.shard, r, behind, copied, sources[0], removed)

    # -- verify ------------------------------------------------------------------------------------------------
    async def compare_replicas(self) -> Comparison:
        """`prism verify`'s comparison of this shard's replicas: each rebuilds its digest by a full scan first
        (outside the write lock: writes go on; it catches rows changed behind prism's back), then they are compared
        under the write lock, between writes: a write that has reached one replica and not yet another is not a
        difference (on a busy shard it would otherwise be named, and verify exit 1 on equal replicas). With a
        sequencer, the sequencer compares (it holds the shard's write lock). The reference is the first readable
        replica."""
        if getattr(self, "sequencer", None) is not None:
            return await self.sequencer.compare()
        rs = self.state
        order = rs.read_order()
        replicas = order + [r for r in range(len(self.clients)) if r not in order]
        limit = max(self.timeout_s, 600.0)
        await asyncio.gather(*(asyncio.wait_for(self.clients[r].digest(0.0), limit) for r in replicas),
                             return_exceptions=True)  # one that fails is scanned (or reported) by compare below
        async with self._lock():
            return await compare(self.shard, self.clients, replicas, replicas[0], timeout_s=limit)

    # -- anti-entropy ------------------------------------------------------------------------------------------
    async def anti_entropy(self, rescan_after_s: float | None = None) -> Comparison | None:
        """Compare the caught-up healthy replicas by digest and copy the ids that differ from the reference onto
        the others; a replica that differs is `diverged` (not live, read last) until a comparison finds it equal.
        With one replica there is nothing to compare it with: it is taken as it is."""
        rs = self.state
        # Digests that need a full scan (first use after a restart, a rescan due) are built before the write lock
        # is taken: writes go on meanwhile (each replica folds the writes that land during its scan into it).
        warm = [r for r in rs.preference if rs.states[r].healthy and rs.states[r].applied_seq >= rs.seq]
        if len(warm) > 1:
            await asyncio.gather(*(asyncio.wait_for(self.clients[r].digest(rescan_after_s), max(self.timeout_s, 600.0))
                                   for r in warm), return_exceptions=True)
        async with self._lock():
            ready = [r for r in rs.preference if rs.states[r].healthy and rs.states[r].applied_seq >= rs.seq]
            if len(rs.states) == 1 and ready:
                rs.states[0].agreement, rs.states[0].checked_at = "", now_s()
                return None
            if len(ready) < 2:
                return None  # the others are being healed; compared once they are caught up
            trusted = [r for r in ready if not rs.states[r].agreement]
            ref = (trusted or ready)[0]
            found = await compare(self.shard, self.clients, ready, ref, timeout_s=max(self.timeout_s, 60.0))
            for r, d in found.digests.items():
                rs.saw_incarnation(r, d.get("incarnation"))
            for r, why in found.unanswered.items():
                log.warning("shard %d replica %d: not compared: %s", self.shard, r, why)
            if found.reference is None:
                return found
            for r, ids in found.differing.items():
                st = rs.states[r]
                if ids:
                    self.mismatches += 1
                    st.agreement = "diverged"
                    log.warning("shard %d replica %d differs from the others in %d ids (first: %s): repairing",
                                self.shard, r, len(ids), ids[:5])
                    by_source: dict[int, list[str]] = {}
                    for i in ids:
                        by_source.setdefault(found.sources[i], []).append(i)
                    for src, some in by_source.items():
                        for k in range(0, len(some), RESYNC_BATCH):
                            await self._copy_ids(src, r, some[k:k + RESYNC_BATCH])
                    self.repairs += len(ids)
            again = found
            if any(found.differing.values()):  # repaired: found equal only by a comparison after the repairs
                again = await compare(self.shard, self.clients, ready, ref, timeout_s=max(self.timeout_s, 60.0))
            for r in found.differing:
                if again.differing.get(r) == [] and r not in again.unanswered:
                    rs.states[r].agreement, rs.states[r].checked_at = "", now_s()
                # else: still differs (or did not answer): diverged until a later pass finds it equal
            if not found.unanswered.get(ref):
                rs.states[ref].agreement, rs.states[ref].checked_at = "", now_s()
            return found
