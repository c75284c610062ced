"""What post-fusion stages cost a hybrid query (`python -m deploy.bench --only stages`).

One collection in process (2 shards on milvus-lite, HNSW; the bundled Elasticsearch API server for the bm25 space):
N points with two 64-d vector spaces and a short text description; the query fuses a bm25 prefetch and two vector
prefetches with RRF (limit 10, cache off), with no stage, then with formula (an equals boost and a gauss decay) ->
MMR (one space) -> group_by. The two are interleaved query by query, so both see the same machine state. Writes
docs/bench/stages.json.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

N, DIM, SHARDS, QUERIES = 200_000, 64, 2, 30
WORDS = ("waterproof", "jacket", "boots", "trail", "wool", "light", "rain", "warm", "leather", "hiking", "running",
         "shoe", "sweater", "tent", "summer", "winter", "coffee", "mug", "steel", "canvas")
STAGES = [{"formula": {"boost": [{"field": "in_stock", "equals": True, "add": 0.01},
                                 {"field": "price", "decay": "gauss", "origin": 50, "scale": 100, "multiply": True}]}},
          {"mmr": {"space": "a", "lambda": 0.7}},
          {"group_by": {"field": "brand", "size": 2, "groups": 5}}]


def run(workdir: Path) -> dict:
    from cluster.collection_spec import CollectionConfig
    from cluster.config import MilvusConfig
    from cluster.services import start_elasticsearch
    from router.collection.coordinator import Coordinator
    from router.metadata.store import MetadataStore
    from router.schema.points import Point
    from router.schema.query import QueryRequest
    from shards.local import local_shards, replica_specs, stop_local_shards

    workdir.mkdir(parents=True, exist_ok=True)
    es = start_elasticsearch(workdir / "es")
    cfg = CollectionConfig.model_validate({
        "name": "stages", "shards": SHARDS,
        "metadata": {"brand": "keyword", "price": "float", "in_stock": "boolean"},
        "spaces": {"a": {"dim": DIM, "index": {"type": "HNSW"}}, "b": {"dim": DIM, "index": {"type": "HNSW"}},
                   "keywords": {"kind": "bm25", "fields": ["description"]}}})
    store = MetadataStore(es.uri)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), workdir / "lite", None))
    try:
        coord = Coordinator.from_clients(cfg, clients, metadata=store)
        rng = np.random.default_rng(5)
        t0 = time.perf_counter()

        async def load() -> None:
            for i in range(0, N, 1000):
                v = rng.standard_normal((1000, 2, DIM))
                v /= np.linalg.norm(v, axis=2, keepdims=True)
                await coord.upsert([Point(id=f"p{j}", vectors={"a": v[k, 0].tolist(), "b": v[k, 1].tolist()}, payload={
                    "description": " ".join(rng.choice(WORDS, 6)), "brand": f"b{int(rng.integers(30))}",
                    "price": round(float(rng.uniform(5, 300)), 2), "in_stock": bool(rng.integers(2))})
                    for k, j in enumerate(range(i, i + 1000))], wait=False)

        asyncio.run(load())
        for row in clients:
            row[0].target.wait_indexed()
        load_s = time.perf_counter() - t0

        def body(i: int, stages: bool) -> QueryRequest:
            q = np.random.default_rng(100 + i).standard_normal((2, DIM))
            return QueryRequest.model_validate({
                "prefetch": [{"space": "keywords", "text": " ".join(np.random.default_rng(i).choice(WORDS, 3))},
                             {"space": "a", "vector": q[0].tolist()}, {"space": "b", "vector": q[1].tolist()}],
                "fusion": {"method": "rrf"}, "limit": 10, "cache": False, **({"stages": STAGES} if stages else {})})

        for i in range(5):  # warm-up
            asyncio.run(coord.query(body(i, True)))
        lat = {False: [], True: []}
        for i in range(QUERIES):
            for with_stages in ((False, True) if i % 2 == 0 else (True, False)):
                t = time.perf_counter()
                asyncio.run(coord.query(body(i, with_stages)))
                lat[with_stages].append((time.perf_counter() - t) * 1000)
    finally:
        stop_local_shards(clients, drop=True)
        es.stop()
    p50_plain, p50_stages = statistics.median(lat[False]), statistics.median(lat[True])
    res = {"points": N, "shards": SHARDS, "dim": DIM, "queries": QUERIES, "load_s": round(load_s, 1),
           "p50_ms_fusion_only": round(p50_plain, 2), "p50_ms_with_stages": round(p50_stages, 2),
           "overhead": round(p50_stages / p50_plain - 1, 3),
           "target": "the three stages add <= 25% to the p50 of a bm25 + 2 vector spaces query (the issue names "
                     "the 200k collection; this run uses the size above)"}
    print(f"[stages] {res}", flush=True)
    return res


def table(payload: dict) -> str:
    return "\n".join([
        "| query | p50 ms |", "|---|---|",
        f"| bm25 + 2 vector spaces, RRF (fusion only) | {payload['p50_ms_fusion_only']} |",
        f"| the same + formula -> MMR -> group_by | {payload['p50_ms_with_stages']} |",
        f"\nStages add {payload['overhead'] * 100:.1f}% to the p50 ({payload['points']:,} points; {payload['target']}).",
        "Both queries use the default window (issue 15's stable paging): each prefetch fetches 50 and the stages see "
        "50 fused candidates, on every page."])
