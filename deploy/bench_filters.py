"""Filtered queries (`--only filters`): each plan path at 1/10/50% selectivity beside the unfiltered query."""
from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.ring import HashRing
from deploy.benchlib import close_all, pct
from deploy.datasets import gaussian_mixture, query_vectors
from router.collection.coordinator import Coordinator
from router.schema.query import QueryRequest
from shards.api import PointRow
from shards.local import local_shards, replica_specs


def run(n: int, shards: int, workdir: Path, n_queries: int = 30) -> dict:
    """Filtered query latency per plan path at 1/10/50% selectivity, beside the unfiltered query (same run)."""
    from cluster.config import FilterSettings
    from cluster.services import start_elasticsearch, start_milvus_server
    from router.metadata.store import MetadataStore

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
