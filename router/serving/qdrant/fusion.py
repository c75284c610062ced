"""Fusion as Qdrant computes it, which differs from prism's own (router.ranking.fusion). Pure; inputs are not mutated.

Checked against qdrant-client's local mode (qdrant_client/hybrid/fusion.py, 1.20.0), which mirrors the server:

- RRF: a point at position `pos` (from 0) of a list with weight `w` scores `1 / ((pos + 1) / w + k - 1)`, i.e.
  `1 / (k + pos)` unweighted, with k = 2 by default (prism: `w / (k + rank)`, rank from 1, k = 60); a weight
  <= 0 adds nothing, yet the point stays in the ranking with what it has. Scores are summed over the lists.
- DBSF: each non-empty list is normalised on its own, (s - (mean - 3 sd)) / (6 sd) with the sample sd; a list of
  one point, or with no spread, gives every point 0.5; normalised scores are summed. No weights.
- Ties keep the order in which points were first seen (lists in the order given, best first): a stable sort.
"""
from __future__ import annotations

from collections.abc import Sequence

from cluster.errors import InvalidRequest

DEFAULT_RRF_K = 2
MAX_RRF_K = 2**64 - 1  # Qdrant's k is an unsigned 64-bit integer; a larger int does not even convert to a float
Scored = tuple[str, float]


def _ranked(scores: dict[str, float], limit: int) -> list[Scored]:
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)[:limit]


def rrf(lists: Sequence[Sequence[Scored]], limit: int, k: int | None = None,
        weights: Sequence[float] | None = None) -> list[Scored]:
    """Reciprocal rank fusion, Qdrant's formula; the best `limit` (id, score) pairs."""
    k = DEFAULT_RRF_K if k is None else k
    if not 1 <= k <= MAX_RRF_K:
        got = k if k < 1 else "a larger number"  # str() of a huge int is slow, past 4300 digits refused
        raise InvalidRequest(f"rrf.k must be at least 1 and at most 2**64 - 1, got {got}", field="rrf.k")
    if weights is not None and len(weights) != len(lists):
        raise InvalidRequest(f"rrf.weights has {len(weights)} entries for {len(lists)} prefetches",
                             field="rrf.weights")
    scores: dict[str, float] = {}
    for li, lst in enumerate(lists):
        w = 1.0 if weights is None else float(weights[li])
        for pos, (pid, _) in enumerate(lst):
            scores[pid] = scores.get(pid, 0.0) + (0.0 if w <= 0 else 1.0 / ((pos + 1.0) / w + k - 1.0))
    return _ranked(scores, limit)


def _normalise(lst: Sequence[Scored]) -> list[Scored]:
    if len(lst) == 1:
        return [(lst[0][0], 0.5)]
    mean = sum(s for _, s in lst) / len(lst)
    variance = sum((s - mean) ** 2 for _, s in lst) / (len(lst) - 1)
    if variance == 0:
        return [(pid, 0.5) for pid, _ in lst]
    sd = variance ** 0.5
    low, high = mean - 3 * sd, mean + 3 * sd
    return [(pid, (s - low) / (high - low)) for pid, s in lst]


def dbsf(lists: Sequence[Sequence[Scored]], limit: int) -> list[Scored]:
    """Distribution-based score fusion, Qdrant's normalisation; the best `limit` (id, score) pairs."""
    scores: dict[str, float] = {}
    for lst in lists:
        if not lst:
            continue
        for pid, s in _normalise(lst):
            scores[pid] = scores.get(pid, 0.0) + s
    return _ranked(scores, limit)
