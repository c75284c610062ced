"""Group commit of searches at a shard replica, where every caller's searches meet. Pure: no Ray, no Milvus.

Each ingress replica batches only its own queries (router.replication.batching), so N ingress replicas would make
batches N times smaller and N times more Milvus calls. Here the replica itself coalesces concurrent `search_many`
calls from every caller: the first call runs at once (a lone query waits for nothing); calls arriving while its
Milvus search is in flight queue up and run together as the next batch (up to `max_vectors` query vectors), and
so on. Inside a batch, compatible specs (`plan_groups`) become ONE Milvus search with nq > 1, and each caller gets
its own hit lists back.

Threads, not asyncio: the shard is plain synchronous Python, called from a threaded Ray actor's worker threads or
from `asyncio.to_thread` in the in-process client. The thread running a batch (the leader) hands the lead to the
oldest waiting call when it is done, so every caller's wait is bounded by the batches queued before it.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

from shards.api import ScoredId, SearchSpec

Run = Callable[[list[SearchSpec]], list[list[ScoredId]]]


class Group(NamedTuple):
    """Specs that share one Milvus search: their indexes, their limit and the search parameters they resolve to."""

    indexes: list[int]
    limit: int
    params: dict[str, Any]


def plan_groups(specs: Sequence[SearchSpec],
                resolve: Callable[[SearchSpec], dict[str, Any]]) -> list[Group]:
    """Group specs that may share one search: same space, filter, consistency, output fields, limit and search
    parameters (as resolved at that limit by `resolve`: e.g. HNSW's ef = max(64, limit)). Groups in order of first
    appearance.

    The limit is part of the key: a search at a larger limit, cut, is NOT what a smaller one gets alone when
    scores tie at the cut (duplicate vectors: measured on milvus-lite FLAT, 200 copies of one vector, limit 10 alone
    returned d163.. while limit 1000 cut to 10 returned d0..). Milvus breaks ties the same way for the same limit
    whatever nq, so equal limits share a search exactly."""
    groups: dict[Hashable, Group] = {}
    for i, spec in enumerate(specs):
        params = resolve(spec)
        key = (spec.space, spec.expr, spec.consistency, spec.with_payload, spec.limit,
               json.dumps(params, sort_keys=True, default=repr))
        g = groups.get(key)
        if g is None:
            groups[key] = Group([i], spec.limit, params)
        else:
            g.indexes.append(i)
    return list(groups.values())


def split_hits(specs: Sequence[SearchSpec], group: Group, hits: Sequence[list[ScoredId]],
               out: list[list[ScoredId]]) -> None:
    """Put one group's hit lists (one per query vector, in `group.indexes` order) into `out`, each cut to its own
    spec's limit."""
    if len(hits) != len(group.indexes):
        raise ValueError(f"a search of {len(group.indexes)} vectors answered {len(hits)} hit lists")
    for i, h in zip(group.indexes, hits):
        out[i] = list(h[: specs[i].limit])


def take(sizes: Sequence[int], max_specs: int) -> int:
    """How many queued requests (of `sizes` specs each, oldest first) go in the next call: as many as fit in
    `max_specs`, and always at least one (a request larger than the bound goes alone)."""
    n, total = 0, 0
    for size in sizes:
        if n and total + size > max_specs:
            break
        n, total = n + 1, total + size
    return n


class _Pending:
    """One caller's `submit`: its specs, and its answer once a batch has run (or the lead, handed to it)."""

    __slots__ = ("specs", "wake", "lead", "result", "error")

    def __init__(self, specs: list[SearchSpec]):
        self.specs = specs
        self.wake = threading.Event()
        self.lead = False
        self.result: list[list[ScoredId]] | None = None
        self.error: BaseException | None = None

    def outcome(self) -> list[list[ScoredId]]:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class GroupCommit:
    """Concurrent `submit`s (from any threads) become as few `run` calls as possible; one run at a time.

    `isolatable(exc)`: whether a failed batch may be the fault of one of its calls (a vector of the wrong size, an
    unknown space); then it is split in halves and each half run again, so such a call fails alone. A store that
    is down is not asked again per call: every call of the batch gets its error."""

    def __init__(self, run: Run, *, max_vectors: int = 64,
                 isolatable: Callable[[BaseException], bool] = lambda exc: True):
        self.run = run
        self.max_vectors = max_vectors
        self.isolatable = isolatable
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []  # not empty only while a batch runs (_busy)
        self._busy = False
        self.requests = 0  # submits
        self.batches = 0   # run calls

    def submit(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        me = _Pending(list(specs))
        with self._lock:
            self.requests += 1
            self._queue.append(me)
            lead, self._busy = not self._busy, True
        if not lead:
            me.wake.wait()  # answered by a leader's batch, or handed the lead
            if not me.lead:
                return me.outcome()
        self._lead()  # the leader's own call is the oldest queued, so it is in this batch
        return me.outcome()

    def _lead(self) -> None:
        with self._lock:
            n = take([len(p.specs) for p in self._queue], self.max_vectors)
            batch, self._queue = self._queue[:n], self._queue[n:]
        try:
            self._run(batch)
        finally:
            with self._lock:
                if self._queue:  # those that arrived meanwhile: the oldest leads their batch
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.wake.set()
                else:
                    self._busy = False

    def _run(self, batch: list[_Pending]) -> None:
        with self._lock:
            self.batches += 1
        try:
            results = self.run([s for p in batch for s in p.specs])
            if len(results) != sum(len(p.specs) for p in batch):
                raise ValueError(f"a batch of {sum(len(p.specs) for p in batch)} searches answered {len(results)}")
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets it (or its half's)
            if len(batch) > 1 and isinstance(exc, Exception) and self.isolatable(exc):
                half = len(batch) // 2
                self._run(batch[:half])
                self._run(batch[half:])
                return
            for p in batch:
                p.error = exc
                p.wake.set()
            return
        i = 0
        for p in batch:
            p.result = results[i : i + len(p.specs)]
            i += len(p.specs)
            p.wake.set()
