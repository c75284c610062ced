"""Which replica serves a read (pure: no Ray, no I/O; randomness injected).

`spread` (the default): among the replicas the caller may read from, power of two choices over a load score,
`(outstanding + 1) x EWMA latency` ("peak EWMA", as Finagle and Envoy's least-request balancer do): two candidates
drawn at random, the lower score wins, a tie goes to the first drawn. Under equal load every replica is chosen about
equally often; a slow replica (high EWMA) or a busy one (many requests outstanding) is chosen only when the other is
worse. A replica with no latency yet counts as the best one known, so a new or restarted replica is tried at once.
`sticky`: the caller's stable order, unchanged (every read of a shard to one preferred replica, caches warm).

The order returned is also the failover order: the chosen replica first, then the others by score.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cluster.errors import ConfigError

ReadPolicy = Literal["spread", "sticky"]
READ_POLICIES: tuple[str, ...] = ("spread", "sticky")
UNKNOWN_MS = 1.0  # a replica's latency when no replica of the shard has one yet: all equal


@dataclass(frozen=True)
class Load:
    """What one ingress knows of a replica's load: its requests not yet answered and its latency EWMA (ms)."""

    outstanding: int = 0
    ewma_ms: float | None = None


def check_policy(policy: str) -> str:
    if policy not in READ_POLICIES:
        raise ConfigError(f"read_replicas must be one of {', '.join(READ_POLICIES)}, got {policy!r}",
                          field="read_replicas")
    return policy


def scores(loads: Sequence[Load]) -> list[float]:
    """`(outstanding + 1) x EWMA` per replica; a replica without an EWMA gets the best one known."""
    known = [ld.ewma_ms for ld in loads if ld.ewma_ms is not None]
    default = min(known) if known else UNKNOWN_MS
    return [(ld.outstanding + 1) * max(default if ld.ewma_ms is None else ld.ewma_ms, 1e-3) for ld in loads]


def spread(candidates: Sequence[int], loads: Sequence[Load], rng: random.Random) -> list[int]:
    """`candidates` (replica ids, in the caller's order) reordered: the power-of-two-choices pick first, then the
    others by score (ties keep the caller's order). `loads[i]` is `candidates[i]`'s."""
    if len(candidates) < 2:
        return list(candidates)
    score = dict(zip(candidates, scores(loads)))
    a, b = rng.sample(list(candidates), 2)
    chosen = b if score[b] < score[a] else a
    rest = sorted((r for r in candidates if r != chosen), key=lambda r: score[r])  # stable: ties keep order
    return [chosen, *rest]
