"""Heap merge of per-shard top-k lists into one global top-k."""
from __future__ import annotations

import heapq
from collections.abc import Sequence

from shards.api import ScoredId


def _rank_key(hit: ScoredId) -> tuple[float, str]:
    # Higher score first; equal scores ordered by id so the answer never depends on shard arrival order.
    return (-hit.score, hit.id)


def merge_topk(lists: Sequence[Sequence[ScoredId]], k: int) -> list[ScoredId]:
    """Global top-`k` of several scored lists; an id seen twice keeps its best score. Inputs are not mutated."""
    if k <= 0:
        return []
    ordered = [sorted(lst, key=_rank_key) for lst in lists if lst]
    out: list[ScoredId] = []
    seen: set[str] = set()
    for hit in heapq.merge(*ordered, key=_rank_key):
        if hit.id in seen:
            continue
        seen.add(hit.id)
        out.append(ScoredId(hit.id, float(hit.score), hit.payload))
        if len(out) == k:
            break
    return out
