"""Reads spread over a shard's replicas (issue 29): under a burst of queries both replicas of a shard serve searches,
counted by each replica itself, and the answers are those one replica gives. In-process shards over milvus-lite:
the guarantee is about the router's choice of replica, not about Ray actors."""
from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings, MilvusConfig
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.local import local_shards, replica_specs, stop_local_shards

DIM = 16
BURST = 40
_n = itertools.count()


def unit(rng, n):
    v = rng.standard_normal((n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def count_searches(clients, seen: Counter) -> None:
    """Each replica's own Shard counts the searches it runs (one per spec), whoever sent them."""
    for c in clients:
        shard, real = c.target, c.target.search_many

        def counted(specs, real=real, r=shard.replica):
            seen[r] += len(specs)
            return real(specs)
        shard.search_many = counted


def test_a_burst_of_queries_is_served_by_both_replicas_with_unchanged_answers(tmp_path):
    cfg = CollectionConfig(name=f"spread{next(_n)}", shards=1, replicas=2,
                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    try:
        rng = np.random.default_rng(29)
        vecs, queries = unit(rng, 300), unit(rng, BURST)
        sticky = Coordinator.from_clients(cfg, clients, read_replicas="sticky", hedge=False)
        spread = Coordinator.from_clients(cfg, clients, batching=BatchSettings())  # the defaults: spread, batched
        asyncio.run(sticky.upsert([Point(id=f"p{i}", vectors={"v": vecs[i].tolist()}) for i in range(300)]))
        reqs = [QueryRequest(prefetch=[{"space": "v", "vector": q.tolist(), "limit": 10}], fusion={"method": "none"},
                             limit=10, with_payload=False) for q in queries]
        seen: Counter = Counter()
        count_searches(clients[0], seen)

        alone = [asyncio.run(sticky.query(r)) for r in reqs]
        assert len(seen) == 1 and sum(seen.values()) == BURST  # sticky: every read to one preferred replica
        seen.clear()

        async def burst():
            return await asyncio.gather(*(spread.query(r) for r in reqs))

        got = asyncio.run(burst())
        assert set(seen) == {0, 1} and min(seen.values()) >= BURST // 4, seen  # both replicas served the burst
        assert sum(seen.values()) >= BURST     # every query searched (a hedged one twice)
        for a, b in zip(alone, got, strict=True):
            assert [h.id for h in a.hits] == [h.id for h in b.hits] and not b.partial
            np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
        assert [st.outstanding for st in spread.shards[0].state.states] == [0, 0]
    finally:
        stop_local_shards(clients, drop=True)
