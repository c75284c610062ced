"""Anti-entropy: a shard's replicas compared by digest and repaired (pure: over `shards.api.ShardApi` clients).

Each replica keeps bucket digests of what it holds (shards.digest). A pass asks every caught-up replica for its
buckets (equal replicas: one small exchange each), fetches per-id hashes only for the buckets that differ from the
reference replica, and copies the differing ids from the reference. The reference is a caught-up replica that has
not restarted since it was last compared (a restart is what may have lost writes), else the first in ring order.
Runs under the shard's write lock, so no write lands between the digests it compares.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import describe
from shards.api import ShardApi
from shards.digest import differing_buckets

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """One shard's replicas compared: per replica, the ids it holds differently from the agreed value (all of
    them), and for each such id a replica holding the agreed value."""

    shard: int
    reference: int | None
    differing: dict[int, list[str]] = field(default_factory=dict)   # replica -> differing ids
    sources: dict[str, int] = field(default_factory=dict)           # differing id -> a replica with the agreed value
    unanswered: dict[int, str] = field(default_factory=dict)        # replica -> why it was not compared
    digests: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not any(self.differing.values()) and not self.unanswered


def agreed(values: dict[int, int | None], reference: int) -> int | None:
    """The value most replicas hold for an id (None: absent); a tie goes to the reference's."""
    counts: dict[int | None, int] = {}
    for v in values.values():
        counts[v] = counts.get(v, 0) + 1
    best = max(counts.values())
    tied = [v for v, n in counts.items() if n == best]
    return values[reference] if values[reference] in tied else tied[0]


async def compare(shard: int, clients: Sequence[ShardApi], replicas: Sequence[int], reference: int, *,
                  rescan_after_s: float | None = None, timeout_s: float = 60.0) -> Comparison:
    """Compare `replicas` (which include `reference`) by digest. Equal digests: done. Otherwise the per-id hashes
    of the differing buckets are fetched from every replica and each id takes the value most replicas hold (the
    reference's on a tie: with two replicas, the one that has not restarted)."""
    out = Comparison(shard, reference)

    async def digest(r: int) -> None:
        try:
            out.digests[r] = await asyncio.wait_for(clients[r].digest(rescan_after_s), timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported, compared on a later pass
            out.unanswered[r] = describe(exc)

    await asyncio.gather(*(digest(r) for r in replicas))
    ref = out.digests.get(reference)
    if ref is None:
        out.reference = None
        return out
    present = [r for r in replicas if r in out.digests]
    buckets = sorted({b for r in present if r != reference
                      for b in differing_buckets(ref["buckets"], out.digests[r]["buckets"])})
    out.differing = {r: [] for r in present if r != reference}
    if not buckets:
        return out
    hashes: dict[int, dict[str, int]] = {}

    async def fetch(r: int) -> None:
        try:
            hashes[r] = await asyncio.wait_for(clients[r].bucket_hashes(buckets), timeout_s)
        except Exception as exc:  # noqa: BLE001
            out.unanswered[r] = describe(exc)

    await asyncio.gather(*(fetch(r) for r in present))
    if reference not in hashes:
        out.reference = None
        return out
    voters = [r for r in present if r in hashes]
    ids = sorted({i for r in voters for i in hashes[r]})
    for i in ids:
        values = {r: hashes[r].get(i) for r in voters}
        if len(set(values.values())) == 1:
            continue
        want = agreed(values, reference)
        holders = [r for r in voters if values[r] == want]
        out.sources[i] = reference if reference in holders else holders[0]
        for r in voters:
            if values[r] != want:
                out.differing.setdefault(r, []).append(i)
    return out


def now_s() -> float:
    """Wall-clock seconds: digest ages travel between processes (sequencer -> ingress)."""
    return time.time()


async def compare_shard_replicas(shard: int, clients: Sequence[ShardApi], order: Sequence[int],
                                 timeout_s: float = 600.0) -> Comparison:
    """Every replica of one shard compared with the others after a full rescan of each (verify: catches rows
    changed behind prism's back, which a kept-up-to-date digest cannot see); `order[0]` is the reference."""
    replicas = list(order) + [r for r in range(len(clients)) if r not in order]
    return await compare(shard, clients, replicas, replicas[0], rescan_after_s=0.0, timeout_s=timeout_s)
