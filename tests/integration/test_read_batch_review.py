"""Review of issue 29 on real milvus-lite: group commit at the replica answers exactly what each search gets alone
(limits, ties, filters, consistency, payloads, spaces, index types); a bad search in a batch fails alone; a caller
cancelled mid-batch leaks nothing; and with two Ray replicas both serve a burst, and after one is killed every read
goes to the other with no failed query."""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings, MilvusConfig
from cluster.errors import BackendError, InvalidRequest
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.api import PointRow, SearchSpec
from shards.backend import META_FIELD
from shards.expr import quote_string
from shards.local import LocalShardClient, replica_specs
from shards.shard import Shard

DIM = 8
_n = itertools.count()
# Values that differ only by quoting: each must filter to its own points, batched or not.
QUOTED = ['a"b', 'a\\"b', "a'b"]


def unit(rng, n):
    v = rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    cfg = CollectionConfig(name=f"review{next(_n)}", shards=1, spaces={
        "f": {"dim": DIM, "index": {"type": "FLAT"}},
        "h": {"dim": DIM, "index": {"type": "HNSW", "params": {"M": 8, "efConstruction": 64}}},
        "i": {"dim": DIM, "index": {"type": "IVF_FLAT", "params": {"nlist": 8}}}})
    spec = replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path_factory.mktemp("review"))[0][0]
    s = Shard(cfg, 0, 0, spec, BatchSettings(replica_max_vectors=4096))
    s.create()
    rng = np.random.default_rng(29)
    vecs, dup = unit(rng, 300), unit(rng, 1)[0]
    rows = [PointRow(id=f"p{i}", payload={"n": i, "t": QUOTED[i % 3]}, meta={"t": QUOTED[i % 3]},
                     vectors={"f": vecs[i], "h": vecs[i], "i": vecs[i]}) for i in range(300)]
    # 60 copies of one vector: their scores tie, so which of them a limit keeps is Milvus's choice
    rows += [PointRow(id=f"d{i}", payload={"n": -i, "t": QUOTED[i % 3]}, meta={"t": QUOTED[i % 3]},
                      vectors={"f": dup, "h": dup, "i": dup}) for i in range(60)]
    s.upsert(rows)
    yield s, dup, unit(rng, 8)
    s.drop()


def assert_same(want, got):
    for w, g in zip(want, got, strict=True):
        assert [h.id for h in w] == [h.id for h in g]
        np.testing.assert_allclose([h.score for h in w], [h.score for h in g], atol=1e-5)
        assert [h.payload for h in w] == [h.payload for h in g]


def test_a_batch_answers_each_search_as_it_is_answered_alone(shard):
    s, dup, queries = shard
    exprs = [None] + [f'{META_FIELD}["t"] == {quote_string(v)}' for v in QUOTED]
    params = {"f": [None], "h": [None, {"ef": 128}], "i": [None, {"nprobe": 8}]}
    combos = [c for k, c in enumerate(itertools.product("fhi", (1, 10, 64, 65, 100, 1000), exprs,
                                                        ("bounded", "strong"), (False, True))) if k % 8 == 0]
    # two query vectors per combination (the tied one and another): those two may share a Milvus search
    specs = [SearchSpec(space, q, limit, expr, params[space][k % len(params[space])], consistency, with_payload)
             for k, (space, limit, expr, consistency, with_payload) in enumerate(combos) for q in (dup, queries[0])]
    alone = [s.search_many([sp])[0] for sp in specs]
    for e, v in zip(exprs[1:], QUOTED):  # the quoting kept each value's own points
        (hits,) = s.search_many([SearchSpec("f", dup, 1000, e, with_payload=True)])
        assert len(hits) == 120 and {h.payload["t"] for h in hits} == {v}
    before = s.search_counts()["milvus_searches"]
    assert_same(alone, s.search_many(specs))  # one call: plan_groups shares Milvus searches
    assert s.search_counts()["milvus_searches"] - before < len(specs)


def gated(s):
    """Hold the replica's batch in flight until `open` is set, so that calls arriving meanwhile queue up."""
    gc, run, hold = s.group_commit, s.group_commit.run, threading.Event()

    def held(flat):
        hold.wait(10)
        return run(flat)
    gc.run = held
    return gc, hold, lambda: setattr(gc, "run", run)


async def until(cond, within_s=10.0):
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)  # polling a condition other threads change, with a deadline


def test_a_bad_search_fails_alone_and_a_cancelled_caller_leaks_nothing(shard):
    s, _, queries = shard
    client = LocalShardClient(s)
    good = [[SearchSpec("f", q, 10)] for q in queries[:4]]
    alone = [s.search_many(g) for g in good]
    bad_dim = [SearchSpec("f", queries[4][:3], 10)]
    bad_expr = [SearchSpec("f", queries[5], 10, expr=f'{META_FIELD}["t"] === "x"')]  # Milvus refuses it

    async def scenario():
        # asyncio's default executor has min(32, cpus + 4) threads: 6 here, fewer than the callers this queues
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(16))
        gc, hold, restore = gated(s)
        try:
            first = asyncio.ensure_future(client.search_many(good[0]))
            await until(lambda: gc._busy)
            calls = [asyncio.ensure_future(client.search_many(c)) for c in (good[1], bad_dim, good[2], bad_expr,
                                                                            good[3])]
            cancelled = asyncio.ensure_future(client.search_many(good[0]))
            await until(lambda: len(gc._queue) == 6)  # all queued behind the batch in flight
            cancelled.cancel()
            hold.set()
            got = await asyncio.gather(first, *calls, return_exceptions=True)
        finally:
            restore()
        await until(lambda: not gc._busy and not gc._queue)  # the cancelled caller's thread ended its turn
        return got, await client.search_many(good[1])  # and later calls still answer

    got, later = asyncio.run(scenario())
    assert_same(alone[0], got[0])
    assert_same(alone[1], got[1])
    assert isinstance(got[2], BackendError) and isinstance(got[4], BackendError)
    assert_same(alone[2], got[3])
    assert_same(alone[3], got[5])
    assert_same(alone[1], later)


def test_a_wrong_dimension_is_a_4xx_of_its_own_query(tmp_path):
    cfg = CollectionConfig(name=f"reviewdim{next(_n)}", shards=1, spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    from shards.local import local_shards, stop_local_shards

    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    try:
        co = Coordinator.from_clients(cfg, clients, batching=BatchSettings())
        rng = np.random.default_rng(3)
        asyncio.run(co.upsert([Point(id=f"p{i}", vectors={"v": v}) for i, v in enumerate(unit(rng, 50))]))
        vecs = unit(rng, 6)
        vecs[2] = vecs[2][:5]
        reqs = [QueryRequest(prefetch=[{"space": "v", "vector": v, "limit": 5}], fusion={"method": "none"}, limit=5)
                for v in vecs]

        async def burst():
            return await asyncio.gather(*(co.query(r) for r in reqs), return_exceptions=True)
        got = asyncio.run(burst())
        assert isinstance(got[2], InvalidRequest) and got[2].status == 422
        assert all(len(a.hits) == 5 and not a.partial for k, a in enumerate(got) if k != 2)
    finally:
        stop_local_shards(clients, drop=True)


def test_two_ray_replicas_both_serve_and_a_killed_one_fails_no_query(ray_session, tmp_path):
    import ray

    from shards.actor import start_ray_shards, stop_ray_shards

    cfg = CollectionConfig(name=f"reviewray{next(_n)}", shards=1, replicas=2,
                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    clients = start_ray_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    try:
        co = Coordinator.from_clients(cfg, clients, batching=BatchSettings())
        rng = np.random.default_rng(5)
        asyncio.run(co.upsert([Point(id=f"p{i}", vectors={"v": v}) for i, v in enumerate(unit(rng, 100))]))
        reqs = [QueryRequest(prefetch=[{"space": "v", "vector": v, "limit": 5}], fusion={"method": "none"}, limit=5,
                             with_payload=False) for v in unit(rng, 40)]

        def counts():
            return [ray.get(c.actor.search_counts.remote())["requests"] for c in clients[0]]

        async def burst():
            return await asyncio.gather(*(co.query(r) for r in reqs))
        first = asyncio.run(burst())
        served = counts()
        assert min(served) > 0, served  # both replicas served the burst, counted by themselves
        ray.kill(clients[0][1].actor, no_restart=True)
        again = asyncio.run(burst())
        assert all(not a.partial for a in again)
        for a, b in zip(first, again, strict=True):
            assert [h.id for h in a.hits] == [h.id for h in b.hits]
        assert ray.get(clients[0][0].actor.search_counts.remote())["requests"] > served[0]
        assert [st.outstanding for st in co.shards[0].state.states] == [0, 0]
    finally:
        stop_ray_shards(clients, drop=False)
