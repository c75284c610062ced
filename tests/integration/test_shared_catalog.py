"""Two ingress replicas (two PrismService instances in this process) over one data dir, sharing shard replicas and
sequencers as Ray's named actors are shared (real milvus-lite): what one of them changes in the catalog (a new
field's mapping, a reshard's pause, a new shard layout) the other sees and never overwrites."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import ClusterConfig
from cluster.errors import ShardUnavailable
from cluster.ring import HashRing
from router.replication.replicas import ReplicatedShard
from router.replication.sequencer import Journal, Sequencer
from router.collection.service import PrismService
from shards.local import local_shards

DIM = 4


class Actors:
    """Shard replicas and sequencers by (collection, shard): started once, attached to by every ingress."""

    def __init__(self, data_dir):
        self.data_dir, self.shards, self.sequencers = data_dir, {}, {}

    def start_shards(self, cfg: CollectionConfig, specs, create=True, first_shard=0):
        out = []
        for i, row in enumerate(specs):
            key = (cfg.name, first_shard + i)
            if key not in self.shards:
                self.shards[key] = local_shards(cfg, [row], create=create, first_shard=first_shard + i)[0]
            out.append(self.shards[key])
        return out

    def stop_shards(self, clients, drop=False):
        for row in clients:
            for c in row:
                c.target.drop() if drop else c.target.close()
                self.shards.pop((c.target.config.name, c.shard), None)

    def start_sequencers(self, cfg: CollectionConfig, specs, first_shard=0):
        out = []
        for i in range(len(specs)):
            s = first_shard + i
            if (cfg.name, s) not in self.sequencers:
                host = ReplicatedShard(s, self.shards[(cfg.name, s)], key=f"{cfg.name}/{s}",
                                       write_quorum=cfg.write_quorum,
                                       journal=Journal(self.data_dir / "sequencer" / cfg.name / f"s{s}"))
                self.sequencers[(cfg.name, s)] = Sequencer(host)
            out.append(self.sequencers[(cfg.name, s)])
        return out

    def stop_sequencers(self, seqs, drop=False):
        for seq in seqs:
            seq.host.journal.close()
            self.sequencers = {k: v for k, v in self.sequencers.items() if v is not seq}

    def service(self, ingress_replicas: int = 2) -> PrismService:
        cfg = ClusterConfig(data_dir=str(self.data_dir), elasticsearch={"mode": "off"}, shard_timeout_s=0.5,
                            ingress_replicas=ingress_replicas)
        return PrismService(cfg, start_shards=self.start_shards, stop_shards=self.stop_shards,
                            start_sequencers=self.start_sequencers, stop_sequencers=self.stop_sequencers)


def vec(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def pts(ids, **payload):
    return {"points": [{"id": i, "payload": {"n": k, **payload}, "vectors": {"v": vec(k)}} for k, i in enumerate(ids)]}


@pytest.fixture
def pair(tmp_path):
    actors = Actors(tmp_path)
    a, b = actors.service(), actors.service()
    asyncio.run(a.create_collection("c", {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}, "shards": 2,
                                          "replicas": 2}))
    yield a, b, actors
    for (_, _), seq in list(actors.sequencers.items()):
        seq.host.journal.close()
    for row in actors.shards.values():
        for c in row:
            c.target.close()


def catalog(tmp_path) -> dict:
    return json.loads((tmp_path / "catalog" / "c.json").read_text())


def test_fields_mapped_through_either_ingress_are_all_kept(pair, tmp_path):
    a, b, _ = pair
    asyncio.run(b.upsert("c", pts(["b0"])))  # b opens the collection (its view of the catalog: no color, no size)
    asyncio.run(a.upsert("c", pts(["a1"], color="red")))   # a maps `color`
    asyncio.run(b.upsert("c", pts(["b1"], size=3)))        # b maps `size`, from a view that lacked `color`
    assert {"color": "keyword", "size": "integer"}.items() <= catalog(tmp_path)["metadata"].items()
    assert {"color", "size"} <= set(a.coordinator("c").config.metadata)
    assert {"color", "size"} <= set(b.coordinator("c").config.metadata)  # each adopted the other's field
    assert catalog(tmp_path)["_catalog"]["version"] == 4  # created, then `n`, `color` and `size` mapped


def test_a_reshard_through_one_ingress_pauses_the_other_and_it_follows_the_new_layout(pair, tmp_path):
    a, b, actors = pair
    first = [f"p{i}" for i in range(60)]
    asyncio.run(b.upsert("c", pts(first)))

    async def scenario():
        task = asyncio.create_task(a.reshard("c", {"shards": 3}))
        while a.coordinators["c"].paused is None and not task.done():
            await asyncio.sleep(0)  # poll: until a has paused writes
        assert not task.done()
        with pytest.raises(ShardUnavailable, match="resharding"):  # b refuses writes while a moves points
            await b.upsert("c", pts(["late"]))
        return await task

    report = asyncio.run(scenario())
    assert report["shards"] == 3 and catalog(tmp_path)["shards"] == 3 and catalog(tmp_path)["_catalog"]["paused"] is None
    coord_b = b.coordinator("c")
    assert coord_b.config.shards == 3 and len(coord_b.shards) == 3  # b follows the new layout
    more = [f"q{i}" for i in range(60)]
    asyncio.run(b.upsert("c", pts(more)))  # written by b's 3-shard ring
    ring = HashRing(range(3))
    for s in range(3):
        held = [set(asyncio.run(c.ids())) for c in actors.shards[("c", s)]]
        assert held[0] == held[1]  # both replicas of every shard agree
        assert held[0] == {i for i in first + more if int(ring.get(i)) == s}  # each point on its owner only
    for svc in (a, b):
        got = asyncio.run(svc.retrieve("c", {"ids": first + more + ["late"]}))
        assert len(got.points) == 120 and got.missing == ["late"]


@pytest.mark.parametrize("ingresses", [1, 2])
def test_a_rebalance_pauses_writes_only_where_other_ingresses_write(tmp_path, ingresses):
    """Sequencers order the writes in both cases. One ingress holds a moving point's writes back itself and keeps
    taking writes while points move; with several, writes pause through the catalog (another ingress's writes are
    not this process's to hold back). Before, the single ingress of `prism up` paused too and slept
    shard_timeout_s for writes of other ingresses it did not have."""
    actors = Actors(tmp_path)
    svc = actors.service(ingress_replicas=ingresses)
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((4, DIM)) * 4

    def cluster_pts(ids, k0=0):
        return {"points": [{"id": i, "vectors": {"v": (centres[(k0 + k) % 4] + rng.standard_normal(DIM) * 0.1).tolist()}}
                           for k, i in enumerate(ids)]}

    async def scenario():
        await svc.create_collection("r", {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}, "shards": 2,
                                          "replicas": 2, "routing": {"method": "vector", "space": "v",
                                                                     "centroids": 4}})
        await svc.upsert("r", cluster_pts([f"p{i}" for i in range(150)]))  # below automatic training (50 x 4)
        coord = svc.coordinator("r")
        task = asyncio.create_task(svc.rebalance("r", {}))
        while coord.progress.state != "moving" and not task.done():
            await asyncio.sleep(0)  # poll: until the points begin to move
        assert not task.done()
        try:
            late = await svc.upsert("r", cluster_pts([f"late{i}" for i in range(8)], k0=1))
        except ShardUnavailable as exc:
            late = exc
        await task
        from router.collection.verify import misplaced_points, verify_replicas

        return late, await misplaced_points(coord), await verify_replicas(coord)

    late, misplaced, differences = asyncio.run(scenario())
    if ingresses == 1:
        assert not isinstance(late, Exception) and late.upserted == 8, late
    else:
        assert isinstance(late, ShardUnavailable) and "rebalancing" in str(late)
    assert misplaced == [] and differences == [], (misplaced, differences)  # every point at its owner, replicas equal
    want = 150 + (8 if ingresses == 1 else 0)
    for s in range(2):
        held = [set(asyncio.run(c.ids())) for c in actors.shards[("r", s)]]
        assert held[0] == held[1], f"shard {s}'s replicas differ"
    assert sum(len(asyncio.run(actors.shards[("r", s)][0].ids())) for s in range(2)) == want
    for (_, _), seq in list(actors.sequencers.items()):
        seq.host.journal.close()
    for row in actors.shards.values():
        for c in row:
            c.target.close()
