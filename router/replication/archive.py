"""The journal archive: a shard's sequenced writes shipped to the snapshot store before its operation log forgets
them, so the history from the oldest snapshot on is complete (point-in-time restore replays it). Layout and the
choices restore makes: router.schema.archive.

One writer per shard and journal epoch: the shard's write path that numbers the writes (its sequencer, or the process
that orders them itself), so ingress replicas never race on a file. Every write is recorded as it is logged (its
`at` stamped with it); a segment is shipped once `segment_ops` writes or `segment_bytes` are held, on every heal
pass after `interval_s`, and when a restore asks for it. Shipping runs in a thread, outside the write lock.

An unreachable store: the writes stay held (the log's own bounds do not drop them) up to `hold_ops` writes or
`hold_bytes`, retried after `RETRY_S`; past that the oldest held ones are dropped, counted in `status()` (collection
status, `prism_archive_*` metrics) and logged, and the next segment shipped records the gap in the index: restore
refuses any target across it. Nothing is dropped silently. A sequencer that restarts finds what its journal still
holds past the index's last write and ships it; writes its journal no longer held are recorded as a gap.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from router.replication.oplog import LoggedOp, OpLog, decode_frame, encode_op, estimate_bytes
from router.schema import archive as plan
from router.schema.archive import ArchiveIndex, Gap, Segment

log = logging.getLogger(__name__)
RETRY_S = 5.0  # after a failed shipment, wait this long before the next try (a store that is down is not hammered)


class JournalArchive:
    """The archive of one shard's journal epoch in `store` (cluster.snapshot_store.SnapshotStore)."""

    def __init__(self, store: Any, collection: str, shard: int, epoch: str, *, segment_ops: int = 1000,
                 segment_bytes: int = 16 * 1024 ** 2, hold_ops: int = 200_000, hold_bytes: int = 1024 ** 3,
                 interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.store, self.collection, self.shard, self.epoch = store, collection, shard, epoch
        self.prefix = plan.prefix(collection, shard, epoch)
        self.segment_ops, self.segment_bytes = segment_ops, segment_bytes
        self.hold_ops, self.hold_bytes, self.interval_s = hold_ops, hold_bytes, interval_s
        self.clock = clock
        self.pending: deque[tuple[LoggedOp, int]] = deque()
        self.held_bytes = 0
        self.dropped = 0          # writes dropped unarchived, ever (each is in a recorded gap, or will be)
        self.last_seen = 0        # the last write recorded
        self.error = ""           # the last shipment's failure ("" once one succeeds)
        self.next_try = 0.0
        self.next_ship = clock() + interval_s
        self.index = ArchiveIndex(collection=collection, shard=shard, epoch=epoch)
        self.loaded = False

    def _load(self) -> None:
        """The index as stored (a restarted writer goes on from it)."""
        try:
            self.index = ArchiveIndex.model_validate(json.loads(self.store.read(f"{self.prefix}/{plan.INDEX}")))
        except FileNotFoundError:
            pass
        self.loaded = True

    def start(self, oplog: OpLog, seq: int) -> None:
        """After a journal was loaded: hold what it has past the archived writes (blocking: reads the index; an
        unreachable store is retried by the first shipment)."""
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - reported in status, retried on the next shipment
            self.error = f"reading the index: {exc}"
        for op in oplog:
            if op.seq > self.index.upto:
                self.record(op)
        self.last_seen = max(self.last_seen, seq)

    # -- on the write path (under the shard's write lock) -----------------------------------------------------
    def record(self, op: LoggedOp, size: int | None = None) -> bool:
        """Hold `op` until it is shipped; True when a segment is due."""
        size = estimate_bytes(op) if size is None else size
        self.pending.append((op, size))
        self.held_bytes += size
        self.last_seen = max(self.last_seen, op.seq)
        while len(self.pending) > self.hold_ops or self.held_bytes > self.hold_bytes:
            old, old_size = self.pending.popleft()
            self.held_bytes -= old_size
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("shard %d: the journal archive could not ship (%s) and holds at most %d writes: write %d "
                          "dropped unarchived (%d so far); point-in-time restore past it is refused", self.shard,
                          self.error or "store unreachable", self.hold_ops, old.seq, self.dropped)
        return self.due()

    def due(self) -> bool:
        now = self.clock()
        if now < self.next_try:
            return False
        return len(self.pending) >= self.segment_ops or self.held_bytes >= self.segment_bytes or \
            (bool(self.pending) and now >= self.next_ship)

    def take(self) -> tuple[list[LoggedOp], int]:
        """The writes to ship now and the last write numbered (under the write lock, with the time stamped then)."""
        return [op for op, _ in self.pending], self.last_seen

    # -- in a thread ------------------------------------------------------------------------------------------
    def ship(self, batch: list[LoggedOp], seen: int, through: float) -> bool:
        """Write `batch` as segments (each at most segment_ops writes), then the index; `through`: every write
        stamped before it is in `batch` or archived already, and `seen` was the last write numbered then. False
        (the writes stay held, retried later) if the store fails."""
        try:
            if not self.loaded:
                self._load()
            index = self.index.model_copy(deep=True)
            batch = [op for op in batch if op.seq > index.upto]
            end = batch[0].seq - 1 if batch else seen
            if end > index.upto:  # writes numbered before what is held were never archived
                index.gaps.append(Gap(first=index.upto + 1, last=end, noted=time.time()))
                index.upto = end
            for i in range(0, len(batch), max(1, self.segment_ops)):
                part = batch[i:i + self.segment_ops]
                data = b"".join(encode_op(op) + b"\n" for op in part)
                name = plan.segment_name(part[0].seq, part[-1].seq)
                sha, n = self.store.write(f"{self.prefix}/{name}", data)
                index.segments.append(Segment(file=name, first=part[0].seq, last=part[-1].seq, first_at=part[0].at,
                                              last_at=part[-1].at, sha256=sha, bytes=n))
                index.upto = part[-1].seq
            index.through = max(index.through, through)
            self.store.write(f"{self.prefix}/{plan.INDEX}", index.model_dump_json().encode())  # last: it names them
        except Exception as exc:  # noqa: BLE001 - held and retried: the store may be down for a while
            self.error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self.next_try = self.clock() + RETRY_S
            log.warning("shard %d: the journal archive could not ship %d writes: %s", self.shard, len(batch),
                        self.error)
            return False
        self.index, self.error = index, ""
        self.next_ship = self.clock() + self.interval_s
        return True

    def shipped(self) -> None:
        """Forget the held writes the index now holds (back in the event loop, after `ship`)."""
        while self.pending and self.pending[0][0].seq <= self.index.upto:
            self.held_bytes -= self.pending.popleft()[1]

    def status(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "archived_seq": self.index.upto, "held": len(self.pending),
                "held_bytes": self.held_bytes, "dropped": self.dropped, "gaps": len(self.index.gaps),
                "complete_until": plan.rfc3339(self.index.through) if self.index.through else None,
                "error": self.error or None}


def read_index(store: Any, collection: str, shard: int, epoch: str) -> ArchiveIndex | None:
    """A shard's archive index, None if it has none."""
    try:
        raw = store.read(f"{plan.prefix(collection, shard, epoch)}/{plan.INDEX}")
    except FileNotFoundError:
        return None
    return ArchiveIndex.model_validate(json.loads(raw))


def read_segment(store: Any, index: ArchiveIndex, seg: Segment) -> list[LoggedOp]:
    """A segment's writes, its sha256 and size checked against the index; ValueError naming the file otherwise."""
    import hashlib

    path = f"{plan.prefix(index.collection, index.shard, index.epoch)}/{seg.file}"
    try:
        data = store.read(path)
    except FileNotFoundError:
        raise ValueError(f"archive segment {path} is missing") from None
    if (hashlib.sha256(data).hexdigest(), len(data)) != (seg.sha256, seg.bytes):
        raise ValueError(f"archive segment {path} is corrupted (its sha256 or size differs from the index's)")
    ops = []
    for line in data.splitlines():
        frame = decode_frame(line)
        if isinstance(frame, int):
            raise ValueError(f"archive segment {path} holds an abandon frame")
        ops.append(frame)
    return ops


def archive_for(store: Any, collection: str, shard: int, epoch: str, settings: Any,
                fresh: bool = False) -> JournalArchive:
    """A shard's archive with `settings` (cluster.config.ArchiveSettings); `fresh`: its epoch was just made (no
    index to read)."""
    a = JournalArchive(store, collection, shard, epoch, segment_ops=settings.segment_ops,
                       segment_bytes=settings.segment_bytes, hold_ops=settings.hold_ops, hold_bytes=settings.hold_bytes,
                       interval_s=settings.interval_s)
    a.loaded = fresh
    return a
