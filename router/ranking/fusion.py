"""Server-side fusion of per-space ranked lists. Pure functions; inputs are never mutated."""
from __future__ import annotations

import math
from collections.abc import Sequence

from cluster.errors import InvalidRequest
from shards.api import ScoredId

DEFAULT_RRF_K = 60


def _check_weights(lists: Sequence[Sequence[ScoredId]], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(lists)
    if len(weights) != len(lists):
        raise InvalidRequest(f"fusion.weights: {len(weights)} weights for {len(lists)} lists", field="fusion.weights")
    if any(w < 0 for w in weights):
        raise InvalidRequest(f"fusion.weights must be >= 0, got {list(weights)!r}", field="fusion.weights")
    return [float(w) for w in weights]


def _ranked(scores: dict[str, float], limit: int | None) -> list[ScoredId]:
    out = sorted((ScoredId(i, s) for i, s in scores.items()), key=lambda h: (-h.score, h.id))
    return out if limit is None else out[:limit]


def rrf(
    lists: Sequence[Sequence[ScoredId]],
    k: int = DEFAULT_RRF_K,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[ScoredId]:
    """Reciprocal rank fusion: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.

    Lists are taken in the order given (already best first). A list with weight 0 contributes nothing,
    and an id found only in such lists is left out. Within one list only an id's first rank counts.
    """
    if k < 1:
        raise InvalidRequest(f"fusion.k must be >= 1, got {k!r}", field="fusion.k")
    ws = _check_weights(lists, weights)
    scores: dict[str, float] = {}
    for lst, w in zip(lists, ws):
        if w == 0:
            continue
        seen: set[str] = set()
        for rank, hit in enumerate(lst, start=1):
            if hit.id in seen:
                continue
            seen.add(hit.id)
            scores[hit.id] = scores.get(hit.id, 0.0) + w / (k + rank)
    return _ranked(scores, limit)


def _dbsf_normalise(lst: Sequence[ScoredId]) -> dict[str, float]:
    """(s - (mean - 3 sd)) / (6 sd) with the sample sd; one element or zero spread gives 0.5."""
    firsts: dict[str, float] = {}
    for hit in lst:
        firsts.setdefault(hit.id, float(hit.score))
    values = list(firsts.values())
    n = len(values)
    if n == 0:
        return {}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    if n == 1 or sd == 0.0:
        return {i: 0.5 for i in firsts}
    low = mean - 3 * sd
    return {i: (s - low) / (6 * sd) for i, s in firsts.items()}


def dbsf(
    lists: Sequence[Sequence[ScoredId]],
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[ScoredId]:
    """Distribution-based score fusion: per-list 3-sigma normalisation, then a (weighted) sum."""
    ws = _check_weights(lists, weights)
    scores: dict[str, float] = {}
    for lst, w in zip(lists, ws):
        if w == 0:
            continue
        for i, s in _dbsf_normalise(lst).items():
            scores[i] = scores.get(i, 0.0) + w * s
    return _ranked(scores, limit)


def fuse(
    method: str,
    lists: Sequence[Sequence[ScoredId]],
    *,
    k: int = DEFAULT_RRF_K,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[ScoredId]:
    """Dispatch by method name: 'rrf', 'dbsf' or 'none' (one list, passed through)."""
    if method == "rrf":
        return rrf(lists, k=k, weights=weights, limit=limit)
    if method == "dbsf":
        return dbsf(lists, weights=weights, limit=limit)
    if method == "none":
        if len(lists) != 1:
            raise InvalidRequest(f"fusion 'none' takes exactly one list, got {len(lists)}", field="fusion.method")
        out = [ScoredId(h.id, float(h.score)) for h in lists[0]]
        return out if limit is None else out[:limit]
    raise InvalidRequest(f"unknown fusion method {method!r}", field="fusion.method")


def contributions(method: str, lists: Sequence[Sequence[ScoredId]], *, k: int = DEFAULT_RRF_K,
                  weights: Sequence[float] | None = None) -> dict[str, list[float]]:
    """What each list added to each id's fused score (one entry per list, 0.0 where it added nothing), summed in
    list order as `fuse` sums them, so the entries add up to the fused score exactly."""
    ws = _check_weights(lists, weights)
    out: dict[str, list[float]] = {}
    for li, (lst, w) in enumerate(zip(lists, ws)):
        if method == "none":
            parts = {h.id: float(h.score) for h in reversed(lst)}
        elif method == "dbsf":
            parts = {i: w * v for i, v in _dbsf_normalise(lst).items()} if w else {}
        else:
            parts = {}
            for rank, hit in enumerate(lst, start=1):
                if w and hit.id not in parts:
                    parts[hit.id] = w / (k + rank)
        for i, v in parts.items():
            out.setdefault(i, [0.0] * len(lists))[li] = v
    return out
