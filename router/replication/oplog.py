"""A shard's operation log: the sequenced writes kept so replicas that missed them can replay them in order, and
their data-only encoding (the journal's frames). Pure: no Ray, no Milvus.

Bounded in bytes as well as in count: a large ingest of big points must not fill the sequencer's memory (issue
33, H7); a replica further behind than what the log still holds is resynced by copying a caught-up replica.

The encoding is JSON (never pickle: a journal is data, and loading one must not run code, whoever wrote the file):
    {"seq": N, "at": T, "kind": "upsert", "args": [row, ...]}  row = {"id", "payload", "meta", "vectors": {space: b64}}
    {"seq": N, "at": T, "kind": "delete", "args": [id, ...]}
    {"seq": N, "at": T, "kind": "restore", "args": [[row, ...], [id, ...]]}   a refused write undone
    {"abandon": N}
`at` is the wall-clock time (seconds since the epoch) the shard's write path stamped on the write when it numbered
it, never decreasing within a shard (router.replication.replicas); point-in-time restore selects writes by it. A
frame of an older journal has none (0.0).
Vectors travel as base64 of little-endian float32, which is what Milvus stores (so a replay stores the same bytes).
"""
from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.api import PointRow

OPLOG_MAX_OPS = 20_000            # per shard
OPLOG_MAX_BYTES = 256 * 1024 ** 2  # per shard: ~20,000 384-d points with small payloads


@dataclass(frozen=True)
class LoggedOp:
    """One sequenced write, kept so replicas that missed it can replay it in order."""

    seq: int
    kind: str  # "upsert" | "delete" | "restore"
    args: Sequence[Any]
    at: float = 0.0  # wall-clock seconds when it was numbered (0.0: not stamped, an older journal's)


def _row_out(p: PointRow) -> dict[str, Any]:
    return {"id": p.id, "payload": p.payload, "meta": p.meta,
            "vectors": {s: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for s, v in p.vectors.items()}}


def _row_in(d: dict[str, Any]) -> PointRow:
    return PointRow(id=str(d["id"]), payload=dict(d["payload"]), meta=dict(d["meta"]),
                    vectors={s: np.frombuffer(base64.b64decode(v), dtype="<f4").astype(float).tolist()
                             for s, v in d["vectors"].items()})


def encode_op(op: LoggedOp) -> bytes:
    if op.kind == "upsert":
        args: Any = [_row_out(p) for p in op.args]
    elif op.kind == "delete":
        args = [str(i) for i in op.args]
    elif op.kind == "restore":
        args = [[_row_out(p) for p in op.args[0]], [str(i) for i in op.args[1]]]
    else:
        raise ValueError(f"unknown write kind {op.kind!r}")
    return json.dumps({"seq": op.seq, "at": op.at, "kind": op.kind, "args": args}, separators=(",", ":"),
                      ensure_ascii=False).encode()


def encode_abandon(seq: int) -> bytes:
    return json.dumps({"abandon": seq}).encode()


def decode_frame(blob: bytes) -> LoggedOp | int:
    """A LoggedOp, or the seq of an abandoned write. Raises ValueError on anything that is not such a frame."""
    d = json.loads(blob)
    if not isinstance(d, dict):
        raise ValueError("not a journal frame")
    if "abandon" in d:
        return int(d["abandon"])
    kind, raw = d["kind"], d["args"]
    if kind == "upsert":
        args: Any = [_row_in(r) for r in raw]
    elif kind == "delete":
        args = [str(i) for i in raw]
    elif kind == "restore":
        args = [[_row_in(r) for r in raw[0]], [str(i) for i in raw[1]]]
    else:
        raise ValueError(f"unknown write kind {kind!r}")
    return LoggedOp(int(d["seq"]), kind, args, float(d.get("at", 0.0)))


def estimate_bytes(op: LoggedOp) -> int:
    """About what `op` holds in memory, without encoding it (the in-process log has no journal to measure)."""
    rows = op.args if op.kind == "upsert" else op.args[0] if op.kind == "restore" else ()
    ids = op.args if op.kind == "delete" else op.args[1] if op.kind == "restore" else ()
    return 64 + sum(80 + len(p.id) + 32 * sum(len(v) for v in p.vectors.values())
                    + len(json.dumps(p.payload, default=str)) for p in rows) + sum(60 + len(i) for i in ids)


class OpLog:
    """The last writes of a shard, in sequence order, at most `max_ops` of them and `max_bytes` in all (the
    oldest leave first)."""

    def __init__(self, max_ops: int = OPLOG_MAX_OPS, max_bytes: int = OPLOG_MAX_BYTES):
        self.max_ops, self.max_bytes = max_ops, max_bytes
        self._ops: deque[tuple[LoggedOp, int]] = deque()
        self.bytes = 0

    def append(self, op: LoggedOp, size: int | None = None) -> None:
        size = estimate_bytes(op) if size is None else size
        self._ops.append((op, size))
        self.bytes += size
        while self._ops and (len(self._ops) > self.max_ops or self.bytes > self.max_bytes):
            self.bytes -= self._ops.popleft()[1]

    def replace(self, op: LoggedOp, size: int | None = None) -> None:
        """Put `op` in place of the logged op of the same seq (a refused write undone)."""
        for k, (old, old_size) in enumerate(self._ops):
            if old.seq == op.seq:
                size = estimate_bytes(op) if size is None else size
                self._ops[k] = (op, size)
                self.bytes += size - old_size
                return

    def __iter__(self) -> Iterator[LoggedOp]:
        return (op for op, _ in self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __getitem__(self, k: int) -> LoggedOp:
        return self._ops[k][0]

    def sizes(self) -> Iterator[tuple[LoggedOp, int]]:
        return iter(self._ops)
