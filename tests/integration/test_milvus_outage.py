"""The Milvus server down and back: reads and writes answer 503 with the cause while it is down (never a hang, never
an acknowledged write that is then missing), and the shards reconnect and reload their collections by themselves
once it returns. A real Milvus 2.3 standalone of its own, killed (SIGKILL to its process group) and started again
on the same port and data dir; 2 shards x 2 replicas at quorum majority."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.errors import ShardUnavailable
from cluster.services import free_port
from tests.milvus_start import start_milvus_server
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest
from router.replication.replicas import PROBE_INTERVAL_S
from shards.local import local_shards, replica_specs, stop_local_shards
from tests.clock import FakeClock

DIM = 8
RECOVERY_DEADLINE_S = 180.0  # Milvus 2.3 reassigns a restarted standalone's channels after its old sessions expire


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def points(ids: list[str], base: int = 0) -> list[Point]:
    return [Point(id=i, payload={"k": base + k}, vectors={"v": unit(base + k)}) for k, i in enumerate(ids)]


def query() -> QueryRequest:
    return QueryRequest(prefetch=[{"space": "v", "vector": unit(3)}], fusion={"method": "none"}, limit=5, cache=False)


@pytest.fixture
def world(tmp_path):
    port, health, data = free_port(), free_port(), tmp_path / "milvus"
    server = {"h": start_milvus_server(data, port, health)}
    cfg = CollectionConfig(name="mout", shards=2, replicas=2, write_quorum="majority",
                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    uri = server["h"].uri
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="server", uri=uri), tmp_path, uri))
    clock = FakeClock()
    coord = Coordinator.from_clients(cfg, clients, timeout_s=10.0, clock=clock)

    def restart():
        server["h"] = start_milvus_server(data, port, health)

    yield coord, clock, server, restart
    try:
        stop_local_shards(clients, drop=True)
    finally:
        server["h"].stop()


def test_milvus_restart_refuses_then_recovers_without_losing_an_acknowledged_write(world):
    coord, clock, server, restart = world
    acked = [f"p{i}" for i in range(40)]
    asyncio.run(coord.upsert(points(acked)))
    before = [h.id for h in asyncio.run(coord.query(query())).hits]
    server["h"].kill()  # a crash: SIGKILL to the server's whole process group

    # Down: a read is a 503 naming Milvus (every replica of every shard tried), within the retry budget.
    t0 = time.monotonic()
    with pytest.raises(ShardUnavailable, match=r"Milvus at http://127\.0\.0\.1:\d+ is unreachable") as e:
        asyncio.run(coord.query(query()))
    assert e.value.status == 503 and time.monotonic() - t0 < 10
    # A write is refused, never acknowledged.
    with pytest.raises(ShardUnavailable, match="not acknowledged"):
        asyncio.run(coord.upsert(points(["during"], base=100)))

    restart()
    # Back: no restart of prism; the heal loop (driven here) reconnects, reloads and replays.
    deadline, answered = time.monotonic() + RECOVERY_DEADLINE_S, None
    while time.monotonic() < deadline:
        clock.advance(PROBE_INTERVAL_S)
        asyncio.run(coord.heal())
        try:
            answered = asyncio.run(coord.query(query()))
        except ShardUnavailable:
            continue
        if all(st["state"] == "live" for row in coord.replica_states() for st in row):
            break
    assert answered is not None and [h.id for h in answered.hits] == before and not answered.partial
    assert all(st["state"] == "live" for row in coord.replica_states() for st in row), coord.replica_states()

    # Every acknowledged write is on every replica; the replicas of a shard agree.
    for sh in coord.shards:
        mine = [i for i in acked if coord.shard_of(i) == sh.shard]
        held = [set(asyncio.run(c.get(mine))) for c in sh.clients]
        assert all(h == set(mine) for h in held), sh.shard
        counts = asyncio.run(sh.counts())
        assert counts[0] == counts[1] and counts[0] is not None
    # The refused write was not acknowledged; whatever became of it, the replicas of its shard agree on it.
    refused = coord.shards[coord.shard_of("during")]
    assert len({"during" in asyncio.run(c.get(["during"])) for c in refused.clients}) == 1
    asyncio.run(coord.upsert(points(["after"], base=200)))
    assert "after" in asyncio.run(coord.fetch(["after"]))[0]
