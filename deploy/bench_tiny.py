"""The sample catalog over HTTP beside the framework's floor (`python -m deploy.bench --only tiny`).

Floor: a trivial Ray Serve app of the same shape as prism (FastAPI ingress, one no-op call per shard actor, the
same shard count, 2). prism: `prism up` with deploy/demo.yaml (milvus-lite, 2 shards, HNSW) holding the
64-product catalog. Both measured in the same run behind each HTTP ingress (HAProxy, prism's default, and Serve's
Python proxy): vector-only and text queries (distinct texts, cache off) at c=1 (p50) and c=32 (QPS); plus the
vector query with its page hydrated in a second round trip (`inline_payload_max: 0`) against payloads returned
with the search. Writes docs/bench/tiny.json.
"""
# No `from __future__ import annotations` here: the floor's endpoint is pickled into its Serve replica by value,
# and a string annotation ("Request") does not survive that, so FastAPI took `request` for a query parameter and
# every floor request answered 422 (how the first floor numbers were taken). Real annotations travel with it.
import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi import Request

from deploy.benchlib import catalog_text_query, catalog_vector_query, cpu_per_request, cpu_ticks, http_load

SHARDS = 2
ROOT = Path(__file__).resolve().parent.parent
QUERY = "/v1/collections/products/query"


def _measure(url: str, body: Callable[[int], dict]) -> dict:

    asyncio.run(http_load(url, 4, 40, body, QUERY))  # warm-up
    lat1, _, e1 = asyncio.run(http_load(url, 1, 200, body, QUERY))
    _, qps32, e32 = asyncio.run(http_load(url, 32, 960, body, QUERY))
    return {"p50_ms_c1": round(float(np.percentile(lat1, 50)), 2), "qps_c32": round(qps32, 1), "errors": e1 + e32}


def breakdown(url: str) -> dict:
    """Where a vector query's time goes (`debug: true` stages, median) at c=1 and c=32, and the CPU each Ray
    process spends per request at c=1 (from /proc): the stack's own cost, stage by stage."""

    out: dict = {}
    for c, total in ((1, 200), (32, 960)):
        laps: dict[str, list[float]] = {}

        def seen(answer: dict) -> None:
            for k, v in (answer.get("timings_ms") or {}).items():
                laps.setdefault(k, []).append(v)

        before = cpu_ticks()
        lat, _, errors = asyncio.run(http_load(url, c, total, lambda i: {**catalog_vector_query(i), "debug": True},
                                               QUERY, seen))
        after = cpu_ticks()
        stages = {k: round(float(np.median(v)), 2) for k, v in laps.items()}
        http = round(float(np.percentile(lat, 50)), 2)
        out[f"c{c}"] = {"http_p50_ms": http, **stages, "outside_coordinator_ms": round(http - sum(stages.values()), 2),
                        "errors": errors}
        if c == 1:
            out["cpu_ms_per_request_c1"] = cpu_per_request(before, after, total)
    return out


def floor(ingress: str) -> dict:
    """The same shape with nothing inside: what Ray Serve + FastAPI + one actor call per shard cost here, behind
    the same HTTP ingress as prism (HAProxy or Serve's Python proxy)."""
    import os

    import ray
    from fastapi import FastAPI
    from ray import serve

    from cluster.config import ClusterConfig
    from cluster.services import free_port, side_port
    from cluster.cli.bootstrap import ingress_environment

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

        @api.get("/health")
        async def health(self) -> dict:
            return {"status": "ok"}

    port = free_port()
    env, _ = ingress_environment(ClusterConfig(ingress=ingress), side_port)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="floor")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Floor.bind(SHARDS), name="floor", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        _wait_routed(url)
        return _measure(url, catalog_vector_query)
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _wait_routed(url: str, timeout_s: float = 60.0) -> None:
    """HAProxy learns the routes a moment after serve.run returns: wait until /health answers through it."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # poll
    raise RuntimeError(f"{url} did not route within {timeout_s:.0f}s")


def prism(workdir: Path, ingress: str, overrides: dict | None = None,
          bodies: tuple[str, ...] = ("vector", "vector_nopayload", "text"), explain: bool = True) -> dict:
    import httpx
    import yaml

    from cluster.cli import bootstrap
    from cluster.config import load_config
    from cluster.services import free_port, side_port

    port = free_port()
    config_file = ROOT / "deploy" / "demo.yaml"
    if overrides:  # the detached `prism up` reads its config from a file
        data = yaml.safe_load(config_file.read_text())
        config_file = workdir / "demo-variant.yaml"
        workdir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump({**data, **overrides}))
    cfg = load_config(config_file, port=port, grpc_port=side_port(), ingress=ingress,
                      data_dir=str(workdir / f"prism-{ingress}"))
    try:
        bootstrap.start_detached(cfg, config_file=str(config_file))
        url = f"http://127.0.0.1:{port}"
        rows = [json.loads(line) for line in (ROOT / "deploy" / "data" / "catalog.jsonl").read_text().splitlines()]
        points = [{"id": r["id"], "payload": {k: v for k, v in r.items() if k != "id"}} for r in rows]
        httpx.post(f"{url}/v1/collections/products/points", json={"points": points}, timeout=300).raise_for_status()
        make = {"vector": catalog_vector_query, "vector_nopayload": lambda i: catalog_vector_query(i, payload=False),
                "text": catalog_text_query}
        out = {}
        for name in bodies:
            for k, v in _measure(url, make[name]).items():
                out[f"{name}_{k}"] = v
        if explain:
            out["breakdown"] = breakdown(url)
        return out
    finally:
        bootstrap.stop_instance(cfg.data_path)


def run(workdir: Path) -> dict:
    res: dict = {}
    for ingress, tag in (("haproxy", ""), ("proxy", "proxy_")):  # *_errors must be 0: a refused request is cheap
        for k, v in floor(ingress).items():
            res[f"floor_{tag}{k}"] = v
        for k, v in prism(workdir / tag.strip("_") if tag else workdir, ingress).items():
            res[f"tiny_{tag}{k}"] = v
    # Payloads with the search (the default for small pages) against hydrating the page in a second call.
    for k, v in prism(workdir / "hydrate", "haproxy", {"inline_payload_max": 0}, ("vector",), explain=False).items():
        res[f"tiny_hydrate_{k}"] = v
    # The encoder's dynamic batching without its 4 ms wait for a batch to fill (batches still form while one runs).
    for k, v in prism(workdir / "nowait", "haproxy", {"encoder_batch_wait_ms": 0}, ("text",), explain=False).items():
        res[f"tiny_nowait_{k}"] = v
    res["ratio_p50_c1"] = round(res["tiny_vector_p50_ms_c1"] / res["floor_p50_ms_c1"], 2)
    res["ratio_qps_c32"] = round(res["tiny_vector_qps_c32"] / res["floor_qps_c32"], 2)
    res["ratio_p50_c1_proxy"] = round(res["tiny_proxy_vector_p50_ms_c1"] / res["floor_proxy_p50_ms_c1"], 2)
    res["ratio_qps_c32_proxy"] = round(res["tiny_proxy_vector_qps_c32"] / res["floor_proxy_qps_c32"], 2)
    res["targets"] = "vector-only p50 at c=1 <= 1.3x the floor's; QPS at c=32 >= 0.75x the floor's"
    print(f"[tiny] {res}", flush=True)
    return res


def table(payload: dict) -> str:
    lines = ["| what | ingress | p50 ms c=1 | QPS c=32 |", "|---|---|---|---|"]
    for ingress, tag in (("HAProxy", ""), ("Python proxy", "proxy_")):
        if f"floor_{tag}p50_ms_c1" not in payload:
            continue
        rows = [("floor (no-op Serve app, 2 actors)", f"floor_{tag}"),
                ("prism vector (with payload)", f"tiny_{tag}vector_"),
                ("prism vector (no payload)", f"tiny_{tag}vector_nopayload_"),
                ("prism text (MiniLM per query)", f"tiny_{tag}text_")]
        if not tag:
            rows.insert(2, ("prism vector, payload hydrated in a 2nd call", "tiny_hydrate_vector_"))
            rows.append(("prism text, encoder batch wait 0 ms", "tiny_nowait_text_"))
        lines += [f"| {what} | {ingress} | {payload.get(k + 'p50_ms_c1', 'not run')} | "
                  f"{payload.get(k + 'qps_c32', 'not run')} |" for what, k in rows]
    lines.append(f"\nRatios to the floor behind the same ingress: HAProxy p50 {payload['ratio_p50_c1']}x, QPS "
                 f"{payload['ratio_qps_c32']}x; Python proxy p50 {payload.get('ratio_p50_c1_proxy', 'not run')}x, "
                 f"QPS {payload.get('ratio_qps_c32_proxy', 'not run')}x ({payload['targets']}).")
    for ingress, tag in (("HAProxy", ""), ("Python proxy", "proxy_")):
        b = payload.get(f"tiny_{tag}breakdown")
        if not b:
            continue
        stages = [k for k in b["c1"] if k not in ("http_p50_ms", "errors")]
        lines += ["", f"Where a vector query's time goes, behind {ingress} (median ms; `debug: true` stages; "
                  "outside = HTTP p50 minus the stages: client, ingress, Serve, JSON):", "",
                  "| clients | HTTP p50 | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
        for c in ("c1", "c32"):
            lines.append(f"| {c[1:]} | {b[c]['http_p50_ms']} | " + " | ".join(str(b[c].get(k, "")) for k in stages)
                         + " |")
        cpu = b.get("cpu_ms_per_request_c1", {})
        lines += ["", "CPU per request at c=1, by process (ms): " + ", ".join(f"{k} {v}" for k, v in cpu.items())
                  + f" (total {round(sum(cpu.values()), 2)})."]
    return "\n".join(lines)
