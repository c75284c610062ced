"""Write ordering outside the ingress: a shard's sequencer and its persisted operation log.

With `replication.sequencer` on (the Ray deployment), each shard's writes are ordered by one sequencer (a Ray actor,
`router.replication.ray_sequencer.SequencerActor`) that hosts the shard's `ReplicatedShard` write path: it assigns sequence numbers,
appends every write to a `Journal` on disk before sending it to the replicas, acknowledges at the write quorum and
replays (or resyncs) what a replica missed. Any number of ingress replicas send writes to it and read from the
replicas themselves, with a copy of its replica view (`router.replication.replicas.ShardView`) that each write's answer and each heal pass
refresh. An ingress restart loses nothing: the sequence numbers, the log and which replica applied what live in the
journal, and a restarted sequencer reloads them.

Pure: file I/O only, no Ray. The journal is two files in its directory:
    ops.log     frames: 8-byte big-endian length + one JSON frame (router.replication.oplog: data only, never pickle)
    state.json  {"epoch", "seq", "committed", "applied": [per replica]}, replaced atomically after each write
A write is logged before any replica sees it, so a sequencer that dies mid-write replays it on restart (an
upsert or delete applied twice is the same as once). A torn last frame (a crash while appending) is ignored.
The log is bounded in count and in bytes (router.replication.oplog); the file is compacted to the log once it holds twice
either bound, and it is read a frame at a time on load, keeping only what the bounds allow.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import PrismError
from router.replication import cut as cutting
from router.replication.antientropy import Comparison
from router.replication.healing import HealLoop
from router.replication.leases import LOCK_WAIT_S, MOVE_LEASE_S, SharedLocks
from router.replication.oplog import OPLOG_MAX_BYTES, OPLOG_MAX_OPS, LoggedOp, OpLog, decode_frame, encode_abandon, encode_op
from router.replication.replicas import ReplicaSet, ReplicatedShard, ShardView

_LEN = struct.Struct(">Q")
log = logging.getLogger(__name__)


@dataclass
class Journal:
    """A shard's persisted operation log and replica state (see the module docstring)."""

    path: Path
    max_ops: int = OPLOG_MAX_OPS
    max_bytes: int = OPLOG_MAX_BYTES
    epoch: str = ""
    frames: int = 0                       # frames in ops.log now
    file_bytes: int = 0                   # bytes in ops.log now
    _fh: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def ops_file(self) -> Path:
        return self.path / "ops.log"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    # -- loading -----------------------------------------------------------------------------------------------
    def load(self, rs: ReplicaSet) -> OpLog:
        """Restore `rs` (seq, committed, applied per replica) and return the log; a new journal starts empty."""
        state: dict[str, Any] = {}
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
        self.epoch = state.get("epoch") or uuid.uuid4().hex
        ops: dict[int, tuple[LoggedOp, int]] = {}
        held = 0
        for frame, size in self._frames():
            if isinstance(frame, int):
                held -= ops.pop(frame, (None, 0))[1]
                continue
            held += size - ops.get(frame.seq, (None, 0))[1]
            ops[frame.seq] = (frame, size)  # a later frame of the same seq (a restore) replaces it in place
            while ops and (len(ops) > self.max_ops or held > self.max_bytes):
                held -= ops.pop(next(iter(ops)))[1]  # past the bounds: the oldest go (replicas that need them resync)
        log_ = OpLog(self.max_ops, self.max_bytes)
        for seq in sorted(ops):
            log_.append(*ops[seq])
        rs.seq = max([int(state.get("seq", 0))] + [op.seq for op in log_])
        rs.committed = min(int(state.get("committed", 0)), rs.seq)
        applied = list(state.get("applied", []))
        for st in rs.states:
            st.applied_seq = min(int(applied[st.replica]) if st.replica < len(applied) else 0, rs.seq)
        self._compact(log_)  # also drops a torn tail and opens the file for appending
        self.save(rs)
        return log_

    def _frames(self):
        """(frame, its size) from ops.log, one at a time (the file is never read whole)."""
        if not self.ops_file.exists():
            return
        with open(self.ops_file, "rb") as fh:
            first = True
            while len(head := fh.read(_LEN.size)) == _LEN.size:
                (n,) = _LEN.unpack(head)
                if n > 2 * self.max_bytes + 1024:
                    break  # not a length this journal writes: torn or foreign
                blob = fh.read(n)
                if len(blob) < n:
                    break  # torn: the sequencer died while appending it
                try:
                    frame = decode_frame(blob)
                except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
                    if first:
                        log.warning("journal %s: its first frame is not a JSON frame (a journal of an older "
                                    "format?): its log is not replayed; replicas behind are resynced", self.ops_file)
                    break  # a torn frame at the very end
                first = False
                yield frame, _LEN.size + n

    # -- writing -----------------------------------------------------------------------------------------------
    def _append(self, blob: bytes) -> int:
        self._fh.write(_LEN.pack(len(blob)) + blob)
        self._fh.flush()
        self.frames += 1
        self.file_bytes += _LEN.size + len(blob)
        return _LEN.size + len(blob)

    def append(self, op: LoggedOp, log: OpLog) -> int:
        """Log `op` before any replica sees it (`log` does not hold it yet); the file is first compacted to
        `log` once it holds twice the log's bounds. Returns the frame's size (what the log counts for it)."""
        if self.frames >= 2 * self.max_ops or self.file_bytes >= 2 * self.max_bytes:
            self._compact(log)
        return self._append(encode_op(op))

    def replace(self, op: LoggedOp) -> int:
        """Log `op` in place of the logged op of its seq (the last frame of a seq wins on load)."""
        return self._append(encode_op(op))

    def abandon(self, seq: int) -> None:
        """The write `seq` was refused everywhere: it never happened."""
        self._append(encode_abandon(seq))

    def save(self, rs: ReplicaSet) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": self.epoch, "seq": rs.seq, "committed": rs.committed,
                                   "applied": [st.applied_seq for st in rs.states]}))
        os.replace(tmp, self.state_file)

    def _compact(self, log: OpLog) -> None:
        if self._fh is not None:
            self._fh.close()
        tmp = self.ops_file.with_suffix(".tmp")
        size = 0
        with open(tmp, "wb") as fh:
            for op in log:
                blob = encode_op(op)
                fh.write(_LEN.pack(len(blob)) + blob)
                size += _LEN.size + len(blob)
        os.replace(tmp, self.ops_file)
        self.frames, self.file_bytes = len(log), size
        self._fh = open(self.ops_file, "ab")  # noqa: SIM115 - held open for appends, closed by close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass(frozen=True)
class WriteAnswer:
    """A sequenced write's outcome and the sequencer's view after it. A refused write carries the view too: an
    ingress that did not learn of the replica a failed write left behind would go on reading from it as if it
    were caught up (measured: the cause of issue 26's diverged replicas)."""

    acked: list[int]
    view: ShardView
    error: PrismError | None = None

    def result(self) -> list[int]:
        if self.error is not None:
            raise self.error
        return self.acked


class Sequencer:
    """A shard's sequencer: its ReplicatedShard, with a journal, behind write / heal / view. Used in this process
    as it is (tests); the Ray actor (router.replication.ray_sequencer.SequencerHost) is this class built over replica actors.
    `initial` is the view when it was made, as the clients of the Ray one carry it."""

    def __init__(self, host: ReplicatedShard, heal_interval_s: float | None = None):
        """`heal_interval_s`: heal in the background this often (started on the first call, in the caller's event
        loop), without waiting for an ingress to ask; None: only when asked (tests drive it)."""
        if host.journal is None:
            raise ValueError("a sequencer's ReplicatedShard needs a journal")
        self.host = host
        self.initial = host.view()
        self.heal_interval_s = heal_interval_s
        self.healer: HealLoop | None = None
        self._background: asyncio.Task | None = None
        self.locks = SharedLocks()  # moves of routed points by several ingresses (router.collection.locks.shared)

    def _ensure_background(self) -> None:
        """Start (or restart, should it have ended) the background heal loop in the running event loop."""
        if self.heal_interval_s is None or (self._background is not None and not self._background.done()):
            return
        if self.healer is None:
            self.healer = HealLoop(self.background_pass, period_s=self.heal_interval_s)
        self._background = asyncio.get_running_loop().create_task(self.healer.supervise())

    async def background_pass(self) -> dict[str, int]:
        healed, failed = await self.host.heal()
        return {"healed": healed, "failed": failed}

    async def write(self, kind: str, args: Any, wait: bool = True) -> WriteAnswer:
        self._ensure_background()
        try:
            acked = await self.host._write(kind, args, wait)
        except PrismError as exc:
            return WriteAnswer([], self.host.view(), exc)
        return WriteAnswer(acked, self.host.view())

    async def heal(self, probe_now: bool = False) -> tuple[int, int, ShardView]:
        self._ensure_background()
        healed, failed = await self.host.heal(probe_now)
        return healed, failed, self.host.view()

    async def view(self) -> ShardView:
        self._ensure_background()
        return self.host.view()

    async def compare(self) -> Comparison:
        """verify's comparison of the shard's replicas, between writes (it holds the write lock)."""
        self._ensure_background()
        return await self.host.compare_replicas()

    async def lock(self, owner: str, ids: list[str], lease_s: float = MOVE_LEASE_S,
                   wait_s: float = LOCK_WAIT_S) -> list[str]:
        """Hold these ids for `owner` (router.replication.leases): [] once granted, else those still held elsewhere
        after waiting at most `wait_s`."""
        return await self.locks.take(owner, ids, lease_s, wait_s)

    async def unlock(self, owner: str, ids: list[str]) -> list[str]:
        """Release `owner`'s ids; returns those its lease had lost meanwhile."""
        return await self.locks.release(owner, ids)

    async def ship_archive(self) -> dict | None:
        """Ship the journal archive's held writes now (router.replication.archive); its status."""
        return await self.host.ship_archive()

    async def mark(self) -> cutting.Mark:
        """A snapshot's first step on this shard (router.replication.cut.mark)."""
        return await cutting.mark(self.host)

    async def cut(self, since: int) -> cutting.Cut:
        """A snapshot's cut of this shard after its copy from `since` (router.replication.cut.cut)."""
        return await cutting.cut(self.host, since)
