"""Read latency under ingestion: do readers wait for other clients' writes? (`python -m deploy.bench --only freshness`)

Per backend (bundled Milvus server, milvus-lite): 20,000 points (384-d, HNSW), 2 shards, in-process shards. Readers
at c=1 and c=8 run for a fixed time while a writer sends nothing, 5 writes/s or 50 writes/s (batches of 10,
open loop: a batch every 1/rate*10 s whether or not the last one returned), with wait=true. Then the writers' own
latency with wait=true and wait=false, and a strong read's. On the server it also tries a shorter proxy time tick
(the tuning question of the issue). Writes docs/bench/freshness.json.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from deploy.benchlib import pct

N, DIM, SHARDS, BATCH = 20_000, 384, 2, 10
RATES = {"idle": 0, "w5": 5, "w50": 50}


async def _readers(coord, queries, concurrency: int, seconds: float) -> tuple[list[float], float]:
    from router.schema.query import QueryRequest

    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = itertools.count()

    async def one() -> None:
        while time.perf_counter() < deadline:
            q = queries[next(counter) % len(queries)]
            t0 = time.perf_counter()
            await coord.query(QueryRequest(prefetch=[{"space": "v", "vector": q}], fusion={"method": "none"},
                                           limit=10, with_payload=False))
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    return lat, len(lat) / (time.perf_counter() - t0)


async def _writer(coord, rate: float, stop: asyncio.Event, vecs, wait: bool, lat: list[float]) -> None:
    """Open loop: a batch of BATCH points every BATCH/rate seconds."""
    from router.schema.points import Point

    if rate <= 0:
        return
    ids = itertools.count()
    period = BATCH / rate
    pending = set()

    async def one() -> None:
        batch = [Point(id=f"w{next(ids)}", vectors={"v": vecs[np.random.randint(len(vecs))].tolist()})
                 for _ in range(BATCH)]
        t0 = time.perf_counter()
        await coord.upsert(batch, wait=wait)
        lat.append((time.perf_counter() - t0) * 1000)

    while not stop.is_set():
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        try:
            await asyncio.wait_for(stop.wait(), period)
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(*pending)


def run_backend(backend: str, workdir: Path, seconds: float = 8.0, time_tick_ms: int | None = None) -> dict:
    from cluster.collection_spec import CollectionConfig
    from cluster.config import MilvusConfig
    from cluster.services import start_milvus_server
    from deploy.datasets import gaussian_mixture, query_vectors
    from router.collection.coordinator import Coordinator
    from router.schema.points import Point
    from router.schema.query import QueryRequest
    from shards.local import local_shards, replica_specs, stop_local_shards

    server = start_milvus_server(workdir / f"milvus-{time_tick_ms}", time_tick_ms=time_tick_ms) \
        if backend == "server" else None
    milvus = MilvusConfig(mode="server", uri=server.uri) if server else MilvusConfig(mode="lite")
    cfg = CollectionConfig(name="fresh", shards=SHARDS, spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    clients = local_shards(cfg, replica_specs(cfg, milvus, workdir / f"lite-{time_tick_ms}",
                                              server.uri if server else None))
    try:
        vecs = gaussian_mixture(N, DIM, seed=3)
        queries = [q.tolist() for q in query_vectors(200, DIM, seed=5, base_seed=3)]
        coord = Coordinator.from_clients(cfg, clients)

        async def scenario() -> dict:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
            for i in range(0, N, 2000):
                await coord.upsert([Point(id=f"p{j}", vectors={"v": vecs[j].tolist()}) for j in range(i, i + 2000)],
                                   wait=(i + 2000 >= N))
            for row in clients:
                await asyncio.to_thread(row[0].target.wait_indexed)
            await _readers(coord, queries, 1, 1.0)  # warm-up
            out: dict = {"backend": backend, "points": N, "shards": SHARDS, "dim": DIM, "seconds": seconds}
            write_lat: dict[str, list[float]] = {"wait": [], "nowait": []}
            for phase, rate in RATES.items():
                for c in (1, 8):
                    stop = asyncio.Event()
                    w = asyncio.create_task(_writer(coord, rate, stop, vecs, True, write_lat["wait"]))
                    lat, qps = await _readers(coord, queries, c, seconds)
                    stop.set()
                    await w
                    out[f"read_p50_ms_c{c}_{phase}"] = round(pct(lat, 50), 2)
                    out[f"read_p95_ms_c{c}_{phase}"] = round(pct(lat, 95), 2)
                    out[f"read_qps_c{c}_{phase}"] = round(qps, 1)
            stop = asyncio.Event()
            w = asyncio.create_task(_writer(coord, 5, stop, vecs, False, write_lat["nowait"]))
            await _readers(coord, queries, 1, seconds)
            stop.set()
            await w
            strong = []
            for q in queries[:20]:
                t0 = time.perf_counter()
                await coord.query(QueryRequest(prefetch=[{"space": "v", "vector": q}], fusion={"method": "none"},
                                               limit=10, with_payload=False, consistency="strong"))
                strong.append((time.perf_counter() - t0) * 1000)
            out["write_wait_p50_ms"] = round(pct(write_lat["wait"], 50), 2)
            out["write_nowait_p50_ms"] = round(pct(write_lat["nowait"], 50), 2)
            out["strong_read_p50_ms_c1_idle"] = round(pct(strong, 50), 2)
            for phase in ("w5", "w50"):
                out[f"ratio_{phase}"] = round(out[f"read_p50_ms_c1_{phase}"] / out["read_p50_ms_c1_idle"], 3)
                out[f"ratio_{phase}_c8"] = round(out[f"read_p50_ms_c8_{phase}"] / out["read_p50_ms_c8_idle"], 3)
            return out

        out = asyncio.run(scenario())
        if time_tick_ms:
            out["time_tick_ms"] = time_tick_ms
        print(f"[freshness] {out}", flush=True)
        return out
    finally:
        stop_local_shards(clients, drop=False)
        if server:
            server.stop()


def run(workdir: Path, seconds: float = 8.0) -> dict:
    runs = [run_backend("server", workdir, seconds), run_backend("lite", workdir, seconds)]
    tuning = [runs[0], run_backend("server", workdir, seconds, time_tick_ms=50)]
    return {"runs": runs, "tuning": [{k: r.get(k) for k in ("time_tick_ms", "write_wait_p50_ms",
                                                           "strong_read_p50_ms_c1_idle", "read_p50_ms_c1_idle",
                                                           "read_qps_c8_idle", "read_qps_c8_w50")}
                                     for r in tuning],
            "targets": "ratio_w5 <= 1.5 and ratio_w50 <= 2 on both backends"}


def table(payload: dict) -> str:
    keys = ["read_p50_ms_c1_idle", "read_p50_ms_c1_w5", "read_p50_ms_c1_w50", "ratio_w5", "ratio_w50",
            "read_qps_c8_idle", "read_qps_c8_w5", "read_qps_c8_w50", "write_wait_p50_ms", "write_nowait_p50_ms",
            "strong_read_p50_ms_c1_idle"]
    lines = ["| backend | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in payload["runs"]:
        lines.append(f"| {r['backend']} | " + " | ".join(str(r[k]) for k in keys) + " |")
    lines += ["", "Bundled server time tick (proxy.timeTickInterval):", "",
              "| time tick ms | write wait p50 ms | strong read p50 ms | read p50 ms c=1 idle | QPS c=8 idle | "
              "QPS c=8 w50 |", "|---|---|---|---|---|---|"]
    for t in payload["tuning"]:
        lines.append(f"| {t['time_tick_ms'] or 200} | {t['write_wait_p50_ms']} | {t['strong_read_p50_ms_c1_idle']} | "
                     f"{t['read_p50_ms_c1_idle']} | {t['read_qps_c8_idle']} | {t['read_qps_c8_w50']} |")
    return "\n".join(lines)
