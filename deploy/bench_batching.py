"""Cross-request micro-batching, on and off in the same run (`python -m deploy.bench --only batching`).

Per backend: 50,000 points (384-d, HNSW), 4 shards as Ray actors, vector queries (one prefetch, top 10, no payload,
cache off) at c=1 and c=32 through the coordinator, batching off then on. Writes docs/bench/batching.json.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.benchlib import pct, run_concurrent


N, DIM, SHARDS, QUERIES = 50_000, 384, 4, 400


def run_backend(backend: str, workdir: Path) -> dict:
    import ray

    from cluster.collection_spec import CollectionConfig
    from cluster.config import BatchSettings, MilvusConfig
    from cluster.services import start_milvus_server
    from deploy.datasets import gaussian_mixture, query_vectors
    from router.collection.coordinator import Coordinator
    from router.schema.points import Point
    from router.schema.query import QueryRequest
    from shards.actor import start_ray_shards, stop_ray_shards
    from shards.local import local_shards, replica_specs, stop_local_shards

    server = start_milvus_server(workdir / "milvus") if backend == "server" else None
    milvus = MilvusConfig(mode="server", uri=server.uri) if server else MilvusConfig(mode="lite")
    cfg = CollectionConfig(name="batching", shards=SHARDS, spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    specs = replica_specs(cfg, milvus, workdir / "lite", server.uri if server else None)
    try:
        local = local_shards(cfg, specs)
        vecs = gaussian_mixture(N, DIM, seed=11)
        loader = Coordinator.from_clients(cfg, local)

        async def load() -> None:
            for i in range(0, N, 2000):
                await loader.upsert([Point(id=f"p{j}", vectors={"v": vecs[j].tolist()}) for j in range(i, i + 2000)],
                                    wait=False)

        asyncio.run(load())
        with ThreadPoolExecutor(SHARDS) as pool:
            list(pool.map(lambda row: row[0].target.wait_indexed(), local))
        stop_local_shards(local)  # milvus-lite: one process per directory; hand it to the actors
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace=f"batching-{backend}")
        clients = start_ray_shards(cfg, specs)
        qs = query_vectors(QUERIES, DIM, seed=12, base_seed=11)
        reqs = [QueryRequest(prefetch=[{"space": "v", "vector": q.tolist()}], fusion={"method": "none"}, limit=10,
                             with_payload=False, cache=False) for q in qs]
        out: dict = {"backend": backend, "points": N, "shards": SHARDS, "dim": DIM, "queries": QUERIES}
        for mode, settings in (("unbatched", BatchSettings(enabled=False)), ("batched", BatchSettings())):
            coord = Coordinator.from_clients(cfg, clients, batching=settings)
            asyncio.run(run_concurrent(coord, reqs[:20], 1))  # warm-up
            for c in (1, 32):
                lat, qps = asyncio.run(run_concurrent(coord, reqs, c))
                suffix = "" if mode == "batched" else "_unbatched"
                out[f"p50_ms_c{c}{suffix}"] = round(pct(lat, 50), 2)
                out[f"p99_ms_c{c}{suffix}"] = round(pct(lat, 99), 2)
                out[f"qps_c{c}{suffix}"] = round(qps, 1)
        out["speedup_batching"] = round(out["qps_c32"] / out["qps_c32_unbatched"], 2)
        stop_ray_shards(clients)
        print(f"[batching] {out}", flush=True)
        return out
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if server:
            server.stop()


def run(workdir: Path) -> dict:
    return {"runs": [run_backend("server", workdir / "server"), run_backend("lite", workdir / "lite")],
            "target": "speedup_batching >= 3 (issue 12, for text queries end to end at 200k; this is the vector "
                      "path at 50k)"}


def table(payload: dict) -> str:
    keys = ["p50_ms_c1_unbatched", "p50_ms_c1", "qps_c32_unbatched", "qps_c32", "p99_ms_c32_unbatched", "p99_ms_c32",
            "speedup_batching"]
    lines = ["| backend | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in payload["runs"]:
        lines.append(f"| {r['backend']} | " + " | ".join(str(r[k]) for k in keys) + " |")
    return "\n".join(lines)
