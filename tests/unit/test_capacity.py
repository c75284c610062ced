"""The capacity model's simulator (deploy/capacity.py) on cases with a known answer. Its sleeps are simulated
service time on a virtual clock, not synchronisation."""
from __future__ import annotations

import asyncio

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings
from deploy.capacity import (
    ServiceCost, SimReplica, closed_loop, ingresses, service_ms, sim_replicas, simulate, vector_requests,
)
from shards.api import SearchSpec

DIM = 8


def _spec(limit: int = 10, expr: str | None = None) -> SearchSpec:
    return SearchSpec(space="v", vector=[0.0] * DIM, limit=limit, expr=expr)


def test_service_time_is_per_call_plus_per_vector_for_each_compatible_group():
    cost = ServiceCost(per_call_ms=3.0, per_vector_ms=0.5)
    assert service_ms([_spec()], cost) == 3.5
    assert service_ms([_spec()] * 4, cost) == 5.0  # one Milvus search of nq=4
    assert service_ms([_spec(), _spec(expr="n > 1"), _spec()], cost) == 3.0 + 1.0 + 3.0 + 0.5  # two groups


def test_one_replica_of_fixed_service_time_saturates_at_one_over_s_through_the_real_router():
    s_ms = 10.0
    cfg = CollectionConfig(name="cap", spaces={"v": {"dim": DIM}}, shards=1, replicas=1)
    clients = sim_replicas(1, 1, ServiceCost(per_call_ms=s_ms, per_vector_ms=0.0), group_commit=False)
    reqs = vector_requests(np.random.default_rng(0).standard_normal((16, DIM)).astype(np.float32))
    coords = ingresses(cfg, clients, 1, batching=BatchSettings(enabled=False))
    run = simulate(closed_loop(coords, reqs, clients=4, measure_s=2.0, warmup_s=0.1))
    assert abs(run.qps - 1000 / s_ms) / (1000 / s_ms) < 0.02, run
    assert run.p50_ms == 4 * s_ms  # four callers queue behind one server: each waits 4 service times
    assert clients[0][0].calls == clients[0][0].requests  # group commit off: one call per request


def test_group_commit_serves_everything_queued_meanwhile_in_the_next_call():
    async def serve(group_commit: bool) -> tuple[int, float]:
        r = SimReplica(0, 0, ServiceCost(per_call_ms=20.0, per_vector_ms=0.0), group_commit=group_commit)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = asyncio.create_task(r.search_many([_spec(limit=3)]))
        while r.busy_ms == 0:  # until the replica serves the first call (a condition, not a duration)
            await asyncio.sleep(0)
        got = await asyncio.gather(first, *(r.search_many([_spec(limit=3)]) for _ in range(7)))
        assert [len(g[0]) for g in got] == [3] * 8
        return r.calls, loop.time() - t0

    calls, took = simulate(serve(True))
    assert calls == 2 and abs(took - 2 * 0.020) < 1e-9  # the first alone, the other seven queued meanwhile: together
    calls, took = simulate(serve(False))
    assert calls == 8 and abs(took - 8 * 0.020) < 1e-9
