"""Latency budgets on real milvus-lite: a slow shard is left out with reason "timeout" within the budget, never
waited for; min_coverage turns a thinner answer into a 503. With and without micro-batching."""
from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings, MilvusConfig
from cluster.errors import ShardUnavailable
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.api import SearchSpec
from shards.local import LocalShardClient, replica_specs, stop_local_shards
from shards.shard import Shard

DIM = 8
_n = itertools.count()


class SlowShard(Shard):
    """A real shard replica whose searches take `delay_s` longer: slow on purpose (the product has no such hook)."""

    delay_s = 0.0

    def search_many(self, specs):
        time.sleep(self.delay_s)  # the slowness under test, not a synchronisation
        return super().search_many(specs)


def slow_shards(cfg: CollectionConfig, tmp_path) -> list[list[LocalShardClient]]:
    """`shards.local.local_shards` with SlowShard replicas."""
    specs = replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path)
    clients = [[LocalShardClient(SlowShard(cfg, s, r, spec)) for r, spec in enumerate(row)] for s, row in enumerate(specs)]
    for row in clients:
        for c in row:
            c.target.create()
    return clients


@pytest.fixture
def slow_shard(tmp_path):
    cfg = CollectionConfig(name=f"budget{next(_n)}", shards=2, spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    clients = slow_shards(cfg, tmp_path)
    vecs = np.random.default_rng(0).standard_normal((100, DIM))
    asyncio.run(Coordinator.from_clients(cfg, clients).upsert(
        [Point(id=f"p{i}", vectors={"v": vecs[i].tolist()}) for i in range(100)]))
    # A replica's first search after the writes loads its collection (100-250 ms measured on this 2-core machine),
    # which would eat the healthy shard's share of a 300 ms budget: warmed here, as a serving shard is.
    for row in clients:
        row[0].target.search_many([SearchSpec("v", vecs[0].tolist(), 5)])
    clients[1][0].target.delay_s = 1.5  # shard 1 answers far too late
    yield cfg, clients, vecs
    clients[1][0].target.delay_s = 0.0
    stop_local_shards(clients, drop=True)


@pytest.mark.parametrize("batching", [False, True])
def test_a_slow_shard_is_left_out_within_the_budget(slow_shard, batching):
    cfg, clients, vecs = slow_shard
    coord = Coordinator.from_clients(cfg, clients, batching=BatchSettings(enabled=batching))
    req = QueryRequest(prefetch=[{"space": "v", "vector": vecs[0].tolist()}], fusion={"method": "none"}, limit=5,
                       budget_ms=300)

    async def timed():
        t0 = time.perf_counter()
        answer = await coord.query(req)
        return answer, time.perf_counter() - t0

    answer, took = asyncio.run(timed())
    assert answer.partial is True and answer.coverage.shards_answered == 1
    assert [(f.shard, f.reason) for f in answer.coverage.failed] == [(1, "timeout")]
    assert "budget" in answer.coverage.failed[0].message
    assert took <= 0.300 + 0.050, took  # the bound: budget + 50 ms
    assert answer.hits and all(coord.shard_of(h.id) == 0 for h in answer.hits)
    # The coverage checks need only shard 1 to miss the budget: a wider one (still short of its 1.5 s) keeps a
    # busy machine from making shard 0 miss it too.
    with pytest.raises(ShardUnavailable, match="min_coverage") as exc:
        asyncio.run(coord.query(req.model_copy(update={"min_coverage": 0.75, "budget_ms": 1000})))
    assert exc.value.status == 503 and exc.value.shards == [1]
    # Half the shards answering is enough when that is what was asked for.
    assert asyncio.run(coord.query(req.model_copy(update={"min_coverage": 0.5, "budget_ms": 1000}))).partial is True


def test_a_slow_preferred_replica_does_not_slow_the_answer(tmp_path):
    """Hedged reads: past the preferred replica's p95 the other replica is asked too; the first answer wins."""
    cfg = CollectionConfig(name=f"hedge{next(_n)}", shards=1, replicas=2,
                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    clients = slow_shards(cfg, tmp_path)
    try:
        coord = Coordinator.from_clients(cfg, clients, read_replicas="sticky")  # spread would avoid the slow one
        vecs = np.random.default_rng(1).standard_normal((50, DIM))
        asyncio.run(coord.upsert([Point(id=f"p{i}", vectors={"v": vecs[i].tolist()}) for i in range(50)]))
        req = QueryRequest(prefetch=[{"space": "v", "vector": vecs[3].tolist()}], fusion={"method": "none"}, limit=3)
        for _ in range(15):  # the replicas' latency history: a p95 to hedge at
            want = asyncio.run(coord.query(req))
        preferred = coord.shards[0].state.read_order()[0]
        clients[0][preferred].target.delay_s = 1.5

        async def timed():
            t0 = time.perf_counter()
            answer = await coord.query(req)
            return answer, time.perf_counter() - t0

        answer, took = asyncio.run(timed())
        assert [h.id for h in answer.hits] == [h.id for h in want.hits] and not answer.partial
        assert coord.shards[0].hedged >= 1 and took < 0.75, took  # far below the slow replica's 1.5 s
    finally:
        for row in clients:
            for c in row:
                c.target.delay_s = 0.0
        stop_local_shards(clients, drop=True)


def test_a_small_budget_runs_a_smaller_ef_and_the_answer_says_so(tmp_path):
    cfg = CollectionConfig(name=f"ef{next(_n)}", shards=2, spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    clients = slow_shards(cfg, tmp_path)
    try:
        coord = Coordinator.from_clients(cfg, clients)
        vecs = np.random.default_rng(2).standard_normal((200, DIM))
        asyncio.run(coord.upsert([Point(id=f"p{i}", vectors={"v": vecs[i].tolist()}) for i in range(200)]))
        asyncio.run(coord.query(QueryRequest(prefetch=[{"space": "v", "vector": vecs[0].tolist()}], limit=3)))  # warm
        for sh in coord.shards:  # as if observed: each shard answers in 200 ms at the default ef
            sh.state.states[0].ewma_ms = 200.0
        req = QueryRequest(prefetch=[{"space": "v", "vector": vecs[5].tolist()}], fusion={"method": "none"}, limit=10)
        tight = asyncio.run(coord.query(req.model_copy(update={"budget_ms": 150})))
        roomy = asyncio.run(coord.query(req.model_copy(update={"budget_ms": 5000})))
        plain = asyncio.run(coord.query(req))
        efs = {name: [p["ef"] for p in a.search_params["v"].values()] for name, a in (("tight", tight), ("roomy", roomy))}
        assert max(efs["tight"]) < 64 < min(efs["roomy"]) and min(efs["tight"]) >= 10, efs
        assert set(tight.search_params["v"]) == {"0", "1"} and plain.search_params is None
        assert tight.hits[0].id == roomy.hits[0].id == "p5"
    finally:
        stop_local_shards(clients, drop=True)
