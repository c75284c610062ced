"""Scaling (`--only scaling`): query cost as the collection and the shard count grow."""
from __future__ import annotations

import asyncio
from pathlib import Path

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.ring import HashRing
from deploy.benchlib import close_all, load_points, pct, run_concurrent
from deploy.datasets import gaussian_mixture, query_vectors
from router.collection.coordinator import Coordinator
from router.schema.query import QueryRequest
from shards.local import local_shards, replica_specs


def run(workdir: Path, sizes=(50_000, 100_000, 200_000), shard_counts=(1, 2, 4, 8), n_queries: int = 100) -> dict:
    """Query cost as the collection and the shard count grow (milvus-lite, Ray actors, one 384-d space)."""
    import ray

    from shards.actor import start_ray_shards, stop_ray_shards

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="bench-scaling")
    runs = []
    configs = [(n, 4) for n in sizes] + [(max(sizes), s) for s in shard_counts if s != 4]
    try:
        for k, (n, shards) in enumerate(configs):
            cfg = CollectionConfig(name=f"scale{k}", shards=shards, spaces={"text": {"dim": 384, "index": {"type": "HNSW"}}})
            specs = replica_specs(cfg, MilvusConfig(mode="lite"), workdir / f"s{k}", None)
            local = local_shards(cfg, specs)
            load_points(local, HashRing(range(shards)), {"text": gaussian_mixture(n, 384, seed=11)})
            close_all(local)
            clients = start_ray_shards(cfg, specs)
            coord = Coordinator.from_clients(cfg, clients)
            qs = query_vectors(n_queries, 384, seed=12, base_seed=11)
            reqs = [QueryRequest(prefetch=[{"space": "text", "vector": q.tolist(), "limit": 10}],
                                 fusion={"method": "none"}, limit=10, with_payload=False) for q in qs]
            asyncio.run(run_concurrent(coord, reqs[:5], 1))
            lat1, _ = asyncio.run(run_concurrent(coord, reqs, 1))
            _, qps8 = asyncio.run(run_concurrent(coord, reqs, 8))
            stop_ray_shards(clients)
            runs.append({"n": n, "shards": shards, "p50_ms": round(pct(lat1, 50), 2), "p99_ms": round(pct(lat1, 99), 2),
                         "qps_c8": round(qps8, 1)})
            print(f"[scaling] {runs[-1]}", flush=True)
    finally:
        ray.shutdown()
    return {"backend": "lite", "queries": n_queries, "runs": runs,
            "one_million": "python -m deploy.bench --only scale1m (about an hour on 2 cores)"}
