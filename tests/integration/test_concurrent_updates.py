"""Concurrent partial vector updates of the same points (real milvus-lite, two replicas): an update to one space
never undoes a concurrent update to another space of the same point, and the replicas agree afterwards."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from router.collection.coordinator import Coordinator
from router.schema.points import Point, VectorUpdate
from shards.local import local_shards, replica_specs, stop_local_shards

DIM = 4
_n = itertools.count()


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def test_concurrent_updates_to_different_spaces_of_one_point_keep_both(tmp_path):
    cfg = CollectionConfig(name=f"upd{next(_n)}", shards=2, replicas=2,
                           spaces={s: {"dim": DIM, "index": {"type": "FLAT"}} for s in ("a", "b", "c")})
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    coord = Coordinator.from_clients(cfg, clients)
    ids = [f"p{i}" for i in range(20)]
    try:
        asyncio.run(coord.upsert([Point(id=i, payload={"k": i}, vectors={s: unit(k * 10 + j) for j, s in
                                                                          enumerate("abc")})
                                  for k, i in enumerate(ids)]))

        async def race():
            # per point: one client updates space a, another space b, at the same time
            return await asyncio.gather(*(coord.update_vectors([VectorUpdate(id=i, vectors={s: unit(1000 + k)})])
                                          for k, i in enumerate(ids) for s in ("a", "b")))

        results = asyncio.run(race())
        assert all(r.upserted == 1 and not r.failed for r in results)
        for sh in coord.shards:
            held = [asyncio.run(c.get(ids, ["a", "b", "c"])) for c in sh.clients]
            assert held[0].keys() == held[1].keys() and held[0]  # every replica holds the same points
            for pid, row in held[0].items():
                k = ids.index(pid)
                assert np.allclose(row.vectors["a"], unit(1000 + k), atol=1e-6), pid  # the update to a kept
                assert np.allclose(row.vectors["b"], unit(1000 + k), atol=1e-6), pid  # and the one to b
                assert np.allclose(row.vectors["c"], unit(k * 10 + 2), atol=1e-6)    # c untouched
                assert row.payload == {"k": pid}
                other = held[1][pid]
                assert all(np.allclose(row.vectors[s], other.vectors[s]) for s in "abc") and other.payload == row.payload
    finally:
        stop_local_shards(clients, drop=True)


def test_a_vector_update_racing_a_delete_never_brings_the_point_back(tmp_path):
    cfg = CollectionConfig(name=f"upd{next(_n)}", shards=1, replicas=2,
                           spaces={s: {"dim": DIM, "index": {"type": "FLAT"}} for s in ("a", "b")})
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    coord = Coordinator.from_clients(cfg, clients)
    ids = [f"q{i}" for i in range(20)]
    try:
        asyncio.run(coord.upsert([Point(id=i, vectors={"a": unit(k), "b": unit(k + 50)}) for k, i in enumerate(ids)]))

        async def race():
            return await asyncio.gather(*(call for k, i in enumerate(ids) for call in (
                coord.update_vectors([VectorUpdate(id=i, vectors={"a": unit(500 + k)})]), coord.delete([i]))))

        asyncio.run(race())
        for c in coord.shards[0].clients:
            assert asyncio.run(c.ids()) == []  # deleted everywhere: no update wrote one back
    finally:
        stop_local_shards(clients, drop=True)
