"""Write ordering outside the ingress: a shard's sequencer and its persisted operation log.

With `replication.sequencer` on (the Ray deployment), each shard's writes are ordered by one sequencer (a Ray actor,
`shards.actor.SequencerActor`) that hosts the shard's `ReplicatedShard` write path: it assigns sequence numbers,
appends every write to a `Journal` on disk before sending it to the replicas, acknowledges at the write quorum and
replays (or resyncs) what a replica missed. Any number of ingress replicas send writes to it and read from the
replicas themselves, with a copy of its replica view (`router.replicas.ShardView`) that each write's answer and each heal pass
refresh. An ingress restart loses nothing: the sequence numbers, the log and which replica applied what live in the
journal, and a restarted sequencer reloads them.

Pure: file I/O only, no Ray. The journal is two files in its directory:
    ops.log     frames (8-byte big-endian length + pickle): ("op", seq, kind, args) or ("abandon", seq)
    state.json  {"epoch", "seq", "committed", "applied": [per replica]}, replaced atomically after each write
A write is logged before any replica sees it, so a sequencer that dies mid-write replays it on restart (an
upsert or delete applied twice is the same as once). A torn last frame (a crash while appending) is ignored.
"""
from __future__ import annotations

import asyncio
import json
import os
import pickle
import struct
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import PrismError
from router.healing import HealLoop
from router.replicas import OPLOG_MAX_OPS, LoggedOp, ReplicaSet, ReplicatedShard, ShardView

_LEN = struct.Struct(">Q")


@dataclass
class Journal:
    """A shard's persisted operation log and replica state (see the module docstring)."""

    path: Path
    max_ops: int = OPLOG_MAX_OPS
    epoch: str = ""
    frames: int = 0                       # frames in ops.log now: compacted once twice `max_ops`
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
    def load(self, rs: ReplicaSet) -> deque[LoggedOp]:
        """Restore `rs` (seq, committed, applied per replica) and return the log; a new journal starts empty."""
        state: dict[str, Any] = {}
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
        self.epoch = state.get("epoch") or uuid.uuid4().hex
        ops: dict[int, LoggedOp] = {}
        for frame in self._frames():
            if frame[0] == "op":
                _, seq, kind, args = frame
                ops[seq] = LoggedOp(seq, kind, args)
            elif frame[0] == "abandon":
                ops.pop(frame[1], None)
        log: deque[LoggedOp] = deque((ops[s] for s in sorted(ops)), maxlen=self.max_ops)
        rs.seq = max([int(state.get("seq", 0))] + [op.seq for op in log])
        rs.committed = min(int(state.get("committed", 0)), rs.seq)
        applied = list(state.get("applied", []))
        for st in rs.states:
            st.applied_seq = min(int(applied[st.replica]) if st.replica < len(applied) else 0, rs.seq)
        self._compact(log)  # also drops a torn tail and opens the file for appending
        self.save(rs)
        return log

    def _frames(self) -> list[tuple]:
        if not self.ops_file.exists():
            return []
        data = self.ops_file.read_bytes()
        out, i = [], 0
        while i + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, i)
            if i + _LEN.size + n > len(data):
                break  # torn: the sequencer died while appending it
            try:
                out.append(pickle.loads(data[i + _LEN.size: i + _LEN.size + n]))
            except Exception:  # noqa: BLE001 - a torn frame at the very end
                break
            i += _LEN.size + n
        return out

    # -- writing -----------------------------------------------------------------------------------------------
    def _append(self, frame: tuple) -> None:
        blob = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        self._fh.write(_LEN.pack(len(blob)) + blob)
        self._fh.flush()
        self.frames += 1

    def append(self, op: LoggedOp, log: deque[LoggedOp]) -> None:
        """Log `op` before any replica sees it (`log` does not hold it yet); the file is first compacted to
        `log` once it holds twice `max_ops` frames."""
        if self.frames >= 2 * self.max_ops:
            self._compact(log)
        self._append(("op", op.seq, op.kind, list(op.args)))

    def abandon(self, seq: int) -> None:
        """The write `seq` was refused as a bad request: it never happened."""
        self._append(("abandon", seq))

    def save(self, rs: ReplicaSet) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": self.epoch, "seq": rs.seq, "committed": rs.committed,
                                   "applied": [st.applied_seq for st in rs.states]}))
        os.replace(tmp, self.state_file)

    def _compact(self, log: deque[LoggedOp]) -> None:
        if self._fh is not None:
            self._fh.close()
        tmp = self.ops_file.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            for op in log:
                blob = pickle.dumps(("op", op.seq, op.kind, list(op.args)), protocol=pickle.HIGHEST_PROTOCOL)
                fh.write(_LEN.pack(len(blob)) + blob)
        os.replace(tmp, self.ops_file)
        self.frames = len(log)
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
    as it is (tests); the Ray actor (shards.actor.SequencerHost) is this class built over replica actors.
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

    async def heal(self) -> tuple[int, int, ShardView]:
        self._ensure_background()
        healed, failed = await self.host.heal()
        return healed, failed, self.host.view()

    async def view(self) -> ShardView:
        self._ensure_background()
        return self.host.view()
