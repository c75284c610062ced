"""A capacity model: prism's real router (Coordinator, replicated shards, batching, routing) over simulated shard
replicas, all on one event loop (issue 29). Time passes in sleeps, not CPU: a replica is a server with a queue.

- `SimReplica` implements `shards.api.ShardApi`. `search_many` queues the call; the replica serves ONE call at a
  time, each taking `per_call_ms + per_vector_ms x nq` per group of compatible specs (`shards.group_commit.plan_groups`:
  the shard runs one Milvus search per group; the simulated index resolves every limit to the same parameters, as
  HNSW does up to ef). With `group_commit`, everything queued while a call runs goes in the
  next call, as a shard actor that coalesces its callers would; without it, calls are served one by one in order.
  The other methods keep points in a dict, so writes, reads by id and counts work.
- `simulate` runs a scenario on an event loop whose clock is virtual: when every task waits, the clock jumps to the
  next timer, so service times are exact whatever else this (shared, 2-core) machine runs, and a run takes only
  the CPU the router spends. The router's own work therefore takes no simulated time, as if every ingress replica
  had a core to itself; its CPU per query is measured beside it (process CPU / queries), which says how many
  queries/s one ingress core can route. While a scenario runs, `time.perf_counter` reads the virtual clock too, so
  the router's latency bookkeeping (EWMA, hedging after a replica's p95) sees simulated latencies.
- `closed_loop` (saturation) and `open_loop` (Poisson arrivals, seeded) drive any number of coordinators (ingress
  replicas) sharing the same replicas.
"""
from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.api import EXPORT_PAGE, PointRow, ScoredId, SearchSpec, StoredPoint
from shards.group_commit import plan_groups


@dataclass(frozen=True)
class ServiceCost:
    """What one Milvus search call costs a replica (ms): fixed per call, plus per query vector."""

    per_call_ms: float
    per_vector_ms: float


def groups(specs: Sequence[SearchSpec]) -> list:
    """The Milvus searches a shard makes of `specs` (its own grouping; the search parameters as given)."""
    return plan_groups(specs, lambda s: dict(s.params or {}))


def service_ms(specs: Sequence[SearchSpec], cost: ServiceCost) -> float:
    """The simulated time of one `search_many` call: one Milvus search per group of compatible specs."""
    return sum(cost.per_call_ms + cost.per_vector_ms * len(g.indexes) for g in groups(specs))


class SimReplica:
    """One simulated shard replica (`ShardApi`): one search call at a time, queued calls waiting their turn."""

    def __init__(self, shard: int, replica: int, cost: ServiceCost, *, group_commit: bool = True):
        self.shard, self.replica = shard, replica
        self.cost, self.group_commit = cost, group_commit
        self.points: dict[str, PointRow] = {}
        self._queue: list[tuple[list[SearchSpec], asyncio.Future]] = []
        self._server: asyncio.Task | None = None
        self.calls = 0        # service periods (Milvus calls as the shard would make them: one per group)
        self.requests = 0     # search_many calls received
        self.vectors = 0      # query vectors searched
        self.busy_ms = 0.0    # simulated time spent serving

    async def search_many(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((list(specs), fut))
        self.requests += 1
        if self._server is None or self._server.done():
            self._server = asyncio.create_task(self._serve())
        return await fut

    async def _serve(self) -> None:
        while self._queue:
            n = len(self._queue) if self.group_commit else 1
            batch, self._queue = self._queue[:n], self._queue[n:]
            flat = [s for specs, _ in batch for s in specs]
            ms = service_ms(flat, self.cost)
            self.calls += len(groups(flat))
            self.vectors += len(flat)
            self.busy_ms += ms
            await asyncio.sleep(ms / 1000)
            for specs, fut in batch:
                if not fut.done():  # a hedged read's loser may have been cancelled
                    fut.set_result([self._hits(s) for s in specs])

    def _hits(self, spec: SearchSpec) -> list[ScoredId]:
        """Synthetic hits: load is measured here, not answers."""
        return [ScoredId(f"s{self.shard}-{i}", 1.0 - i / 1000, {} if spec.with_payload else None)
                for i in range(spec.limit)]

    async def get(self, ids: Sequence[str], with_vectors: Sequence[str] = ()) -> dict[str, StoredPoint]:
        return {i: StoredPoint(dict(p.payload), {s: p.vectors[s] for s in with_vectors if s in p.vectors})
                for i in ids if (p := self.points.get(i)) is not None}

    async def upsert(self, points: Sequence[PointRow], wait: bool = True) -> int:
        self.points.update({p.id: p for p in points})
        return len(points)

    async def delete(self, ids: Sequence[str], wait: bool = True) -> int:
        return sum(self.points.pop(i, None) is not None for i in ids)

    async def export(self, ids: Sequence[str]) -> list[PointRow]:
        return [self.points[i] for i in ids if i in self.points]

    async def export_page(self, after: str, limit: int = EXPORT_PAGE) -> list[PointRow]:
        return [self.points[i] for i in sorted(self.points) if i > after][:limit]

    async def ids(self) -> list[str]:
        return sorted(self.points)

    async def scan(self, after: str, limit: int, expr: str | None = None) -> list[str]:
        return [i for i in sorted(self.points) if i > after][:limit]

    async def count(self) -> dict[str, int]:
        spaces: dict[str, int] = {}
        for p in self.points.values():
            for s in p.vectors:
                spaces[s] = spaces.get(s, 0) + 1
        return spaces

    async def ping(self) -> dict[str, Any]:
        return {"shard": self.shard, "replica": self.replica, "incarnation": 1}

    async def digest(self, rescan_after_s: float | None = None) -> dict[str, Any]:
        return {"incarnation": 1, "age_s": 0.0, "ids": len(self.points), "buckets": {}}

    async def bucket_hashes(self, buckets: Sequence[int]) -> dict[str, int]:
        return {}

    async def node(self) -> str | None:
        return None


def sim_replicas(shards: int, replicas: int, cost: ServiceCost, *, group_commit: bool = True
                 ) -> list[list[SimReplica]]:
    """clients[s][r]: shard s's replica r, as Coordinator.from_clients takes them."""
    return [[SimReplica(s, r, cost, group_commit=group_commit) for r in range(replicas)]
            for s in range(shards)]


class _VirtualSelector:
    """The loop's selector: never waits for time to pass; asks the loop to move its clock to the next timer."""

    def __init__(self, loop: "VirtualLoop"):
        self.loop, self.real = loop, selectors.DefaultSelector()

    def select(self, timeout: float | None = None) -> list:
        ready = self.real.select(0)
        if ready:
            return ready
        if timeout is None:  # no timer: only another thread can wake the loop (it never should here)
            return self.real.select(None)
        self.loop.now += max(timeout, 0.0)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock (seconds from 0): sleeping costs no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self.now


def simulate(scenario: Any) -> Any:
    """Run the coroutine `scenario` on a VirtualLoop, `time.perf_counter` reading its clock meanwhile."""
    loop, real = VirtualLoop(), time.perf_counter
    time.perf_counter = loop.time  # the router times replicas with it (replica EWMA, hedging past p95)
    try:
        return loop.run_until_complete(scenario)
    finally:
        time.perf_counter = real
        loop.close()


@dataclass
class Run:
    """One measured run: simulated seconds and latencies; router CPU in real ms of this process per query."""

    queries: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    router_cpu_ms_per_query: float


def _run(lat_ms: list[float], seconds: float, cpu_s: float) -> Run:
    n = len(lat_ms)
    return Run(n, round(seconds, 3), round(n / seconds, 1) if seconds else 0.0,
               round(float(np.percentile(lat_ms, 50)), 2) if n else float("nan"),
               round(float(np.percentile(lat_ms, 99)), 2) if n else float("nan"),
               round(cpu_s * 1000 / n, 3) if n else float("nan"))


async def closed_loop(ingresses: Sequence[Any], reqs: Sequence[Any], clients: int, *, measure_s: float,
                      warmup_s: float = 0.0) -> Run:
    """`clients` callers, each sending its next query as soon as the last is answered, spread over the ingresses
    round robin; what completes within `measure_s` after `warmup_s` (simulated) counts."""
    loop = asyncio.get_running_loop()
    state = {"stop": False, "counting": False}
    lat: list[float] = []

    async def client(i: int) -> None:
        coord, k = ingresses[i % len(ingresses)], i
        while not state["stop"]:
            t0 = loop.time()
            await coord.query(reqs[k % len(reqs)])
            if state["counting"]:
                lat.append((loop.time() - t0) * 1000)
            k += clients

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    try:
        await asyncio.sleep(warmup_s)  # the measurement window, in simulated time
        state["counting"] = True
        t0, c0 = loop.time(), time.process_time()
        await asyncio.sleep(measure_s)
        state["counting"] = False
        took, cpu = loop.time() - t0, time.process_time() - c0
    finally:
        state["stop"] = True
        await asyncio.gather(*tasks)
    return _run(lat, took, cpu)


async def open_loop(ingresses: Sequence[Any], reqs: Sequence[Any], rate_qps: float, *, measure_s: float,
                    seed: int = 0) -> Run:
    """Poisson arrivals at `rate_qps` for `measure_s` (simulated), round robin over the ingresses; each query's
    latency runs from its arrival, every arrival answered."""
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_qps, size=int(rate_qps * measure_s * 1.5) + 16))
    lat: list[float] = []

    async def one(i: int, due: float) -> None:
        await ingresses[i % len(ingresses)].query(reqs[i % len(reqs)])
        lat.append((loop.time() - due) * 1000)

    t0, c0 = loop.time(), time.process_time()
    tasks = []
    for i, at in enumerate(arrivals[arrivals < measure_s]):
        if t0 + at > loop.time():
            await asyncio.sleep(t0 + at - loop.time())  # until the next arrival, in simulated time
        tasks.append(asyncio.create_task(one(i, t0 + at)))
    await asyncio.gather(*tasks)
    return _run(lat, measure_s, time.process_time() - c0)


def ingresses(config: Any, clients: Sequence[Sequence[SimReplica]], count: int, *, batching: Any = None,
              placement: Any = None, probe: Any = 2, hedge: bool = True) -> list[Any]:
    """`count` coordinators (ingress replicas) over the same simulated replicas, each with replica sets, batching
    and placement of its own, as separate ingress processes would have."""
    from router.collection.coordinator import Coordinator

    return [Coordinator.from_clients(config, clients, batching=batching, hedge=hedge, placement=placement,
                                     probe=probe) for _ in range(count)]


def vector_requests(vectors: np.ndarray, space: str = "v", limit: int = 10) -> list[Any]:
    """One QueryRequest per row: a dense prefetch in `space`, no fusion, no payload (validated once, here)."""
    from router.schema.query import QueryRequest

    return [QueryRequest.model_validate({"prefetch": [{"space": space, "vector": v.tolist(), "limit": limit}],
                                         "fusion": {"method": "none"}, "limit": limit, "with_payload": False})
            for v in vectors]
