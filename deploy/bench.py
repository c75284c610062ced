"""`make bench`: measured numbers for docs/benchmarks.md and docs/bench/*.json. Not a test: nothing here asserts.

Every figure is compared with a baseline measured in the same run, on the same machine, because this machine
is noisy: ratios travel, absolute milliseconds do not.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cluster.config import CollectionConfig, MilvusConfig
from cluster.ring import HashRing
from cluster.topology import local_shards, replica_specs
from deploy.datasets import gaussian_mixture, query_vectors
from router.coordinator import Coordinator
from router.fusion import rrf
from router.merge import merge_topk
from router.models import QueryRequest, ScoredId

DOCS = Path(__file__).resolve().parent.parent / "docs"
DIMS = {"text": 384, "image": 512}
PREFETCH_LIMIT = 20
LIMIT = 10


def machine() -> dict:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "ram_gib": round(mem_gib, 1), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int) -> list[list[ScoredId]]:
    scores = queries @ data.T
    out = []
    for row in scores:
        idx = np.argpartition(-row, k)[:k]
        idx = idx[np.argsort(-row[idx])]
        out.append([ScoredId(f"p{i}", float(row[i])) for i in idx])
    return out


def load_points(shards, ring: HashRing, vecs: dict[str, np.ndarray], batch: int = 2000) -> float:
    """Bulk load straight into the shards (routing by the same ring); returns seconds."""
    n = len(next(iter(vecs.values())))
    by_shard: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        by_shard[int(ring.get(f"p{i}"))].append(i)
    t0 = time.perf_counter()

    def load_one(s: int) -> None:
        idx = by_shard[s]
        for start in range(0, len(idx), batch):
            chunk = idx[start : start + batch]
            pts = [{"id": f"p{i}", "payload": {"n": i}, "vectors": {sp: vecs[sp][i].tolist() for sp in vecs}}
                   for i in chunk]
            for c in shards[s]:
                c.target.upsert(pts)

    with ThreadPoolExecutor(len(shards)) as pool:
        list(pool.map(load_one, range(len(shards))))
    return time.perf_counter() - t0


def close_all(shards) -> None:
    for row in shards:
        for c in row:
            c.target.close()


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


async def run_concurrent(coord: Coordinator, reqs: list[QueryRequest], concurrency: int) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []

    async def one(r):
        async with sem:
            t = time.perf_counter()
            await coord.query(r)
            lat.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    return lat, len(reqs) / (time.perf_counter() - t0)


def bench_core(n: int, shards: int, backend: str, n_queries: int, workdir: Path) -> dict:
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
        coord = Coordinator(cfg, clients)
        reqs = [request(q) for q in queries]
        asyncio.run(run_concurrent(coord, reqs[:5], 1))
        lat1, qps1 = asyncio.run(run_concurrent(coord, reqs, 1))
        lat8, qps8 = asyncio.run(run_concurrent(coord, reqs, 8))
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
        "n": n, "shards": shards, "backend": backend, "index": "HNSW", "queries": n_queries,
        "p50_ms": round(pct(lat1, 50), 2), "p99_ms": round(pct(lat1, 99), 2),
        "baseline_p50_ms": round(pct(base_lat, 50), 2), "baseline_p99_ms": round(pct(base_lat, 99), 2),
        "ratio_p50": round(pct(lat1, 50) / pct(base_lat, 50), 3),
        "recall_at_10": round(recall, 4), "qps_c1": round(qps1, 1), "qps_c8": round(qps8, 1),
        "p50_ms_c8": round(pct(lat8, 50), 2), "p99_ms_c8": round(pct(lat8, 99), 2),
        "load_s": round(load_s, 1), "index_wait_s": round(index_s, 1), "load_points_per_s": round(n / load_s, 1),
    }
    print(f"[core] {json.dumps(result)}", flush=True)
    return result


QUERY_TEXTS = [
    "lightweight running shoes", "waterproof jacket for hiking", "espresso machine with milk frother",
    "noise cancelling headphones", "a warm wool sweater", "cast iron pan", "tent for two people",
    "gift for a coffee lover", "bright red lipstick", "robot vacuum for pet hair", "yoga mat non slip",
    "kids rain boots", "portable speaker for the beach", "down sleeping bag", "mechanical keyboard",
]


def encode_throughput(seconds: float = 10.0, batch: int = 32) -> float:
    """Raw MiniLM batched encode of one process, one torch thread (as each encoder replica runs)."""
    from router.embed import load_encoder

    enc = load_encoder("minilm")
    texts = [QUERY_TEXTS[i % len(QUERY_TEXTS)] + f" {i}" for i in range(batch)]
    enc.encode(texts)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        enc.encode(texts)
        done += batch
    return done / (time.perf_counter() - t0)


async def http_load(url: str, concurrency: int, total: int) -> tuple[list[float], float, int]:
    import httpx

    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def one(i: int) -> None:
            nonlocal errors
            body = {"prefetch": [{"space": "text", "text": f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} {i}"}],
                    "fusion": {"method": "none"}, "limit": 10, "with_payload": False}
            async with sem:
                t = time.perf_counter()
                r = await c.post("/v1/collections/bench/query", json=body)
                lat.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        return lat, total / (time.perf_counter() - t0), errors


def bench_serving(n: int, shards: int, workdir: Path) -> dict:
    """Text queries over HTTP (embedding included) against `prism up` on the bundled Milvus server."""
    import httpx

    from cluster import bootstrap
    from cluster.config import ClusterConfig
    from cluster.services import free_port, start_milvus_server

    print(f"[serving] n={n} shards={shards}", flush=True)
    server = start_milvus_server(workdir / "milvus-server")
    port = free_port()
    cfg = ClusterConfig(data_dir=str(workdir / "prism"), port=port, milvus={"mode": "server", "uri": server.uri})
    try:
        bootstrap.start_detached(cfg)
        url = f"http://127.0.0.1:{port}"
        spec = {"spaces": {"text": {"dim": 384, "encoder": "minilm", "source": "description",
                                    "index": {"type": "HNSW"}}}, "shards": shards}
        httpx.put(f"{url}/v1/collections/bench", json=spec, timeout=120).raise_for_status()
        coll = CollectionConfig(name="bench", shards=shards, spaces=spec["spaces"])
        # Bulk load straight into the collections the running actors serve (same server, same names).
        local = local_shards(coll, replica_specs(coll, MilvusConfig(mode="server", uri=server.uri), workdir, server.uri),
                             create=False)
        load_s = load_points(local, HashRing(range(shards)), {"text": gaussian_mixture(n, 384, seed=3)})
        for row in local:
            for c in row:
                c.target.wait_indexed()
        close_all(local)
        print(f"[serving] loaded in {load_s:.1f}s; measuring", flush=True)
        asyncio.run(http_load(url, 4, 40))  # warm-up
        runs = {c: asyncio.run(http_load(url, c, total)) for c, total in ((1, 150), (8, 400), (32, 800))}
        bootstrap.stop_instance(cfg.data_path)
    finally:
        bootstrap.stop_instance(workdir / "prism")
        server.stop()
    encode_per_s = encode_throughput()
    best_qps = max(runs[8][1], runs[32][1])
    result = {
        "n": n, "shards": shards, "backend": "server",
        "p50_ms_c1": round(pct(runs[1][0], 50), 2), "p99_ms_c1": round(pct(runs[1][0], 99), 2),
        "p50_ms_c8": round(pct(runs[8][0], 50), 2), "p99_ms_c8": round(pct(runs[8][0], 99), 2),
        "p50_ms_c32": round(pct(runs[32][0], 50), 2), "p99_ms_c32": round(pct(runs[32][0], 99), 2),
        "qps_c1": round(runs[1][1], 1), "qps_c8": round(runs[8][1], 1), "qps_c32": round(runs[32][1], 1),
        "errors": sum(r[2] for r in runs.values()),
        "encode_per_s": round(encode_per_s, 1), "ratio_qps_encode": round(best_qps / encode_per_s, 3),
    }
    print(f"[serving] {json.dumps(result)}", flush=True)
    return result


def write_json(name: str, payload: dict) -> None:
    (DOCS / "bench").mkdir(parents=True, exist_ok=True)
    (DOCS / "bench" / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="prism bench", description=__doc__)
    ap.add_argument("--only", default="core,serving", help="comma list of sections: core, serving")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--backends", default="server,lite")
    args = ap.parse_args(argv)
    sections = set(args.only.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    try:
        if "core" in sections:
            runs = [bench_core(args.n, args.shards, b, args.queries, workdir / b) for b in args.backends.split(",")]
            write_json("core", {"machine": machine(), "runs": runs})
        if "serving" in sections:
            write_json("serving", {"machine": machine(), **bench_serving(args.n, args.shards, workdir / "serving")})
        from deploy.report import write_report

        write_report()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
