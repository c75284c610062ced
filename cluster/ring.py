"""Consistent hashing of point ids onto shards (and of shards onto replica preference orders)."""
from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

# The seed and the hash are part of the on-disk format: every stored point was placed with them.
# Changing either silently moves points to shards that do not hold them. Never change them.
RING_SEED = b"prism-ring-v1"
DEFAULT_VNODES = 512


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=RING_SEED).digest(), "big")


class HashRing:
    """A ring of virtual nodes; a key belongs to the first virtual node clockwise from its hash."""

    def __init__(self, nodes: Iterable[int | str], vnodes: int = DEFAULT_VNODES):
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes!r}")
        self._vnodes = vnodes
        self._nodes: list[int | str] = []
        self._points: list[int] = []
        self._owners: list[int | str] = []
        for node in nodes:
            self.add(node)

    def add(self, node: int | str) -> None:
        if node in self._nodes:
            raise ValueError(f"node {node!r} is already on the ring")
        self._nodes.append(node)
        for v in range(self._vnodes):
            point = _hash(f"{node}#{v}")
            i = bisect.bisect_left(self._points, point)
            self._points.insert(i, point)
            self._owners.insert(i, node)

    def remove(self, node: int | str) -> None:
        if node not in self._nodes:
            raise ValueError(f"node {node!r} is not on the ring")
        self._nodes.remove(node)
        keep = [(p, o) for p, o in zip(self._points, self._owners) if o != node]
        self._points = [p for p, _ in keep]
        self._owners = [o for _, o in keep]

    def get(self, key: str) -> int | str:
        """The node owning `key`."""
        if not self._points:
            raise LookupError("the ring has no nodes")
        i = bisect.bisect_right(self._points, _hash(key)) % len(self._points)
        return self._owners[i]

    def preference(self, key: str, n: int | None = None) -> list[int | str]:
        """Distinct nodes in clockwise order from `key`: a stable preference list (replicas, failover)."""
        if not self._points:
            raise LookupError("the ring has no nodes")
        want = len(self._nodes) if n is None else min(n, len(self._nodes))
        out: list[int | str] = []
        i = bisect.bisect_right(self._points, _hash(key))
        for step in range(len(self._points)):
            owner = self._owners[(i + step) % len(self._points)]
            if owner not in out:
                out.append(owner)
                if len(out) == want:
                    break
        return out
