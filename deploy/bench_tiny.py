"""The sample catalog over HTTP beside the framework's floor (`python -m deploy.bench --only tiny`).

Floor: a trivial Ray Serve app of the same shape as prism (FastAPI ingress, one no-op call per shard actor, the
same shard count, 2). prism: `prism up` with deploy/demo.yaml (milvus-lite, 2 shards, FLAT-free HNSW) holding the
64-product catalog. Both measured in the same run: vector-only and text queries (distinct texts, cache off) at
c=1 (p50) and c=32 (QPS). Writes docs/bench/tiny.json.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the endpoint's annotations from these globals

SHARDS = 2
ROOT = Path(__file__).resolve().parent.parent
QUERY = "/v1/collections/products/query"


def _measure(url: str, body: Callable[[int], dict]) -> dict:
    from deploy.bench import http_load

    asyncio.run(http_load(url, 4, 40, body, QUERY))  # warm-up
    lat1, _, e1 = asyncio.run(http_load(url, 1, 200, body, QUERY))
    _, qps32, e32 = asyncio.run(http_load(url, 32, 960, body, QUERY))
    return {"p50_ms_c1": round(float(np.percentile(lat1, 50)), 2), "qps_c32": round(qps32, 1), "errors": e1 + e32}


def _vector(i: int, payload: bool = True) -> dict:
    v = np.random.default_rng(i).standard_normal(384)
    return {"prefetch": [{"space": "text", "vector": (v / np.linalg.norm(v)).tolist()}], "fusion": {"method": "none"},
            "limit": 5, "cache": False, **({} if payload else {"with_payload": False})}


def _text(i: int) -> dict:
    return {"prefetch": [{"space": "text", "text": f"something warm for a cold hike, take {i}"}],
            "fusion": {"method": "none"}, "limit": 5, "cache": False}


def floor() -> dict:
    """The same shape with nothing inside: what Ray Serve + FastAPI + one actor call per shard cost here."""
    import ray
    from fastapi import FastAPI
    from ray import serve

    from cluster.services import free_port

    api = FastAPI()

    @ray.remote(num_cpus=0)
    class Noop:
        def search(self, body: dict) -> list:
            return []

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
    @serve.ingress(api)
    class Floor:
        def __init__(self, n: int):
            self.actors = [Noop.remote() for _ in range(n)]

        @api.post(QUERY)
        async def query(self, request: Request) -> dict:
            body = await request.json()
            await asyncio.gather(*(a.search.remote(body) for a in self.actors))
            return {"hits": []}

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="floor")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Floor.bind(SHARDS), name="floor", route_prefix="/")
        return _measure(f"http://127.0.0.1:{port}", _vector)
    finally:
        serve.shutdown()
        ray.shutdown()


def prism(workdir: Path) -> dict:
    import httpx

    from cluster.cli import bootstrap
    from cluster.config import load_config
    from cluster.services import free_port

    port = free_port()
    cfg = load_config(ROOT / "deploy" / "demo.yaml", port=port, data_dir=str(workdir / "prism"))
    try:
        bootstrap.start_detached(cfg, config_file=str(ROOT / "deploy" / "demo.yaml"))
        url = f"http://127.0.0.1:{port}"
        rows = [json.loads(line) for line in (ROOT / "deploy" / "data" / "catalog.jsonl").read_text().splitlines()]
        points = [{"id": r["id"], "payload": {k: v for k, v in r.items() if k != "id"}} for r in rows]
        httpx.post(f"{url}/v1/collections/products/points", json={"points": points}, timeout=300).raise_for_status()
        out = {}
        for name, body in (("vector", _vector), ("vector_nopayload", lambda i: _vector(i, payload=False)),
                           ("text", _text)):
            for k, v in _measure(url, body).items():
                out[f"tiny_{name}_{k}"] = v
        return out
    finally:
        bootstrap.stop_instance(cfg.data_path)


def run(workdir: Path) -> dict:
    fl = floor()
    pr = prism(workdir)
    res = {"floor_p50_ms_c1": fl["p50_ms_c1"], "floor_qps_c32": fl["qps_c32"], **pr}
    res["ratio_p50_c1"] = round(res["tiny_vector_p50_ms_c1"] / res["floor_p50_ms_c1"], 2)
    res["ratio_qps_c32"] = round(res["tiny_vector_qps_c32"] / res["floor_qps_c32"], 2)
    res["targets"] = "vector-only p50 at c=1 <= 1.3x the floor's; QPS at c=32 >= 0.75x the floor's"
    print(f"[tiny] {res}", flush=True)
    return res


def table(payload: dict) -> str:
    rows = [("floor (no-op Serve app, 2 actors)", payload["floor_p50_ms_c1"], payload["floor_qps_c32"]),
            ("prism vector (with payload)", payload["tiny_vector_p50_ms_c1"], payload["tiny_vector_qps_c32"]),
            ("prism vector (no payload)", payload["tiny_vector_nopayload_p50_ms_c1"],
             payload["tiny_vector_nopayload_qps_c32"]),
            ("prism text (MiniLM per query)", payload["tiny_text_p50_ms_c1"], payload["tiny_text_qps_c32"])]
    lines = ["| what | p50 ms c=1 | QPS c=32 |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append(f"\nRatios to the floor: p50 {payload['ratio_p50_c1']}x, QPS {payload['ratio_qps_c32']}x "
                 f"({payload['targets']}).")
    return "\n".join(lines)
