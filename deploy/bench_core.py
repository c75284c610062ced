"""Core query path (`--only core`): the coordinator over Ray shard actors against the same searches run
sequentially in one process, on milvus-lite and the Milvus server; recall against exact search."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings, MilvusConfig
from cluster.ring import HashRing
from deploy.benchlib import close_all, load_points, machine, pct, run_concurrent
from deploy.datasets import gaussian_mixture, query_vectors
from router.collection.coordinator import Coordinator
from router.ranking.fusion import rrf
from router.ranking.merge import merge_topk
from router.schema.query import QueryRequest, ScoredId
from shards.local import local_shards, replica_specs


DIMS = {"text": 384, "image": 512}
PREFETCH_LIMIT = 20
LIMIT = 10


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int) -> list[list[ScoredId]]:
    scores = queries @ data.T
    out = []
    for row in scores:
        idx = np.argpartition(-row, k)[:k]
        idx = idx[np.argsort(-row[idx])]
        out.append([ScoredId(f"p{i}", float(row[i])) for i in idx])
    return out


def baseline_query(shards, q: dict[str, np.ndarray]) -> list[ScoredId]:
    """The same searches, sequentially, from one process: every space on every shard, then merge and fuse."""
    per_space = []
    for space, vec in q.items():
        lists = [row[0].target.search(space, [vec.tolist()], PREFETCH_LIMIT)[0] for row in shards]
        per_space.append(merge_topk(lists, PREFETCH_LIMIT))
    return rrf(per_space, limit=LIMIT)


def request(q: dict[str, np.ndarray]) -> QueryRequest:
    return QueryRequest(
        prefetch=[{"space": s, "vector": v.tolist(), "limit": PREFETCH_LIMIT} for s, v in q.items()],
        limit=LIMIT, with_payload=False,
    )


def run(n: int, shards: int, backend: str, n_queries: int, workdir: Path) -> dict:
    import ray

    from cluster.services import start_milvus_server
    from shards.actor import start_ray_shards, stop_ray_shards

    print(f"[core] backend={backend} n={n} shards={shards}: generating data", flush=True)
    vecs = {s: gaussian_mixture(n, d, seed=i + 1) for i, (s, d) in enumerate(DIMS.items())}
    qs = {s: query_vectors(n_queries, d, seed=7, base_seed=i + 1) for i, (s, d) in enumerate(DIMS.items())}
    queries = [{s: qs[s][j] for s in DIMS} for j in range(n_queries)]
    truth = [exact_topk(vecs[s], qs[s], PREFETCH_LIMIT) for s in DIMS]
    truth_fused = [rrf([truth[0][j], truth[1][j]], limit=LIMIT) for j in range(n_queries)]

    server = start_milvus_server(workdir / "milvus-server") if backend == "server" else None
    milvus = MilvusConfig(mode="server", uri=server.uri) if server else MilvusConfig(mode="lite")
    cfg = CollectionConfig(name=f"bench_{backend}", shards=shards,
                           spaces={s: {"dim": d, "metric": "cosine", "index": {"type": "HNSW"}} for s, d in DIMS.items()})
    specs = replica_specs(cfg, milvus, workdir / "lite", server.uri if server else None)
    try:
        local = local_shards(cfg, specs)
        load_s = load_points(local, HashRing(range(shards)), vecs)
        print(f"[core] loaded {n} points x {len(DIMS)} spaces in {load_s:.1f}s", flush=True)
        t_idx = time.perf_counter()
        for row in local:
            for c in row:
                c.target.wait_indexed()
        index_s = time.perf_counter() - t_idx
        print(f"[core] indexes built {index_s:.1f}s after the load", flush=True)
        # Reopen before measuring, exactly as the actors will: both sides then search sealed, indexed data.
        close_all(local)
        local = local_shards(cfg, specs)
        for q in queries[:5]:  # warm-up (index load, caches)
            baseline_query(local, q)
        base_lat = []
        for q in queries:
            t = time.perf_counter()
            baseline_query(local, q)
            base_lat.append((time.perf_counter() - t) * 1000)
        close_all(local)  # milvus-lite: one process per .db; hand the files to the actors

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace=f"bench-{backend}")
        clients = start_ray_shards(cfg, specs)
        coord = Coordinator.from_clients(cfg, clients)
        reqs = [request(q) for q in queries]
        asyncio.run(run_concurrent(coord, reqs[:5], 1))
        lat1, qps1 = asyncio.run(run_concurrent(coord, reqs, 1))
        lat8, qps8 = asyncio.run(run_concurrent(coord, reqs, 8))
        # The same shards behind a coordinator with cross-request batching (prism's default): concurrent queries
        # to one shard go as one call, one Milvus search with nq > 1.
        batched = Coordinator.from_clients(cfg, clients, batching=BatchSettings())
        asyncio.run(run_concurrent(batched, reqs[:5], 1))
        lat1b, _ = asyncio.run(run_concurrent(batched, reqs, 1))
        lat8b, qps8b = asyncio.run(run_concurrent(batched, reqs, 8))
        got = [asyncio.run(coord.query(r)) for r in reqs]
        recall = statistics.mean(
            len({h.id for h in g.hits} & {h.id for h in t}) / LIMIT for g, t in zip(got, truth_fused)
        )
        stop_ray_shards(clients)
        ray.shutdown()
    finally:
        if server:
            server.stop()
    result = {
        "n": n, "shards": shards, "backend": backend, "index": "HNSW", "queries": n_queries, "date": machine()["date"],
        "p50_ms": round(pct(lat1, 50), 2), "p99_ms": round(pct(lat1, 99), 2),
        "baseline_p50_ms": round(pct(base_lat, 50), 2), "baseline_p99_ms": round(pct(base_lat, 99), 2),
        "ratio_p50": round(pct(lat1, 50) / pct(base_lat, 50), 3),
        "recall_at_10": round(recall, 4), "qps_c1": round(qps1, 1), "qps_c8": round(qps8, 1),
        "p50_ms_c8": round(pct(lat8, 50), 2), "p99_ms_c8": round(pct(lat8, 99), 2),
        "qps_c8_batched": round(qps8b, 1), "p50_ms_c1_batched": round(pct(lat1b, 50), 2),
        "p50_ms_c8_batched": round(pct(lat8b, 50), 2),
        "load_s": round(load_s, 1), "index_wait_s": round(index_s, 1), "load_points_per_s": round(n / load_s, 1),
    }
    print(f"[core] {json.dumps(result)}", flush=True)
    return result
