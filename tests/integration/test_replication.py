"""Replicas on real Ray actors over milvus-lite: failover, partial answers, no lost acknowledged writes."""
from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.errors import ShardUnavailable
from shards.local import replica_specs
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest
from router.replication.replicas import PROBE_INTERVAL_S
from tests.clock import FakeClock

DIM = 16
_n = itertools.count()


def vectors(n, seed):
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(tmp_path, shards, replicas, quorum="majority"):
    from shards.actor import start_ray_shards

    cfg = CollectionConfig(name=f"rep{next(_n)}", shards=shards, replicas=replicas, write_quorum=quorum,
                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    specs = replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None)
    clients = start_ray_shards(cfg, specs)
    return cfg, specs, Coordinator.from_clients(cfg, clients, timeout_s=10, clock=FakeClock())


def load(coord, n, seed=1, batch=250):
    vecs = vectors(n, seed)
    for i in range(0, n, batch):
        asyncio.run(coord.upsert([Point(id=f"p{j}", payload={"j": j}, vectors={"v": vecs[j].tolist()})
                                  for j in range(i, min(n, i + batch))]))


def req(q):
    return QueryRequest(prefetch=[{"space": "v", "vector": q.tolist(), "limit": 10}], fusion={"method": "none"},
                        limit=10)


def teardown(coord):
    from shards.actor import stop_ray_shards

    stop_ray_shards([sh.clients for sh in coord.shards], drop=False)


@pytest.mark.slow
def test_killing_one_replica_of_every_shard_loses_no_query(ray_session, tmp_path):
    import ray

    cfg, _, coord = build(tmp_path, shards=3, replicas=2)
    try:
        load(coord, 1500)
        queries = vectors(20, 99)
        before = [asyncio.run(coord.query(req(q))) for q in queries]
        victims = [coord.shards[s].clients[coord.shards[s].state.read_order()[0]].actor for s in range(3)]  # the preferred ones

        async def scenario():
            sem = asyncio.Semaphore(4)
            results = []

            async def one(i):
                async with sem:
                    if i == 40:
                        for a in victims:
                            ray.kill(a, no_restart=False)  # a crash; Ray restarts it
                    try:
                        results.append((i, await coord.query(req(queries[i % 20]))))
                    except Exception as exc:  # noqa: BLE001 - counted as a failed query
                        results.append((i, exc))

            await asyncio.gather(*(one(i) for i in range(200)))
            return results

        results = asyncio.run(scenario())
        failed = [r for _, r in results if isinstance(r, Exception)]
        partial = [r for _, r in results if not isinstance(r, Exception) and r.partial]
        assert failed == [] and partial == []
        for i, r in results:
            assert [h.id for h in r.hits] == [h.id for h in before[i % 20].hits]
            assert np.allclose([h.score for h in r.hits], [h.score for h in before[i % 20].hits], atol=1e-5)
    finally:
        teardown(coord)


@pytest.mark.slow
def test_a_whole_shard_down_is_partial_then_whole_again_after_restart(ray_session, tmp_path):
    import ray

    from shards.actor import start_ray_shards

    cfg, specs, coord = build(tmp_path, shards=3, replicas=2)
    try:
        load(coord, 900)
        q = vectors(1, 5)[0]
        full = asyncio.run(coord.query(req(q)))
        for c in coord.shards[1].clients:
            ray.kill(c.actor, no_restart=True)
        answer = asyncio.run(coord.query(req(q)))
        assert answer.partial is True
        assert answer.coverage.shards_total == 3 and answer.coverage.shards_answered == 2
        assert [f.shard for f in answer.coverage.failed] == [1] and "replica" in answer.coverage.failed[0].message
        assert answer.coverage.failed[0].reason == "unavailable"  # both actors are gone
        assert {h.id for h in answer.hits} <= {f"p{j}" for j in range(900) if coord.shard_of(f"p{j}") != 1}
        with pytest.raises(ShardUnavailable) as exc:
            asyncio.run(coord.query(req(q).model_copy(update={"require_complete": True})))
        assert exc.value.status == 503 and exc.value.shards == [1]
        # Restart the shard's replicas (same names, same persisted directories) and let them catch up.
        fresh = start_ray_shards(cfg, specs)
        coord.shards[1].clients = fresh[1]
        coord.shards[1].state.clock.advance(PROBE_INTERVAL_S)  # the dead replicas' probes are due
        assert asyncio.run(coord.heal()) == {"healed": 2, "failed": 0}
        again = asyncio.run(coord.query(req(q)))
        assert not again.partial and [h.id for h in again.hits] == [h.id for h in full.hits]
    finally:
        teardown(coord)


@pytest.mark.slow
def test_writes_during_a_replica_crash_are_never_lost(ray_session, tmp_path):
    import ray

    cfg, _, coord = build(tmp_path, shards=2, replicas=3)
    try:
        vecs = vectors(2000, 3)
        acked, refused = [], 0
        victim = coord.shards[0].clients[0].actor
        for b in range(40):
            if b == 12:
                ray.kill(victim, no_restart=False)
            batch = [Point(id=f"w{j}", payload={"j": j}, vectors={"v": vecs[j].tolist()})
                     for j in range(b * 50, b * 50 + 50)]
            try:
                asyncio.run(coord.upsert(batch))
                acked.extend(p.id for p in batch)
            except ShardUnavailable:
                refused += 1
        assert len(acked) >= 1800  # 3 replicas, majority quorum: one crash does not stop writes
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # each heal waits (at most its ping timeout) for the restarting actor
            asyncio.run(coord.heal())
            if all(st["state"] == "live" for row in coord.replica_states() for st in row):
                break
            coord.shards[0].state.clock.advance(PROBE_INTERVAL_S)
        assert all(st["state"] == "live" for row in coord.replica_states() for st in row), coord.replica_states()
        counts = asyncio.run(coord.counts())
        for s, row in enumerate(counts):
            assert len({c["v"] for c in row}) == 1, (s, row)  # every replica of a shard holds the same points
        for s in range(2):
            mine = [pid for pid in acked if coord.shard_of(pid) == s]
            for client in coord.shards[s].clients:
                held = asyncio.run(client.get(mine))
                assert set(held) == set(mine), (s, client.replica, len(set(mine) - set(held)))
    finally:
        teardown(coord)


@pytest.mark.slow
def test_a_replica_further_behind_than_the_log_is_copied_back_automatically(ray_session, tmp_path):
    """The issue's "25,000 writes behind" with the log shortened to 100 ops and 300 writes missed (the same path:
    a gap in the log), so it runs in seconds: the replica is rebuilt from its caught-up sibling, deletes
    included, with no person doing anything."""
    import ray
    from router.replication.oplog import OpLog

    from shards.actor import start_ray_shards

    cfg, specs, coord = build(tmp_path, shards=1, replicas=2, quorum=1)
    try:
        sh = coord.shards[0]
        sh.log = OpLog(max_ops=100)
        load(coord, 200)
        ray.kill(sh.clients[1].actor, no_restart=True)  # down for good, until started again below
        vecs = vectors(300, 7)
        for j in range(300):  # 300 single-point writes it misses, and a delete
            asyncio.run(coord.upsert([Point(id=f"n{j}", payload={"j": j}, vectors={"v": vecs[j].tolist()})]))
        asyncio.run(coord.delete(["p0", "p1"]))
        assert sh.state.replica_report()[1]["state"] == "dead"
        sh.clients[1] = start_ray_shards(cfg, specs)[0][1]  # the same actor name and milvus-lite directory
        sh.state.clock.advance(PROBE_INTERVAL_S)
        assert asyncio.run(coord.heal()) == {"healed": 1, "failed": 0} and sh.resyncs == 1
        counts = asyncio.run(sh.counts())
        assert counts[0] == counts[1] == {"v": 498}, counts
        ids = [f"p{j}" for j in range(2, 200)] + [f"n{j}" for j in range(300)]
        assert set(asyncio.run(sh.clients[1].get(ids))) == set(ids)
        assert not asyncio.run(sh.clients[1].get(["p0", "p1"]))
        assert sh.state.replica_report()[1]["state"] == "live"
    finally:
        teardown(coord)
