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

from cluster.config import BatchSettings, CollectionConfig, MilvusConfig
from cluster.ring import HashRing
from shards.local import local_shards, replica_specs
from deploy.datasets import gaussian_mixture, query_vectors
from router.coordinator import Coordinator
from router.fusion import rrf
from router.merge import merge_topk
from router.models import QueryRequest, ScoredId
from shards.api import PointRow

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


def cpu_ticks() -> dict[str, int]:
    """CPU ticks (user + system) used so far by each process that serves a query on this machine, summed by
    role: Ray processes by title, the Milvus server, HAProxy, and this benchmark's own client."""
    out: dict[str, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                argv = f.read().split("\0")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        title, cmd = argv[0], " ".join(argv)
        if title.startswith("ray::"):
            name = title.split(":")[-1].split(".")[0] if "ServeReplica" in title else title[5:].split(".")[0]
        elif "milvus run standalone" in cmd:
            name = "milvus server"
        elif "haproxy" in title:
            name = "haproxy"
        elif int(pid) == os.getpid():
            name = "load client"
        else:
            continue
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def cpu_per_request(before: dict[str, int], after: dict[str, int], requests: int) -> dict[str, float]:
    """CPU ms per request by role between two `cpu_ticks` readings (roles under 0.1 ms left out)."""
    hz = os.sysconf("SC_CLK_TCK")
    cpu = {k: round((after[k] - before.get(k, 0)) / hz * 1000 / requests, 2) for k in after}
    return {k: v for k, v in sorted(cpu.items(), key=lambda x: -x[1]) if v >= 0.1}


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
            pts = [PointRow(id=f"p{i}", payload={"n": i}, vectors={sp: vecs[sp][i].tolist() for sp in vecs})
                   for i in chunk]
            for c in shards[s]:
                c.target.upsert(pts, wait=False)  # bulk: one visibility wait at the end, not one per batch
        for c in shards[s]:
            c.target.wait_visible()

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


def _text_query(i: int, cache: bool = False) -> dict:
    return {"prefetch": [{"space": "text", "text": f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} {i}"}],
            "fusion": {"method": "none"}, "limit": 10, "with_payload": False, "cache": cache}


def zipf_queries(total: int, distinct: int = 1000, s: float = 1.1, seed: int = 7) -> list[int]:
    """`total` query numbers drawn from `distinct` ones with Zipf(s) popularity (rank 1 the most asked)."""
    weights = 1.0 / np.arange(1, distinct + 1) ** s
    return np.random.default_rng(seed).choice(distinct, size=total, p=weights / weights.sum()).tolist()


async def http_load(url: str, concurrency: int, total: int, body=_text_query,
                    path: str = "/v1/collections/bench/query", seen=None,
                    headers: dict[str, str] | None = None) -> tuple[list[float], float, int]:
    """`total` POSTs of `body(i)` to `path`, `concurrency` at a time: (latencies ms, requests/s, errors).
    `seen(answer)` is called with each successful answer's JSON when given."""
    import httpx

    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency),
                                 headers=headers) as c:
        async def one(i: int) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await c.post(path, json=body(i))
                lat.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200
                if seen is not None and r.status_code == 200:
                    seen(r.json())

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        return lat, total / (time.perf_counter() - t0), errors


def bench_serving(n: int, shards: int, workdir: Path) -> dict:
    """Text queries over HTTP (embedding included) against `prism up` on the bundled Milvus server: distinct
    queries with the cache off, batching on (the default) and off; then a Zipf workload with the cache on."""
    import httpx
    import yaml

    from cluster.cli import bootstrap
    from cluster.config import ClusterConfig
    from cluster.services import free_port, side_port, start_milvus_server

    print(f"[serving] n={n} shards={shards}", flush=True)
    server = start_milvus_server(workdir / "milvus-server")
    port = free_port()
    milvus = {"mode": "server", "uri": server.uri}
    cfg = ClusterConfig(data_dir=str(workdir / "prism"), port=port, grpc_port=side_port(), milvus=milvus)
    url = f"http://127.0.0.1:{port}"
    loads = ((1, 150), (8, 400), (32, 800))
    try:
        bootstrap.start_detached(cfg)
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
        runs = {}
        for c, total in loads:
            before = cpu_ticks()
            runs[c] = asyncio.run(http_load(url, c, total))
            if c == 32:
                cpu32 = cpu_per_request(before, cpu_ticks(), total)
        # Zipf over 1,000 distinct queries, cache on: hits are answers marked `cached`.
        order = zipf_queries(3000)
        cached = [0]
        zipf = asyncio.run(http_load(url, 32, len(order), lambda i: _text_query(order[i], cache=True),
                                     seen=lambda a: cached.__setitem__(0, cached[0] + bool(a.get("cached")))))
        bootstrap.stop_instance(cfg.data_path)
        # The same collection, the same distinct queries, with cross-request batching off.
        off = workdir / "unbatched.yaml"
        off.write_text(yaml.safe_dump({"batching": {"enabled": False}}))
        bootstrap.start_detached(cfg, config_file=str(off))
        asyncio.run(http_load(url, 4, 40, lambda i: _text_query(10_000 + i)))  # warm-up
        unbatched = {}
        for c, total in loads:
            before = cpu_ticks()
            unbatched[c] = asyncio.run(http_load(url, c, total, lambda i: _text_query(20_000 + i)))
            if c == 32:
                cpu32_unbatched = cpu_per_request(before, cpu_ticks(), total)
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
        "p50_ms_c1_unbatched": round(pct(unbatched[1][0], 50), 2),
        "qps_c8_unbatched": round(unbatched[8][1], 1), "qps_c32_unbatched": round(unbatched[32][1], 1),
        "speedup_batching": round(runs[32][1] / unbatched[32][1], 2),
        "qps_c32_cached": round(zipf[1], 1), "cache_hit_rate": round(cached[0] / len(order), 3),
        "ratio_cached_uncached": round(zipf[1] / runs[32][1], 2),
        "errors": sum(r[2] for r in (*runs.values(), *unbatched.values(), zipf)),
        "cpu_ms_per_request_c32": cpu32, "cpu_ms_per_request_c32_unbatched": cpu32_unbatched,
        "encode_per_s": round(encode_per_s, 1), "ratio_qps_encode": round(best_qps / encode_per_s, 3),
        "targets": "speedup_batching >= 3; ratio_qps_encode >= 0.3; p50 at c=1 no worse than unbatched by more "
                   "than the batching window (0 ms by default); cached QPS >= 5x uncached",
    }
    print(f"[serving] {json.dumps(result)}", flush=True)
    return result


def bench_filters(n: int, shards: int, workdir: Path, n_queries: int = 30) -> dict:
    """Filtered query latency per plan path at 1/10/50% selectivity, beside the unfiltered query (same run)."""
    from cluster.config import FilterSettings
    from cluster.services import start_elasticsearch, start_milvus_server
    from router.metadata import MetadataStore

    print(f"[filters] n={n} shards={shards}", flush=True)
    server = start_milvus_server(workdir / "milvus-server")
    es = start_elasticsearch(workdir / "es")
    try:
        cfg = CollectionConfig(name="fbench", shards=shards, metadata={"sel": "integer"},
                               spaces={"text": {"dim": 384, "index": {"type": "HNSW"}}})
        store = MetadataStore(es.uri, timeout_s=600)
        store.ensure_index(cfg)
        clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="server", uri=server.uri), workdir, server.uri))
        vecs = gaussian_mixture(n, 384, seed=8)
        sel = np.random.default_rng(9).integers(0, 100, size=n)
        ring = HashRing(range(shards))
        t0 = time.perf_counter()
        by_shard: dict[int, list[dict]] = defaultdict(list)
        for i in range(n):
            by_shard[int(ring.get(f"p{i}"))].append(PointRow(id=f"p{i}", payload={"sel": int(sel[i])},
                                                             meta={"sel": int(sel[i])}, vectors={"text": vecs[i].tolist()}))
        for s, rows in by_shard.items():
            for start in range(0, len(rows), 2000):
                clients[s][0].target.upsert(rows[start : start + 2000], wait=False)
        for start in range(0, n, 5000):
            store.upsert("fbench", [(f"p{i}", {"sel": int(sel[i])}) for i in range(start, min(n, start + 5000))])
        for row in clients:
            row[0].target.wait_indexed()
        close_all(clients)
        clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="server", uri=server.uri), workdir, server.uri))
        print(f"[filters] loaded Milvus + Elasticsearch in {time.perf_counter() - t0:.1f}s", flush=True)
        qs = query_vectors(n_queries, 384, seed=10, base_seed=8)

        def measure(mode: str, flt: dict | None) -> tuple[float, float, float]:
            coord = Coordinator.from_clients(cfg, clients, metadata=store, timeout_s=600,
                                filters=FilterSettings(mode=mode, prefilter_max_ids=10_000))
            lat, rounds = [], []
            for q in qs:
                r = QueryRequest(prefetch=[{"space": "text", "vector": q.tolist()}], fusion={"method": "none"},
                                 limit=10, with_payload=False, filter=flt)
                t = time.perf_counter()
                ans = asyncio.run(coord.query(r))
                lat.append((time.perf_counter() - t) * 1000)
                rounds.append(ans.filter_rounds)
            return round(pct(lat, 50), 2), round(pct(lat, 99), 2), round(statistics.mean(rounds), 2)

        unfiltered = measure("auto", None)
        rows_out = []
        for pct_sel in (1, 10, 50):
            flt = {"range": {"sel": {"lt": pct_sel}}}
            for mode in ("pushdown", "prefilter", "postfilter"):
                try:
                    p50, p99, rounds = measure(mode, flt)
                except Exception as exc:  # noqa: BLE001 - recorded, the other configurations still run
                    rows_out.append({"selectivity_pct": pct_sel, "plan": mode, "error": str(exc)[:200]})
                    print(f"[filters] {rows_out[-1]}", flush=True)
                    continue
                rows_out.append({"selectivity_pct": pct_sel, "plan": mode, "p50_ms": p50, "p99_ms": p99,
                                 "mean_rounds": rounds, "ratio_p50_vs_unfiltered": round(p50 / unfiltered[0], 2)})
                print(f"[filters] {rows_out[-1]}", flush=True)
        close_all(clients)
    finally:
        es.stop()
        server.stop()
    return {"n": n, "shards": shards, "backend": "server + noida-db", "queries": n_queries,
            "unfiltered_p50_ms": unfiltered[0], "unfiltered_p99_ms": unfiltered[1], "runs": rows_out}


def bench_ingest(workdir: Path, n: int = 3000) -> dict:
    """`prism ingest` on Ray Data vs a plain single-process encode+insert loop, into the same running prism."""
    import httpx

    from cluster.cli import bootstrap
    from cluster.config import ClusterConfig
    from cluster.cli.ingest import run_ingest
    from cluster.services import free_port, side_port
    from router.embed import load_encoder

    import ray

    print(f"[ingest] {n} points, MiniLM", flush=True)
    port = free_port()
    cfg = ClusterConfig(data_dir=str(workdir / "prism"), port=port, grpc_port=side_port(),
                        elasticsearch={"mode": "off"})
    from deploy.tinyclip import build_tiny_clip

    build_tiny_clip(workdir / "prism" / "models" / "clip")  # found by prism up in DATA_DIR/models
    words = [w for q in QUERY_TEXTS for w in q.split()]
    src = workdir / "points.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps({"id": f"i{i}", "title": " ".join(words[(i * k) % len(words)] for k in range(1, 9))})
                           + "\n" for i in range(n)))
    spec = {"spaces": {"text": {"dim": 384, "encoder": "minilm", "source": "title", "index": {"type": "HNSW"}}},
            "shards": 2}
    try:
        bootstrap.start_detached(cfg)
        url = f"http://127.0.0.1:{port}"
        for name in ("pipeline", "baseline"):
            httpx.put(f"{url}/v1/collections/{name}", json=spec, timeout=120).raise_for_status()
        rep = run_ingest(src, "pipeline", url, ledger_path=workdir / "ledger", batch_size=64, write_batch=256)
        ray.shutdown()
        enc = load_encoder("minilm")
        t0 = time.perf_counter()
        lines = src.read_text().splitlines()
        with httpx.Client(timeout=300) as c:
            for i in range(0, n, 256):
                objs = [json.loads(x) for x in lines[i : i + 256]]
                vecs = enc.encode_documents([o["title"] for o in objs])
                pts = [{"id": o["id"], "payload": o, "vectors": {"text": v.vector}} for o, v in zip(objs, vecs)]
                c.post(f"{url}/v1/collections/baseline/points", json={"points": pts}).raise_for_status()
        baseline_s = time.perf_counter() - t0
        texts = [json.loads(x)["title"] for x in lines[:1024]]
        t0 = time.perf_counter()
        enc.encode_documents(texts)
        raw = len(texts) / (time.perf_counter() - t0)
        multimodal = _ingest_text_image(url, workdir, min(n, 1000))
    finally:
        bootstrap.stop_instance(cfg.data_path)
    result = {"points": n, "pipeline_points_per_s": round(rep.points_per_s, 1),
              "baseline_points_per_s": round(n / baseline_s, 1), "raw_encode_per_s": round(raw, 1),
              "ratio": round(rep.points_per_s / (n / baseline_s), 3),
              "ratio_vs_raw_encode": round(rep.points_per_s / raw, 3), "failures": len(rep.failures),
              "text_image": multimodal}
    print(f"[ingest] {json.dumps(result)}", flush=True)
    return result


def _ingest_text_image(url: str, workdir: Path, n: int) -> dict:
    """Text+image points (tiny CLIP in DATA_DIR/models): pipeline vs a plain encode+insert loop, same run."""
    import base64
    import io

    import httpx
    import ray
    import skimage.data
    from PIL import Image

    from cluster.cli.ingest import run_ingest
    from router.embed import load_encoder

    health = httpx.get(f"{url}/health", timeout=30).json()["encoders"]["clip"]
    dim = health["dim"]
    photos = []
    for name in ("coffee", "chelsea", "astronaut", "rocket", "horse", "camera", "coins"):
        arr = getattr(skimage.data, name)()
        arr = np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr[..., :3]
        buf = io.BytesIO()
        Image.fromarray(arr.astype("uint8")).resize((128, 96)).save(buf, format="JPEG")
        photos.append(base64.b64encode(buf.getvalue()).decode())
    spec = {"spaces": {"image": {"dim": dim, "encoder": "clip", "source": "image", "modality": "image"},
                       "caption": {"dim": dim, "encoder": "clip", "source": "caption"}}, "shards": 2}
    for name in ("mm_pipeline", "mm_baseline"):
        httpx.put(f"{url}/v1/collections/{name}", json=spec, timeout=120).raise_for_status()
    src = workdir / "mm.jsonl"
    src.write_text("".join(json.dumps({"id": f"m{i}", "caption": f"photo number {i} of {i % 7}", "image": photos[i % 7]})
                           + "\n" for i in range(n)))
    rep = run_ingest(src, "mm_pipeline", url, ledger_path=workdir / "mm-ledger", batch_size=32, write_batch=128,
                     models_dir=str(workdir / "prism" / "models"))
    ray.shutdown()
    enc = load_encoder("clip", str(workdir / "prism" / "models"))
    from router.images import decode_base64, decode_image

    t0 = time.perf_counter()
    objs = [json.loads(x) for x in src.read_text().splitlines()]
    with httpx.Client(timeout=300) as c:
        for i in range(0, n, 128):
            chunk = objs[i : i + 128]
            imgs = enc.encode_images([decode_image(decode_base64(o["image"], "image"), "image") for o in chunk])
            caps = enc.encode_documents([o["caption"] for o in chunk])
            pts = [{"id": o["id"], "payload": {"caption": o["caption"]},
                    "vectors": {"image": a.vector, "caption": b.vector}} for o, a, b in zip(chunk, imgs, caps)]
            c.post(f"{url}/v1/collections/mm_baseline/points", json={"points": pts}).raise_for_status()
    base = n / (time.perf_counter() - t0)
    return {"points": n, "encoder": f"tiny random CLIP ({dim}-d; code path of the real one)",
            "pipeline_points_per_s": round(rep.points_per_s, 1), "baseline_points_per_s": round(base, 1),
            "ratio": round(rep.points_per_s / base, 3), "failures": len(rep.failures)}


def bench_scaling(workdir: Path, sizes=(50_000, 100_000, 200_000), shard_counts=(1, 2, 4, 8),
                  n_queries: int = 100) -> dict:
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
            "one_million": "python -m deploy.bench --only scaling --scaling-sizes 1000000 (about an hour on 2 cores)"}


def _group_rss_mib(pgid: int) -> float:
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def bench_sizing(workdir: Path, n: int = 50_000) -> dict:
    """Milvus server memory per million vectors, per dimension and index type (RSS delta, extrapolated)."""
    from cluster.services import start_milvus_server

    rows = []
    for dim, index in ((384, "HNSW"), (512, "HNSW"), (384, "IVF_FLAT")):
        server = start_milvus_server(workdir / f"milvus-{dim}-{index}")
        try:
            time.sleep(5)
            idle = _group_rss_mib(server.pid)
            cfg = CollectionConfig(name=f"size{dim}_{index.lower()}", shards=1,
                                   spaces={"v": {"dim": dim, "index": {"type": index}}})
            clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="server", uri=server.uri), workdir, server.uri))
            load_points(clients, HashRing(range(1)), {"v": gaussian_mixture(n, dim, seed=dim)})
            clients[0][0].target.wait_indexed()
            close_all(clients)
            time.sleep(5)
            loaded = _group_rss_mib(server.pid)
        finally:
            server.stop()
        per_m = (loaded - idle) * 1_000_000 / n / 1024
        raw = dim * 4 / 1024**3 * 1_000_000
        rows.append({"dim": dim, "index": index, "points": n, "idle_rss_mib": round(idle), "loaded_rss_mib": round(loaded),
                     "gib_per_million": round(per_m, 2), "raw_float32_gib_per_million": round(raw, 2)})
        print(f"[sizing] {rows[-1]}", flush=True)
    return {"runs": rows}


def write_json(name: str, payload: dict) -> None:
    (DOCS / "bench").mkdir(parents=True, exist_ok=True)
    (DOCS / "bench" / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="prism bench", description=__doc__)
    ap.add_argument("--only",
                    default="core,serving,filters,chaos,sizing,ingest,scaling,encode,freshness,batching,tiny,auth,"
                            "stages,grpc,scaleout,json_depth,antientropy,qdrant",
                    help="comma list of sections: core, serving, filters, chaos, sizing, ingest, scaling, encode, "
                         "freshness, batching, tiny, auth, stages, grpc, scaleout, json_depth, antientropy, qdrant")
    ap.add_argument("--scaling-sizes", default="50000,100000,200000")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--backends", default="server,lite")
    ap.add_argument("--chaos-faults", default="replica_kill,node_loss,milvus_restart,es_outage,ingress_restart",
                    help="chaos runs to make; the other faults' rows in docs/bench/chaos.json are kept")
    args = ap.parse_args(argv)
    sections = set(args.only.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    try:
        if "core" in sections:
            runs = [bench_core(args.n, args.shards, b, args.queries, workdir / b) for b in args.backends.split(",")]
            # Runs of other (backend, size) pairs stay: a 1-backend or smaller re-run does not erase the others.
            done = {(r["backend"], r["n"]) for r in runs}
            old = json.loads((DOCS / "bench" / "core.json").read_text()).get("runs", []) \
                if (DOCS / "bench" / "core.json").exists() else []
            write_json("core", {"machine": machine(), "runs": runs + [r for r in old if (r["backend"], r["n"]) not in done]})
        if "serving" in sections:
            write_json("serving", {"machine": machine(), **bench_serving(args.n, args.shards, workdir / "serving")})
        if "filters" in sections:
            write_json("filters", {"machine": machine(), **bench_filters(args.n, args.shards, workdir / "filters")})
        if "chaos" in sections:
            from deploy.bench_chaos import run as bench_chaos

            chaos = bench_chaos(workdir / "chaos", only=tuple(args.chaos_faults.split(",")))
            old_path = DOCS / "bench" / "chaos.json"
            old = json.loads(old_path.read_text()).get("runs", []) if old_path.exists() else []
            done = {r["fault"] for r in chaos["runs"]}
            chaos["runs"] += [r for r in old if r.get("fault") not in done]
            order = ["replica_kill", "node_loss", "milvus_restart", "es_outage", "ingress_restart"]
            chaos["runs"].sort(key=lambda r: order.index(r["fault"]) if r["fault"] in order else len(order))
            chaos["recovery_s_mean"] = round(sum(r["recovery_s"] for r in chaos["runs"]) / len(chaos["runs"]), 2)
            write_json("chaos", {"machine": machine(), **chaos})
        if "scaleout" in sections:
            from deploy.bench_scaleout import run as bench_scaleout

            write_json("scaleout", {"machine": machine(), **bench_scaleout(workdir / "scaleout")})
        if "ingest" in sections:
            write_json("ingest", {"machine": machine(), **bench_ingest(workdir / "ingest")})
        if "scaling" in sections:
            sizes = tuple(int(x) for x in args.scaling_sizes.split(","))
            write_json("scaling", {"machine": machine(), **bench_scaling(workdir / "scaling", sizes=sizes)})
        if "sizing" in sections:
            write_json("sizing", {"machine": machine(), **bench_sizing(workdir / "sizing")})
        if "encode" in sections:
            from deploy.bench_encode import run as bench_encode

            bench_encode()
        if "freshness" in sections:
            from deploy.bench_freshness import run as bench_freshness

            write_json("freshness", {"machine": machine(), **bench_freshness(workdir / "freshness")})
        if "batching" in sections:
            from deploy.bench_batching import run as bench_batching

            write_json("batching", {"machine": machine(), **bench_batching(workdir / "batching")})
        if "tiny" in sections:
            from deploy.bench_tiny import run as bench_tiny

            write_json("tiny", {"machine": machine(), **bench_tiny(workdir / "tiny")})
        if "auth" in sections:
            from deploy.bench_auth import run as bench_auth

            write_json("auth", {"machine": machine(), **bench_auth(workdir / "auth")})
        if "stages" in sections:
            from deploy.bench_stages import run as bench_stages

            write_json("stages", {"machine": machine(), **bench_stages(workdir / "stages")})
        if "json_depth" in sections:
            from deploy.bench_json_depth import run as bench_json_depth

            write_json("json_depth", {"machine": machine(), **bench_json_depth()})
        if "antientropy" in sections:
            from deploy.bench_antientropy import run as bench_antientropy

            write_json("antientropy", {"machine": machine(), **bench_antientropy(workdir / "antientropy")})
        if "grpc" in sections:
            from deploy.bench_grpc import run as bench_grpc

            write_json("grpc", {"machine": machine(), **bench_grpc(workdir / "grpc")})
        if "qdrant" in sections:
            from deploy.bench_qdrant import run as bench_qdrant

            write_json("qdrant", {"machine": machine(), **bench_qdrant(workdir / "qdrant")})
        from deploy.report import write_report

        write_report()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
