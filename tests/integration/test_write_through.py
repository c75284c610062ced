"""Upserts are written to Elasticsearch first, then to the shards: what Elasticsearch refuses never reaches a shard,
and when a step fails, Elasticsearch is put back in step with what the shards hold. Real noida-db, real Milvus."""
from __future__ import annotations

import asyncio
import itertools

import httpx
import numpy as np
import pytest

from cluster.config import CollectionConfig
from cluster.errors import BackendError, ShardUnavailable
from router.coordinator import Coordinator
from router.metadata import MetadataStore, index_name
from router.models import Point
from shards.local import local_shards, replica_specs, stop_local_shards

DIM = 8
_n = itertools.count()


class DownForWrites:
    """A replica that answers reads but whose writes fail as an unreachable actor's would."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def upsert(self, points, wait=True):
        raise ShardUnavailable(f"shard {self.inner.shard} is down", shards=[self.inner.shard])


def points(ids, rng):
    v = rng.standard_normal((len(ids), DIM))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [Point(id=i, payload={"tag": "new", "n": k}, vectors={"v": v[k].tolist()}) for k, i in enumerate(ids)]


def es_ids(store: MetadataStore, cfg: CollectionConfig) -> set[str]:
    return set(store.ids(cfg.name, {"match_all": {}}))


@pytest.fixture
def world(milvus_backend, es_server, tmp_path):
    milvus, uri = milvus_backend
    cfg = CollectionConfig(name=f"wt{next(_n)}", shards=2, metadata={"tag": "keyword", "n": "integer"},
                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    store = MetadataStore(es_server.uri)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, milvus, tmp_path, uri))
    yield cfg, store, clients, es_server.uri
    stop_local_shards(clients, drop=True)
    store.drop_index(cfg.name)


def test_a_write_elasticsearch_refuses_reaches_no_shard(world):
    cfg, store, clients, es_url = world
    coord = Coordinator.from_clients(cfg, clients, metadata=store)
    rng = np.random.default_rng(1)
    asyncio.run(coord.upsert(points(["a", "b"], rng)))
    settings = f"{es_url}/{index_name(cfg.name)}/_settings"
    httpx.put(settings, json={"index": {"blocks": {"write": True}}}).raise_for_status()
    try:
        with pytest.raises(BackendError, match="Elasticsearch"):
            asyncio.run(coord.upsert(points(["c", "d"], rng)))
    finally:
        httpx.put(settings, json={"index": {"blocks": {"write": False}}}).raise_for_status()
    rows, _ = asyncio.run(coord.fetch(["a", "b", "c", "d"]))
    assert sorted(rows) == ["a", "b"]  # nothing of the refused request is in Milvus
    assert es_ids(store, cfg) == {"a", "b"}
    asyncio.run(coord.upsert(points(["c", "d"], rng)))  # unblocked: the same request lands whole
    assert sorted(asyncio.run(coord.fetch(["a", "b", "c", "d"]))[0]) == ["a", "b", "c", "d"]


def test_a_failed_shard_write_leaves_elasticsearch_listing_only_what_the_shards_hold(world):
    cfg, store, clients, _ = world
    rng = np.random.default_rng(2)
    broken = [[DownForWrites(c) if s == 1 else c for c in r] for s, r in enumerate(clients)]
    coord = Coordinator.from_clients(cfg, broken, metadata=store)
    ids = [f"p{i}" for i in range(20)]
    with pytest.raises(ShardUnavailable):
        asyncio.run(coord.upsert(points(ids, rng)))
    held, failed = asyncio.run(coord.fetch(ids))
    assert not failed and held and all(coord.shard_of(i) == 0 for i in held)  # shard 0 wrote its part
    assert es_ids(store, cfg) == set(held)  # Elasticsearch lists exactly those, not shard 1's
