"""Replica digests for anti-entropy and verify (pure: no Milvus, no Ray).

A replica's content is a set of stored rows, one per (space, id): the point's vector in that space (as the float32
bytes Milvus stores), its payload and its filterable projection (`meta`), each space's row carrying its own copy.
Each row hashes to 64 bits; an id's hash is the XOR of its rows' hashes; ids fall into BUCKETS buckets by a hash of
the id, and a bucket's digest is the XOR of its ids' hashes. Two replicas holding the same rows have equal
buckets, so comparing them costs one exchange of BUCKETS integers; k differing ids touch at most k buckets, and only
those buckets' per-id hashes are fetched (O(k) more, times the ids sharing a bucket).

XOR lets a write update a digest in O(1): the row's old hash out, the new one in.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUCKETS = 256


def _canonical(value: Any) -> Any:
    """JSON values as a store may hand them back: integral floats as ints (1.0 and 1 read back alike), keys
    sorted on dump."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def row_hash(space: str, pid: str, vector: Sequence[float], payload: Mapping[str, Any], meta: Mapping[str, Any]) -> int:
    """64-bit hash of one stored row: space, id, float32 vector bytes, canonical payload and meta."""
    h = hashlib.blake2b(digest_size=8)
    h.update(space.encode() + b"\x00" + pid.encode() + b"\x00")
    h.update(np.asarray(vector, dtype="<f4").tobytes())
    h.update(json.dumps([_canonical(dict(payload)), _canonical(dict(meta))], sort_keys=True,
                        separators=(",", ":"), ensure_ascii=True, default=str).encode())
    return int.from_bytes(h.digest(), "little")


def bucket_of(pid: str) -> int:
    return hashlib.blake2b(pid.encode(), digest_size=2).digest()[0] % BUCKETS


@dataclass
class ReplicaDigest:
    """The per-row hashes of one replica and their bucket digests, kept up to date as rows change."""

    rows: dict[tuple[str, str], int] = field(default_factory=dict)   # (space, id) -> row hash
    ids: dict[str, int] = field(default_factory=dict)                # id -> XOR of its rows
    spaces: dict[str, int] = field(default_factory=dict)             # id -> how many rows it has
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def put(self, space: str, pid: str, h: int) -> None:
        """Row (space, id) now hashes to `h` (written or replaced)."""
        old = self.rows.get((space, pid))
        if old is None:
            self.spaces[pid] = self.spaces.get(pid, 0) + 1
            old = 0
        self.rows[(space, pid)] = h
        self._flip(pid, old ^ h)

    def remove(self, space: str, pid: str) -> None:
        old = self.rows.pop((space, pid), None)
        if old is None:
            return
        self._flip(pid, old)
        self.spaces[pid] -= 1
        if not self.spaces[pid]:
            del self.spaces[pid]
            self.ids.pop(pid, None)

    def _flip(self, pid: str, delta: int) -> None:
        self.ids[pid] = self.ids.get(pid, 0) ^ delta
        self.buckets[bucket_of(pid)] ^= delta

    def in_buckets(self, buckets: Iterable[int]) -> dict[str, int]:
        """Per-id hashes of the ids in `buckets`."""
        want = set(buckets)
        return {pid: h for pid, h in self.ids.items() if bucket_of(pid) in want}


def differing_buckets(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Buckets whose digests differ (an empty replica's digests are all 0)."""
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
