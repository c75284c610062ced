"""gRPC beside HTTP: the same queries through both front doors (`python -m deploy.bench --only grpc`).

One `prism up` with deploy/demo.yaml (milvus-lite, 2 shards, HNSW) holding the 64-product catalog, its HTTP port
(HAProxy in front of Serve's proxy, the default) and its gRPC port (Serve's gRPC proxy) both open. Vector queries
(384-d, top 5, payloads, cache off) and text queries (distinct texts, MiniLM per query, cache off) at c=1 (p50) and
c=8 (QPS). Rounds alternate which protocol goes first, so both share one process, one collection and the same
warm caches; the medians of the rounds are reported. Both clients are asyncio (httpx / grpc.aio) in this process
and build their requests before the clock starts. Writes docs/bench/grpc.json.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deploy.benchlib import catalog_text_query, catalog_vector_query, http_load

ROOT = Path(__file__).resolve().parent.parent
ROUNDS, C1_QUERIES, C8_QUERIES = 4, 200, 480
QUERY = "/v1/collections/products/query"


async def grpc_load(target: str, concurrency: int, total: int, body: Callable[[int], dict]
                    ) -> tuple[list[float], float, int]:
    """`total` Search.Query calls of `body(i)`, `concurrency` at a time: (latencies ms, requests/s, errors)."""
    import grpc
    from google.protobuf import json_format

    from cluster.client import query_proto_dict
    from cluster.proto.prism.v1 import prism_pb2 as pb, prism_pb2_grpc as pbg

    msgs = [json_format.ParseDict(query_proto_dict(body(i), "products"), pb.QueryRequest()) for i in range(total)]
    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pbg.SearchStub(channel)

        async def one(i: int) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                try:
                    await stub.Query(msgs[i], timeout=120)
                except grpc.aio.AioRpcError:
                    errors += 1
                lat.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        return lat, total / (time.perf_counter() - t0), errors


def _measure(url: str, target: str, protocol: str, body: Callable[[int], dict], offset: int) -> dict:

    def load(c: int, n: int):
        shifted = lambda i: body(offset + i)  # noqa: E731 - distinct queries in every round and protocol
        if protocol == "grpc":
            return asyncio.run(grpc_load(target, c, n, shifted))
        return asyncio.run(http_load(url, c, n, shifted, QUERY))

    lat1, _, e1 = load(1, C1_QUERIES)
    _, qps8, e8 = load(8, C8_QUERIES)
    return {"p50_ms_c1": round(float(np.percentile(lat1, 50)), 3), "qps_c8": round(qps8, 1), "errors": e1 + e8}


def run(workdir: Path) -> dict:
    import httpx

    from cluster.cli import bootstrap
    from cluster.config import load_config
    from cluster.services import free_port

    workdir.mkdir(parents=True, exist_ok=True)
    port, grpc_port = free_port(), free_port()
    cfg = load_config(ROOT / "deploy" / "demo.yaml", port=port, grpc_port=grpc_port, data_dir=str(workdir / "prism"))
    url, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    import json

    kinds = {"vector": catalog_vector_query, "text": catalog_text_query}
    rounds: list[dict] = []
    try:
        bootstrap.start_detached(cfg, config_file=str(ROOT / "deploy" / "demo.yaml"))
        rows = [json.loads(line) for line in (ROOT / "deploy" / "data" / "catalog.jsonl").read_text().splitlines()]
        points = [{"id": r["id"], "payload": {k: v for k, v in r.items() if k != "id"}} for r in rows]
        httpx.post(f"{url}/v1/collections/products/points", json={"points": points}, timeout=300).raise_for_status()
        for body in kinds.values():  # warm-up, both doors
            asyncio.run(http_load(url, 4, 40, body, QUERY))
            asyncio.run(grpc_load(target, 4, 40, body))
        offset = 1_000
        for r in range(ROUNDS):
            row: dict = {}
            for kind, body in kinds.items():
                for protocol in (("grpc", "http") if r % 2 == 0 else ("http", "grpc")):
                    m = _measure(url, target, protocol, body, offset)
                    offset += C1_QUERIES + C8_QUERIES
                    assert m["errors"] == 0, f"{m['errors']} errors: {kind} over {protocol}"
                    row[f"{kind}_p50_ms_c1_{protocol}"] = m["p50_ms_c1"]
                    row[f"{kind}_qps_c8_{protocol}"] = m["qps_c8"]
            rounds.append(row)
            print(f"[grpc] round {r + 1}: {row}", flush=True)
    finally:
        bootstrap.stop_instance(cfg.data_path)
    med = {k: round(statistics.median(r[k] for r in rounds), 3 if "p50" in k else 1) for k in rounds[0]}
    res: dict = {
        # The keys: vector queries; the text-query twins carry a text_ prefix.
        "p50_ms_c1_grpc": med["vector_p50_ms_c1_grpc"], "p50_ms_c1_http": med["vector_p50_ms_c1_http"],
        "qps_c8_grpc": med["vector_qps_c8_grpc"], "qps_c8_http": med["vector_qps_c8_http"],
        "text_p50_ms_c1_grpc": med["text_p50_ms_c1_grpc"], "text_p50_ms_c1_http": med["text_p50_ms_c1_http"],
        "text_qps_c8_grpc": med["text_qps_c8_grpc"], "text_qps_c8_http": med["text_qps_c8_http"],
        "rounds": rounds,
    }
    for kind in ("", "text_"):
        res[f"{kind}ratio_p50_c1"] = round(res[f"{kind}p50_ms_c1_grpc"] / res[f"{kind}p50_ms_c1_http"], 3)
        res[f"{kind}ratio_qps_c8"] = round(res[f"{kind}qps_c8_grpc"] / res[f"{kind}qps_c8_http"], 3)
    print(f"[grpc] {res}", flush=True)
    return res


def table(payload: dict) -> str:
    lines = ["| query | p50 ms c=1, HTTP | p50 ms c=1, gRPC | gRPC/HTTP | QPS c=8, HTTP | QPS c=8, gRPC | gRPC/HTTP |",
             "|---|---|---|---|---|---|---|"]
    for label, k in (("vector (384-d, top 5)", ""), ("text (MiniLM per query)", "text_")):
        lines.append(f"| {label} | {payload[f'{k}p50_ms_c1_http']} | {payload[f'{k}p50_ms_c1_grpc']} | "
                     f"{payload[f'{k}ratio_p50_c1']} | {payload[f'{k}qps_c8_http']} | {payload[f'{k}qps_c8_grpc']} | "
                     f"{payload[f'{k}ratio_qps_c8']} |")
    spread = [r["vector_p50_ms_c1_grpc"] - r["vector_p50_ms_c1_http"] for r in payload["rounds"]]
    lines.append(f"\nMedians of {len(payload['rounds'])} rounds; per round, the vector query's gRPC minus HTTP p50 "
                 f"ranged {min(spread):+.2f} to {max(spread):+.2f} ms. Both doors run the same guard and service code "
                 "(router/serving/grpc_api.py converts the messages); HTTP goes through HAProxy straight to the ingress "
                 "replica, gRPC through Serve's gRPC proxy. This machine's c=1 latencies move by several ms between "
                 "rounds of the same protocol: the two doors cost the same within that noise.")
    return "\n".join(lines)
