"""Routing (`--only routing`, issue 28): what visiting fewer shards buys. Through the product's own path
(router.collection.service.PrismService in process, shards on the bundled Milvus server, HNSW, 8 shards):

- vector routing: a clustered set (Gaussian mixture, 64 components) and a less clustered one (the same centres, noise
  twice their spread: a point's own centre is only a little nearer than another's), each loaded into a hash-routed and a vector-routed collection of 8 shards (training starts on
  its own during the load; `rebalance` is then run again on request, timed). Queries with hash routing and with
  vector routing at probe 1, 2, 3 and "all": qps at 8 clients, p50 at 1, recall@10 against exact search over all
  points (numpy), shards visited. Repeats alternate hash and the probes, so a ratio is the median of ratios measured
  side by side (the spread is shown).
- key routing: the same points with a tenant field (32 tenants) in a key-routed and a hash-routed collection: a
  one-tenant query (the same `term` filter) on each.

The size is a parameter (`--routing-n`); the figures in docs/bench/routing.json are the lead's 200,000 x 384 run.
"""
from __future__ import annotations

import asyncio
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from deploy.benchlib import indexed, pct, run_concurrent
from deploy.datasets import gaussian_mixture, query_vectors

DIM, SHARDS, CENTROIDS, COMPONENTS, TENANTS = 384, 8, 256, 64, 32
SETS = {"clustered": 0.35, "less_clustered": 2.0}  # the mixture's noise per dimension (centres: N(0, 1))
PROBES = (1, 2, 3, "all")
REPEATS = 3
BATCH = 1000


def exact_top10(x: np.ndarray, q: np.ndarray) -> list[set[str]]:
    """The true top 10 by cosine (rows are unit vectors), by id."""
    out = []
    for i in range(0, len(q), 64):
        s = q[i : i + 64] @ x.T
        top = np.argpartition(-s, 10, axis=1)[:, :10]
        out += [{f"p{j}" for j in row} for row in top]
    return out


def space() -> dict:
    return {"v": {"dim": DIM, "metric": "cosine", "index": {"type": "HNSW"}}}


async def load(svc, name: str, x: np.ndarray, payload=None) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(x), BATCH):
        pts = [{"id": f"p{j}", "vectors": {"v": x[j].tolist()}, **({"payload": payload(j)} if payload else {})}
               for j in range(i, min(i + BATCH, len(x)))]
        await svc.upsert(name, {"points": pts})
    await indexed(svc, name)
    return time.perf_counter() - t0


def calls(coord) -> int:
    """Milvus searches made so far by the collection's shard replicas (in process: each client's Shard counts)."""
    return sum(c.target.search_counts()["milvus_searches"] for sh in coord.shards for c in sh.clients)


async def profiled(coord, reqs, concurrency: int) -> tuple[list[float], float, dict]:
    """One run at `concurrency`, with what it cost: Milvus searches per query (the ingress coalescer and the replica's
    group commit merge concurrent queries' searches of a shard into one) and the router process's CPU per query (Milvus is another process)."""
    c0, r0 = calls(coord), resource.getrusage(resource.RUSAGE_SELF)
    lat, qps = await run_concurrent(coord, reqs, concurrency)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return lat, qps, {"shard_calls_per_query": round((calls(coord) - c0) / len(reqs), 3),
                      "router_cpu_ms_per_query": round(cpu * 1000 / len(reqs), 2)}


async def measure(coord, reqs, truth=None) -> dict:
    await run_concurrent(coord, reqs[:5], 1)  # warm-up
    lat1, _, cost1 = await profiled(coord, reqs, 1)
    _, qps8, cost8 = await profiled(coord, reqs, 8)
    _, qps32, _ = await profiled(coord, reqs, 32)
    out = {"qps_c8": round(qps8, 1), "p50_ms_c1": round(pct(lat1, 50), 2), "qps_c1": round(1000 / statistics.mean(lat1), 1),
           "qps_c32": round(qps32, 1), "shard_calls_per_query_c1": cost1["shard_calls_per_query"],
           "shard_calls_per_query_c8": cost8["shard_calls_per_query"],
           "router_cpu_ms_per_query_c8": cost8["router_cpu_ms_per_query"]}
    got = [await coord.query(r) for r in reqs]
    out["shards_visited_mean"] = round(statistics.mean(len(g.coverage.routed) for g in got), 2)
    if truth is not None:
        out["recall_at_10"] = round(statistics.mean(len({h.id for h in g.hits} & t) / 10
                                                    for g, t in zip(got, truth)), 4)
    return out


def requests(qs: np.ndarray, probe=None, flt=None) -> list:
    from router.schema.query import QueryRequest

    return [QueryRequest.model_validate({"prefetch": [{"space": "v", "vector": q.tolist(), "limit": 10}],
                                         "fusion": {"method": "none"}, "limit": 10, "with_payload": False,
                                         **({"probe": probe} if probe is not None else {}),
                                         **({"filter": flt} if flt else {})}) for q in qs]


def median_runs(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in keys}


async def vector_set(svc, label: str, noise: float, n: int, n_queries: int) -> dict:
    x = gaussian_mixture(n, DIM, seed=28, clusters=COMPONENTS, spread=noise)
    qs = query_vectors(n_queries, DIM, seed=29, base_seed=28, clusters=COMPONENTS, spread=noise)
    truth = exact_top10(x, qs)
    names = {"hash": f"route_{label}_hash", "vector": f"route_{label}"}
    await svc.create_collection(names["hash"], {"spaces": space(), "shards": SHARDS})
    await svc.create_collection(names["vector"], {"spaces": space(), "shards": SHARDS, "routing": {
        "method": "vector", "space": "v", "centroids": CENTROIDS}})
    load_s = {m: await load(svc, name, x) for m, name in names.items()}
    # training starts on its own at 50 x CENTROIDS points (while the load goes on): let it end, then rebalance on
    # request, timed, over the whole collection
    task = svc.background.get(names["vector"])
    auto = (await asyncio.gather(task, return_exceptions=True))[0] if task is not None else None
    report = await svc.rebalance(names["vector"])
    await indexed(svc, names["vector"])
    print(f"[routing] {label}: loaded {n} points in {load_s}s; rebalance {report}", flush=True)
    hashed, routed = svc.coordinator(names["hash"]), svc.coordinator(names["vector"])
    runs: dict = {"hash": [], **{str(p): [] for p in PROBES}}
    for _ in range(REPEATS):  # alternate: each repeat measures hash and every probe side by side
        runs["hash"].append(await measure(hashed, requests(qs), truth))
        for p in PROBES:
            runs[str(p)].append(await measure(routed, requests(qs, probe=p), truth))
    ratio = [r2["qps_c8"] / h["qps_c8"] for r2, h in zip(runs["2"], runs["hash"])]
    ratio1 = [r2["qps_c1"] / h["qps_c1"] for r2, h in zip(runs["2"], runs["hash"])]
    ratio32 = [r2["qps_c32"] / h["qps_c32"] for r2, h in zip(runs["2"], runs["hash"])]
    out = {"n": n, "noise": noise, "load_s": {m: round(v, 1) for m, v in load_s.items()},
           "auto_trained": isinstance(auto, dict), "rebalance_s": report["seconds"], "moved": report["moved"],
           "spread": report["spread"], "hash": median_runs(runs["hash"]),
           "probes": {p: median_runs(runs[str(p)]) for p in map(str, PROBES)},
           "qps_ratio_probe2": round(statistics.median(ratio), 3),
           "qps_ratio_probe2_range": [round(min(ratio), 3), round(max(ratio), 3)],
           "qps_ratio_probe2_c1": round(statistics.median(ratio1), 3),
           "qps_ratio_probe2_c32": round(statistics.median(ratio32), 3)}
    out["recall_probe2"] = out["probes"]["2"]["recall_at_10"]
    reach = [p for p in PROBES if out["probes"][str(p)]["recall_at_10"] >= 0.95]
    out["probe_for_recall_0_95"] = reach[0] if reach else None
    for name in names.values():
        await svc.delete_collection(name)
    return out


async def key_routing(svc, n: int, n_queries: int) -> dict:
    x = gaussian_mixture(n, DIM, seed=31, clusters=COMPONENTS)
    qs = query_vectors(n_queries, DIM, seed=32, base_seed=31, clusters=COMPONENTS)
    out = {}
    for method in ("hash", "key"):
        name = f"route_key_{method}"
        routing = {"method": "key", "field": "tenant"} if method == "key" else {"method": "hash"}
        await svc.create_collection(name, {"spaces": space(), "shards": SHARDS, "metadata": {"tenant": "keyword"},
                                           "routing": routing})
        await load(svc, name, x, payload=lambda j: {"tenant": f"t{j % TENANTS}"})
    coords = {m: svc.coordinator(f"route_key_{m}") for m in ("hash", "key")}
    runs: dict = {"hash": [], "key": []}
    for _ in range(REPEATS):
        for m in ("hash", "key"):
            reqs = [r for k, q in enumerate(qs) for r in requests(q[None, :], flt={"term": {"tenant": f"t{k % TENANTS}"}})]
            runs[m].append(await measure(coords[m], reqs))
    ratio = [k["qps_c8"] / h["qps_c8"] for k, h in zip(runs["key"], runs["hash"])]
    for m in ("hash", "key"):
        out[m] = median_runs(runs[m])
        await svc.delete_collection(f"route_key_{m}")
    return {"n": n, "tenants": TENANTS, **out, "qps_ratio_key": round(statistics.median(ratio), 3),
            "qps_ratio_key_range": [round(min(ratio), 3), round(max(ratio), 3)]}


def run(workdir: Path, n: int = 200_000, n_queries: int = 200, key_n: int | None = None) -> dict:
    from cluster.config import ClusterConfig
    from cluster.services import start_milvus_server
    from router.collection.service import PrismService

    server = start_milvus_server(workdir / "milvus-server")
    try:
        cfg = ClusterConfig(data_dir=str(workdir / "data"), elasticsearch={"mode": "off"},
                            milvus={"mode": "server", "uri": server.uri})
        svc = PrismService(cfg, server_uri=server.uri)

        async def scenario() -> dict:
            sets: dict = {}
            for label, noise in SETS.items():  # each set's figures kept as it ends: a long run that fails later
                sets[label] = await vector_set(svc, label, noise, n, n_queries)  # still leaves them
                (workdir / "routing-partial.json").write_text(json.dumps({"n": n, "sets": sets}, indent=1))
                print(f"[routing] {label}: {json.dumps(sets[label])}", flush=True)
            key = await key_routing(svc, key_n or n, n_queries)
            return {"sets": sets, "key": key}

        got = asyncio.run(scenario())
        svc.close()
    finally:
        server.stop()
    clustered = got["sets"]["clustered"]
    return {"backend": "server", "index": "HNSW", "dim": DIM, "shards": SHARDS, "centroids": CENTROIDS,
            "components": COMPONENTS, "queries": n_queries, **got,
            "qps_ratio_probe2": clustered["qps_ratio_probe2"], "recall_probe2": clustered["recall_probe2"],
            "qps_ratio_key": got["key"]["qps_ratio_key"],
            "targets": {"qps_ratio_probe2": 2.5, "recall_probe2": 0.95, "qps_ratio_key": 4.0}}
