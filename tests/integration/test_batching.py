"""Cross-request micro-batching on both Milvus backends: concurrent queries share shard calls (one Milvus search
with nq > 1 per compatible group) and get exactly the answers they get alone."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.local import local_shards, replica_specs, stop_local_shards

DIM = 16
_n = itertools.count()


def unit(rng, n):
    v = rng.standard_normal((n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("index", ["FLAT", "HNSW"])
def test_batched_answers_equal_unbatched_ones(milvus_backend, tmp_path, index):
    milvus, uri = milvus_backend
    cfg = CollectionConfig(name=f"batch{next(_n)}", shards=2, spaces={
        "a": {"dim": DIM, "index": {"type": index}}, "b": {"dim": DIM, "index": {"type": "FLAT"}}})
    clients = local_shards(cfg, replica_specs(cfg, milvus, tmp_path, uri))
    try:
        rng = np.random.default_rng(4)
        va, vb = unit(rng, 600), unit(rng, 600)
        plain = Coordinator.from_clients(cfg, clients, batching=BatchSettings(enabled=False))
        batched = Coordinator.from_clients(cfg, clients, batching=BatchSettings(enabled=True, max_specs=64))
        asyncio.run(plain.upsert([Point(id=f"p{i}", vectors={"a": va[i].tolist(), "b": vb[i].tolist()})
                                  for i in range(600)]))
        qa, qb = unit(rng, 32), unit(rng, 32)
        reqs = []
        for j in range(32):  # a mix: fused two-space queries, single-space ones, other limits and a filter-free ef
            pre = [{"space": "a", "vector": qa[j].tolist(), "limit": 20}, {"space": "b", "vector": qb[j].tolist()}]
            reqs.append(QueryRequest(prefetch=pre, limit=10, with_payload=False) if j % 3 else
                        QueryRequest(prefetch=pre[:1], fusion={"method": "none"}, limit=5 + j % 2,
                                     with_payload=False))
        alone = [asyncio.run(plain.query(r)) for r in reqs]

        async def together():
            return await asyncio.gather(*(batched.query(r) for r in reqs))

        got = asyncio.run(together())
        for a, b in zip(alone, got, strict=True):
            assert [h.id for h in a.hits] == [h.id for h in b.hits]
            np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
            assert not b.partial
        cos = [co for sh in batched.shards for co in sh.coalescers()]
        assert sum(co.requests for co in cos) == 32 * 2  # every query asked both shards once
        assert sum(co.calls for co in cos) < 32 * 2      # ...in fewer shard calls: they were batched
    finally:
        stop_local_shards(clients, drop=True)


class CountingClient:
    """A shard client that counts `get` calls (hydration round trips) and delegates everything else."""

    def __init__(self, inner):
        self.inner, self.gets = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get(self, ids, with_vectors=()):
        self.gets += 1
        return await self.inner.get(ids, with_vectors)


def test_payloads_with_the_search_equal_hydrated_ones(milvus_backend, tmp_path):
    """Small pages take their payloads from the search itself (no second round trip); the answers are exactly the
    hydrated ones, payload selectors included; vectors and big candidate sets still hydrate."""
    milvus, uri = milvus_backend
    cfg = CollectionConfig(name=f"inline{next(_n)}", shards=2, spaces={
        "a": {"dim": DIM, "index": {"type": "FLAT"}}, "b": {"dim": DIM, "index": {"type": "FLAT"}}})
    raw = local_shards(cfg, replica_specs(cfg, milvus, tmp_path, uri))
    clients = [[CountingClient(c) for c in replicas] for replicas in raw]
    try:
        rng = np.random.default_rng(5)
        va, vb = unit(rng, 200), unit(rng, 200)
        hydrated = Coordinator.from_clients(cfg, clients, inline_payload_max=0)
        inline = Coordinator.from_clients(cfg, clients)
        asyncio.run(hydrated.upsert([Point(id=f"p{i}", vectors={"a": va[i].tolist(), "b": vb[i].tolist()},
                                           payload={"n": i, "tag": f"t{i % 7}", "deep": {"x": [i, i + 1]}})
                                     for i in range(200)]))
        q = unit(rng, 6)
        pre = [{"space": "a", "vector": q[0].tolist()}, {"space": "b", "vector": q[1].tolist()}]
        cases = [dict(prefetch=pre[:1], fusion={"method": "none"}, limit=10),
                 dict(prefetch=pre, limit=5, with_payload=["tag"]),
                 dict(prefetch=pre, limit=5, offset=3, with_payload={"exclude": ["deep"]}),
                 dict(prefetch=pre[:1], fusion={"method": "none"}, limit=4, with_vectors=["a"]),
                 dict(prefetch=[{**pre[0], "limit": 200}], fusion={"method": "none"}, limit=10)]
        gets = []
        for case in cases:
            want = asyncio.run(hydrated.query(QueryRequest(**case)))
            before = sum(c.gets for r in clients for c in r)
            got = asyncio.run(inline.query(QueryRequest(**case)))
            gets.append(sum(c.gets for r in clients for c in r) - before)
            assert got.model_dump(exclude={"took_ms"}) == want.model_dump(exclude={"took_ms"})
            assert all(h.payload for h in got.hits)
        # the three small pages made no get call; vectors and 2 x 200 candidates (> 256) hydrated
        assert gets[:3] == [0, 0, 0] and gets[3] > 0 and gets[4] > 0
    finally:
        stop_local_shards(raw, drop=True)


class DownClient(CountingClient):
    """A replica whose reads of stored points fail as an unreachable actor would."""

    async def get(self, ids, with_vectors=()):
        from cluster.errors import ShardUnavailable

        raise ShardUnavailable(f"shard {self.inner.shard} is down", shards=[self.inner.shard])


def test_fetch_returns_points_by_id_and_names_shards_that_could_not_answer(milvus_backend, tmp_path):
    milvus, uri = milvus_backend
    cfg = CollectionConfig(name=f"fetch{next(_n)}", shards=3, spaces={"a": {"dim": DIM, "index": {"type": "FLAT"}}})
    raw = local_shards(cfg, replica_specs(cfg, milvus, tmp_path, uri))
    try:
        rng = np.random.default_rng(6)
        va = unit(rng, 60)
        coord = Coordinator.from_clients(cfg, raw)
        points = [Point(id=f"p{i}", vectors={"a": va[i].tolist()}, payload={"n": i}) for i in range(60)]
        asyncio.run(coord.upsert(points))
        ids = [f"p{i}" for i in range(0, 60, 7)] + ["absent"]
        rows, failed = asyncio.run(coord.fetch(ids, ["a"]))
        assert not failed and sorted(rows) == sorted(ids[:-1])
        for pid, row in rows.items():
            i = int(pid[1:])
            assert row.payload == {"n": i}
            np.testing.assert_allclose(row.vectors["a"], va[i], atol=1e-6)
        down = Coordinator.from_clients(cfg, [[DownClient(c) if s == 1 else c for c in r] for s, r in enumerate(raw)])
        rows, failed = asyncio.run(down.fetch(ids))
        assert list(failed) == [1] and failed[1].cause == "unavailable"
        assert set(rows) == {i for i in ids[:-1] if coord.shard_of(i) != 1}  # the others still answer
    finally:
        stop_local_shards(raw, drop=True)
