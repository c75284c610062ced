"""Cross-request micro-batching on both Milvus backends: concurrent queries share shard calls (one Milvus search
with nq > 1 per compatible group) and get exactly the answers they get alone."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from cluster.config import BatchSettings, CollectionConfig
from router.coordinator import Coordinator
from router.models import Point, QueryRequest
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
        cos = [co for sh in batched.shards for co in sh._coalescers.values()]
        assert sum(co.requests for co in cos) == 32 * 2  # every query asked both shards once
        assert sum(co.calls for co in cos) < 32 * 2      # ...in fewer shard calls: they were batched
    finally:
        stop_local_shards(clients, drop=True)
