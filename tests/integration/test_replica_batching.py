"""Group commit at the shard replica actor: concurrent searches from two caller processes (as two ingress replicas
would send them) share Milvus searches, and every caller gets exactly the answers its searches get alone."""
from __future__ import annotations

import itertools

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings, MilvusConfig
from shards.api import PointRow, SearchSpec
from shards.expr import ids_in
from shards.local import replica_specs

DIM = 16
_n = itertools.count()


def unit(rng, n):
    v = rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()


def test_two_callers_share_milvus_searches_and_get_their_unbatched_answers(ray_session, tmp_path):
    import ray

    from shards.actor import start_ray_shards, stop_ray_shards

    cfg = CollectionConfig(name=f"rbatch{next(_n)}", shards=1, spaces={
        "a": {"dim": DIM, "index": {"type": "HNSW"}}, "b": {"dim": DIM, "index": {"type": "FLAT"}}})
    clients = start_ray_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None),
                               batching=BatchSettings(replica_enabled=True, replica_max_vectors=64))
    actor = clients[0][0].actor
    try:
        rng = np.random.default_rng(29)
        va, vb, qa, qb = unit(rng, 400), unit(rng, 400), unit(rng, 32), unit(rng, 32)
        ray.get(actor.upsert.remote([PointRow(id=f"p{i}", payload={"n": i}, vectors={"a": va[i], "b": vb[i]})
                                     for i in range(400)], True))
        third = ids_in([f"p{i}" for i in range(0, 400, 3)])
        # A mix: limits that share a search (5, 10, 20 at HNSW's ef 64) and one that does not (100), a filter,
        # payloads with the search, two spaces per call.
        calls = [[SearchSpec("a", qa[j], limit=(5, 10, 20, 100)[j % 4], with_payload=j % 5 == 0),
                  SearchSpec("b", qb[j], limit=10, expr=third if j % 2 else None)] for j in range(32)]
        alone = [ray.get(actor.search_many.remote(c)) for c in calls]  # one at a time: each call a batch alone
        before = ray.get(actor.search_counts.remote())
        assert before["batches"] == before["requests"] == 32

        @ray.remote(num_cpus=0)
        def caller(shard, mine):
            """Another process calling the same replica, all its calls at once."""
            return ray.get([shard.search_many.remote(c) for c in mine])

        first, second = ray.get([caller.remote(actor, calls[0::2]), caller.remote(actor, calls[1::2])])
        together = [None] * 32
        together[0::2], together[1::2] = first, second
        after = ray.get(actor.search_counts.remote())

        for want, got in zip(alone, together, strict=True):
            for w, g in zip(want, got, strict=True):
                assert [h.id for h in w] == [h.id for h in g]
                np.testing.assert_allclose([h.score for h in w], [h.score for h in g], atol=1e-5)
                assert [h.payload for h in w] == [h.payload for h in g]
        assert after["requests"] - before["requests"] == 32
        # Alone, the 32 calls made 64 Milvus searches; from two callers at once they shared them.
        assert before["milvus_searches"] == 64
        assert after["milvus_searches"] - before["milvus_searches"] < 64
        assert after["batches"] - before["batches"] < 32
    finally:
        stop_ray_shards(clients, drop=True)
