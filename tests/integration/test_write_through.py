"""Upserts are written to Elasticsearch first, then to the shards: what Elasticsearch refuses never reaches a shard,
and when a step fails, Elasticsearch is put back in step with what the shards hold. Real noida-db, real Milvus."""
from __future__ import annotations

import asyncio
import itertools

import httpx
import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.errors import BackendError, ShardUnavailable, WriteRefused
from router.collection.coordinator import Coordinator
from router.metadata.store import MetadataStore, index_name
from router.schema.points import Point
from router.replication.replicas import PROBE_INTERVAL_S
from shards.local import local_shards, replica_specs, stop_local_shards
from tests.clock import FakeClock

DIM = 8
_n = itertools.count()


class DownForWrites:
    """A replica that answers reads but whose writes fail as an unreachable actor's would, while `down`."""

    def __init__(self, inner):
        self.inner = inner
        self.down = True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def upsert(self, points, wait=True):
        if self.down:
            raise ShardUnavailable(f"shard {self.inner.shard} is down", shards=[self.inner.shard])
        return await self.inner.upsert(points, wait)


class Refusing(DownForWrites):
    """A replica whose Milvus refuses the write's data (as a server refuses a value it cannot store)."""

    async def upsert(self, points, wait=True):
        raise WriteRefused(f"shard {self.inner.shard}: Milvus refused the rows")


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


def test_a_write_that_missed_its_quorum_rolls_forward_in_elasticsearch_and_the_shards(world):
    """Issue 33 (Medium): a write that missed its quorum is logged and replayed into Milvus once the replica is
    back; Elasticsearch was rolled back meanwhile, so the stores ended different. Now it rolls forward in both."""
    cfg, store, clients, _ = world
    rng = np.random.default_rng(2)
    clock = FakeClock()
    broken = [[DownForWrites(c) if s == 1 else c for c in r] for s, r in enumerate(clients)]
    coord = Coordinator.from_clients(cfg, broken, metadata=store, clock=clock)
    ids = [f"p{i}" for i in range(20)]
    with pytest.raises(ShardUnavailable, match="retrying it is safe"):
        asyncio.run(coord.upsert(points(ids, rng)))
    assert es_ids(store, cfg) == set(ids)            # Elasticsearch keeps the write: the shards will hold it
    for b in broken[1]:
        b.down = False                               # the replica is back; the heal loop replays the write
    clock.advance(PROBE_INTERVAL_S + 0.1)
    asyncio.run(coord.heal())
    held, failed = asyncio.run(coord.fetch(ids))
    assert not failed and set(held) == set(ids) == es_ids(store, cfg)  # the stores end the same


def test_a_write_a_replica_refuses_is_put_back_in_elasticsearch(world):
    """A refused write ends nowhere: Elasticsearch lists only what the shards hold for those ids."""
    cfg, store, clients, _ = world
    rng = np.random.default_rng(3)
    refusing = [[Refusing(c) if s == 1 else c for c in r] for s, r in enumerate(clients)]
    coord = Coordinator.from_clients(cfg, refusing, metadata=store)
    ids = [f"q{i}" for i in range(20)]
    with pytest.raises(WriteRefused):
        asyncio.run(coord.upsert(points(ids, rng)))
    held, failed = asyncio.run(coord.fetch(ids))
    assert not failed and held and all(coord.shard_of(i) == 0 for i in held)  # shard 0 wrote its part
    assert es_ids(store, cfg) == set(held)  # Elasticsearch lists exactly those, not shard 1's
