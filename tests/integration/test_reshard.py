"""Resharding 4 -> 5 through the service (real milvus-lite): ~1/5 of the points move, each found exactly once."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from cluster.config import ClusterConfig
from cluster.errors import ShardUnavailable
from cluster.ring import HashRing
from router.schema.points import Point
from router.collection.service import PrismService

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
                await asyncio.sleep(0)  # poll: yield so the reshard task runs between reads

        done = asyncio.Event()
        reader = asyncio.create_task(keep_reading())
        old = service.coordinator("rs")
        report_task = asyncio.create_task(service.reshard("rs", {"shards": 5}))
        while old.paused is None and not report_task.done():
            await asyncio.sleep(0)  # poll: the reshard pauses writes once the added shards are started
        assert not report_task.done()
        with pytest.raises(ShardUnavailable, match="resharding"):  # writes pause while points move
            await old.upsert([Point(id="late", vectors={"v": [0.0] * 8})])
        report = await report_task
        done.set()
        await reader
        after = [[h.id for h in (await service.query("rs", q)).hits] for q in probes]
        coord = service.coordinator("rs")
        held = [await sh.read(lambda c: c.ids()) for sh in coord.shards]
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
    # The added shard is compared by anti-entropy like the kept ones (this process orders their writes).
    interval = service.config.replication.anti_entropy_interval_s
    assert interval and [sh.anti_entropy_interval_s for sh in coord.shards] == [interval] * 5
    assert service.list_collections() == ["rs"]
    service.close()


def _small_service(tmp_path, stopped):
    """A 3-shard service on milvus-lite whose stop_shards records what it stopped."""
    from shards.local import stop_local_shards

    def stop(clients, drop=False):
        stopped.append(([(c.shard, c.replica) for row in clients for c in row], drop))
        stop_local_shards(clients, drop)

    return PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"}), stop_shards=stop)


@pytest.mark.parametrize("fail_in, new_shards", [("plan_moves", 4), ("copy_points", 4), ("copy_points", 2)])
def test_a_reshard_that_fails_part_way_rolls_back(tmp_path, monkeypatch, fail_in, new_shards):
    """Regression: a failure in planning or copying used to leave writes refused and the new shards running."""
    import router.collection.reshard as reshard_mod

    stopped: list = []
    service = _small_service(tmp_path, stopped)
    n = 600
    vecs = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)
    real_copy = reshard_mod.copy_points

    async def fail_plan(*args, **kwargs):
        raise RuntimeError("injected planning failure")

    async def fail_after_one_batch(source, target, moves, copied=None, batch=reshard_mod.COPY_BATCH):
        first = dict([next(iter(moves.items()))])
        await real_copy(source, target, first, copied, batch)  # some points really were copied
        raise RuntimeError("injected copy failure")

    monkeypatch.setattr(reshard_mod, fail_in, fail_plan if fail_in == "plan_moves" else fail_after_one_batch)

    async def scenario():
        await service.create_collection("rb", {"spaces": {"v": {"dim": 8, "index": {"type": "FLAT"}}}, "shards": 3})
        await service.upsert("rb", {"points": [{"id": f"p{j}", "vectors": {"v": vecs[j].tolist()}} for j in range(n)]})
        before = [await sh.read(lambda c: c.ids()) for sh in service.coordinator("rb").shards]
        with pytest.raises(RuntimeError, match="injected"):
            await service.reshard("rb", {"shards": new_shards})
        coord = service.coordinator("rb")
        after = [await sh.read(lambda c: c.ids()) for sh in coord.shards]
        # Writes are accepted again, on the old layout.
        up = await service.upsert("rb", {"points": [{"id": "late", "vectors": {"v": [1.0] * 8}}]})
        return before, after, coord, up

    before, after, coord, up = asyncio.run(scenario())
    assert coord.config.shards == 3 and coord.paused is None and up.upserted == 1
    assert after == before  # copies made onto shards the old layout keeps were removed again
    added = [(s, 0) for s in range(3, new_shards)]
    assert stopped == ([(added, True)] if added else [])  # the started shards were stopped and dropped
    assert json.loads((tmp_path / "catalog" / "rb.json").read_text())["shards"] == 3
    service.close()


def test_a_write_in_flight_when_a_reshard_begins_ends_before_points_are_planned(tmp_path):
    """A write of this process that passed the pause check before a reshard paused writes, and lands later: the
    reshard waits for it before it plans the moves, so the point is moved like every other. Before, only a service
    with sequencers waited (a fixed shard_timeout_s, meant for other ingresses' writes): without sequencers the late
    write landed on its old shard after that shard was planned, and stayed there under the new ring."""
    service = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"}))
    old_ring, new_ring = HashRing(range(2)), HashRing(range(3))
    movers = [f"m{i}" for i in range(400) if old_ring.get(f"m{i}") != new_ring.get(f"m{i}")][:20]

    async def scenario():
        await service.create_collection("wf", {"spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}, "shards": 2,
                                               "replicas": 2})
        await service.upsert("wf", {"points": [{"id": f"p{i}", "vectors": {"v": [1.0, i, 0, 0]}} for i in range(50)]})
        coord = service.coordinator("wf")
        writes, gate, entered = coord.writes, asyncio.Event(), asyncio.Event()
        real_write = writes._write

        async def held_write(calls, raises=True):
            entered.set()
            await gate.wait()  # the shard writes wait here: past the pause check, not yet landed
            return await real_write(calls, raises)

        writes._write = held_write
        late = asyncio.create_task(service.upsert("wf", {"points": [{"id": i, "vectors": {"v": [0, 1.0, 0, 0]}}
                                                                    for i in movers]}))
        await entered.wait()
        writes._write = real_write
        task = asyncio.create_task(service.reshard("wf", {"shards": 3}))
        while writes._inflight.waiting == 0 and not task.done():
            await asyncio.sleep(0)  # poll: until the reshard waits for the write in flight (or ends without it)
        waited = not task.done()
        gate.set()
        assert (await late).upserted == len(movers)
        await task
        new = service.coordinator("wf")
        held = [[set(await c.ids()) for c in sh.clients] for sh in new.shards]
        return waited, held

    waited, held = asyncio.run(scenario())
    assert waited, "the reshard did not wait for the write in flight"
    for s, replicas in enumerate(held):
        assert replicas[0] == replicas[1], f"shard {s}'s replicas differ"  # every replica, not the answer
        assert all(new_ring.get(pid) == s for pid in replicas[0]), f"shard {s} holds points the new ring puts elsewhere"
    everything = [pid for replicas in held for pid in replicas[0]]
    assert len(everything) == len(set(everything)) == 50 + len(movers)
    service.close()
