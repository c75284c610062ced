"""Shard sequencers on real Ray actors over milvus-lite: write ordering and replication state survive an ingress
restart and a sequencer restart, and two ingress copies writing the same ids leave every replica identical."""
from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from shards.local import replica_specs

DIM = 8
_n = itertools.count()


def collection(shards, replicas):
    return CollectionConfig(name=f"sq{next(_n)}", shards=shards, replicas=replicas, write_quorum="majority",
                            spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})


def ingress(cfg, tmp_path):
    """What an ingress replica does at start: attach to (or start) the shard actors and their sequencers."""
    from router.replication.ray_sequencer import start_ray_sequencers
    from shards.actor import start_ray_shards

    specs = replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None)
    clients = start_ray_shards(cfg, specs, detached=True)  # as the ingress starts them: they outlive it
    seqs = start_ray_sequencers(cfg, specs, tmp_path, timeout_s=10, detached=True)
    return Coordinator.from_clients(cfg, clients, sequencers=seqs, timeout_s=10)


def points(ids, tag, seed):
    v = np.random.default_rng(seed).standard_normal((len(ids), DIM))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [Point(id=i, payload={"by": tag}, vectors={"v": v[k].tolist()}) for k, i in enumerate(ids)]


def replica_contents(coord):
    """{shard: [per replica {id: payload}]} read from every replica itself."""
    async def one(client):
        ids = await client.ids()
        got = await client.get(ids)
        return {i: p.payload for i, p in got.items()}

    async def run():
        return [await asyncio.gather(*(one(c) for c in sh.clients)) for sh in coord.shards]
    return asyncio.run(run())


def heal_until_live(coord, within_s=90.0):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            asyncio.run(coord.heal())
        except Exception:  # noqa: BLE001 - the sequencer may still be restarting
            pass
        if all(st["state"] == "live" for sh in coord.shards for st in sh.replica_report()):
            return
    raise AssertionError([sh.replica_report() for sh in coord.shards])


def stop(coord):
    from router.replication.ray_sequencer import stop_ray_sequencers
    from shards.actor import stop_ray_shards

    stop_ray_sequencers([sh.sequencer for sh in coord.shards], drop=True)
    stop_ray_shards([sh.clients for sh in coord.shards])


@pytest.mark.slow
def test_an_ingress_restart_and_a_sequencer_restart_lose_no_replication_state(ray_session, tmp_path):
    import ray

    from router.replication.ray_sequencer import sequencer_name
    from shards.actor import NAMESPACE

    cfg = collection(shards=1, replicas=3)
    a = ingress(cfg, tmp_path)
    b = None
    try:
        first = [f"p{i:04d}" for i in range(300)]
        asyncio.run(a.upsert(points(first, "a", 1)))
        ray.kill(a.shards[0].clients[1].actor, no_restart=True)   # replica 1 gone: writes ack at 2 of 3
        second = [f"p{i:04d}" for i in range(200, 500)]           # rewrites 100 of the first ones
        asyncio.run(a.upsert(points(second, "a2", 2)))
        # The sequencer crashes; Ray restarts it from its journal (it starts replica 1 again on the way).
        ray.kill(ray.get_actor(sequencer_name(cfg.name, 0), namespace=NAMESPACE), no_restart=False)
        del a  # the ingress restarts: a new one knows only what the actors and the journal tell it
        b = ingress(cfg, tmp_path)
        view = b.shards[0].replica_report()
        assert [st["state"] for st in view] == ["live", "stale", "live"], view
        assert view[1]["lag"] == 1 and view[0]["applied_seq"] == 2
        assert 1 not in b.shards[0].state.read_order()          # never read stale data meanwhile
        assert asyncio.run(b.count(None)) == 500
        third = [f"p{i:04d}" for i in range(450, 600)]
        asyncio.run(b.upsert(points(third, "b", 3)))
        heal_until_live(b)
        rows = replica_contents(b)[0]
        assert rows[0] == rows[1] == rows[2] and len(rows[0]) == 600
        assert {i for i, p in rows[0].items() if p["by"] == "b"} == set(third)
        assert {i for i, p in rows[0].items() if p["by"] == "a2"} == set(second) - set(third)
    finally:
        if b is not None:
            stop(b)


@pytest.mark.slow
def test_two_ingress_copies_writing_the_same_ids_leave_every_replica_identical(ray_session, tmp_path):
    cfg = collection(shards=2, replicas=2)
    a, b = ingress(cfg, tmp_path), ingress(cfg, tmp_path)
    try:
        shared = [f"s{i:03d}" for i in range(40)]

        async def writer(coord, tag, seed):
            own = [f"{tag}{i:03d}" for i in range(200)]
            for k in range(0, 200, 20):  # own ids, and the shared ones written through both, interleaved
                await coord.upsert(points(own[k:k + 20], tag, seed + k))
                await coord.upsert(points(shared[(k // 20) * 4:(k // 20) * 4 + 8], tag, seed + k + 1))
            return own

        async def both():
            return await asyncio.gather(writer(a, "a", 10), writer(b, "b", 20))

        own_a, own_b = asyncio.run(both())
        for shard_rows in replica_contents(a):
            assert shard_rows[0] == shard_rows[1]                 # every replica, the same final value per id
        held = {i: p for shard_rows in replica_contents(a) for i, p in shard_rows[0].items()}
        assert set(own_a) | set(own_b) | set(shared) == set(held)  # every acknowledged write
        assert all(held[i]["by"] == "a" for i in own_a) and all(held[i]["by"] == "b" for i in own_b)
        got_a, got_b = asyncio.run(a.fetch(shared)), asyncio.run(b.fetch(shared))
        assert {i: r.payload for i, r in got_a[0].items()} == {i: r.payload for i, r in got_b[0].items()}
        from router.collection.verify import verify_replicas

        assert asyncio.run(verify_replicas(b)) == []               # compared by each shard's sequencer actor
        # the move locks (issue 28) live on the sequencer actor: what a takes, b cannot until a gives it back
        sa, sb = a.shards[1].sequencer, b.shards[1].sequencer
        assert asyncio.run(sa.lock("a", ["s000"], 30.0, 0.0)) == []
        assert asyncio.run(sb.lock("b", ["s000", "s001"], 30.0, 0.0)) == ["s000"]
        assert asyncio.run(sb.unlock("b", ["s000"])) == ["s000"] and asyncio.run(sa.unlock("a", ["s000"])) == []
        assert asyncio.run(sb.lock("b", ["s000"], 30.0, 0.0)) == []
        one = a.shards[0].clients[1]                               # a row changed behind prism's back shows
        [row] = asyncio.run(one.export(asyncio.run(one.ids())[:1]))
        row.payload = {"by": "behind prism's back"}
        asyncio.run(one.upsert([row]))
        [diff] = asyncio.run(verify_replicas(b))
        assert diff.shard == 0 and diff.ids == [row.id] and diff.differing == 1
    finally:
        stop(a)
