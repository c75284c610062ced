"""Resharding 4 -> 5 through the service (real milvus-lite): ~1/5 of the points move, each found exactly once."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster.config import ClusterConfig
from cluster.errors import ShardUnavailable
from cluster.ring import HashRing
from router.models import Point
from router.service import PrismService

N = 4000


@pytest.mark.slow
def test_reshard_four_to_five_moves_a_fifth_and_loses_nothing(tmp_path):
    service = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"}))
    vecs = np.random.default_rng(0).standard_normal((N, 8)).astype(np.float32)

    async def scenario():
        await service.create_collection("rs", {"spaces": {"v": {"dim": 8, "index": {"type": "FLAT"}}}, "shards": 4,
                                               "replicas": 2})
        for i in range(0, N, 1000):
            await service.upsert("rs", {"points": [{"id": f"p{j}", "payload": {"j": j}, "vectors": {"v": vecs[j].tolist()}}
                                                   for j in range(i, i + 1000)]})
        probes = [{"prefetch": [{"space": "v", "vector": vecs[j].tolist()}], "limit": 5, "fusion": {"method": "none"}}
                  for j in range(0, N, 400)]
        before = [[h.id for h in (await service.query("rs", q)).hits] for q in probes]
        during: list = []

        async def keep_reading():
            while not done.is_set():
                for q, want in zip(probes, before):
                    got = await service.query("rs", q)
                    during.append(([h.id for h in got.hits] == want) and not got.partial)
                await asyncio.sleep(0)

        done = asyncio.Event()
        reader = asyncio.create_task(keep_reading())
        old = service.coordinator("rs")
        report_task = asyncio.create_task(service.reshard("rs", {"shards": 5}))
        await asyncio.sleep(0.05)
        assert not report_task.done()
        with pytest.raises(ShardUnavailable, match="resharding"):  # writes pause while points move
            await old.upsert([Point(id="late", vectors={"v": [0.0] * 8})])
        report = await report_task
        done.set()
        await reader
        after = [[h.id for h in (await service.query("rs", q)).hits] for q in probes]
        coord = service.coordinator("rs")
        held = [await coord._read(s, "ids") for s in range(5)]
        return report, before, after, during, held, coord

    report, before, after, during, held, coord = asyncio.run(scenario())
    assert report["shards"] == 5
    assert 0.15 * N <= report["moved"] <= 0.25 * N, report
    assert during and all(during), f"{during.count(False)} of {len(during)} reads differed while resharding"
    assert after == before
    everything = [pid for ids in held for pid in ids]
    assert len(everything) == N and len(set(everything)) == N  # exactly once
    ring = HashRing(range(5))
    for s, ids in enumerate(held):
        assert all(ring.get(pid) == s for pid in ids)
    # Both replicas of every shard hold the same points.
    counts = asyncio.run(coord.counts())
    assert all(len({c["v"] for c in row}) == 1 for row in counts)
    assert service.list_collections() == ["rs"]
    service.close()
