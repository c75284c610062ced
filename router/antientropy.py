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
from shards.digest import differing_buckets, differing_ids

log = logging.getLogger(__name__)
MAX_LISTED = 100  # differing ids named per replica in a report


@dataclass
class Comparison:
    """One shard's replicas against its reference: the ids each one holds differently (all of them)."""

    shard: int
    reference: int | None
    differing: dict[int, list[str]] = field(default_factory=dict)   # replica -> differing ids
    unanswered: dict[int, str] = field(default_factory=dict)        # replica -> why it was not compared
    digests: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not any(self.differing.values()) and not self.unanswered


async def compare(shard: int, clients: Sequence[ShardApi], replicas: Sequence[int], reference: int, *,
                  rescan_after_s: float | None = None, timeout_s: float = 60.0) -> Comparison:
    """Compare `replicas` (which include `reference`) by digest; per-id hashes only of differing buckets."""
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
    for r in replicas:
        if r == reference or r not in out.digests:
            continue
        buckets = differing_buckets(ref["buckets"], out.digests[r]["buckets"])
        if not buckets:
            out.differing[r] = []
            continue
        try:
            mine, theirs = await asyncio.gather(
                asyncio.wait_for(clients[reference].bucket_hashes(buckets), timeout_s),
                asyncio.wait_for(clients[r].bucket_hashes(buckets), timeout_s))
        except Exception as exc:  # noqa: BLE001
            out.unanswered[r] = describe(exc)
            continue
        out.differing[r] = differing_ids(mine, theirs)
    return out


def now_s() -> float:
    """Wall-clock seconds: digest ages travel between processes (sequencer -> ingress)."""
    return time.time()
