"""The Qdrant-compatible API beside prism's own (`python -m deploy.bench --only qdrant`).

One `prism up` (milvus-lite, 2 shards, Elasticsearch off) holding one collection made through /qdrant: N points,
two named 128-d Cosine vectors (HNSW, Qdrant's defaults m=16, ef_construct=100), a small payload. The same queries
go to `/qdrant/.../points/query` (Qdrant's shape) and to `/v1/.../query` (prism's) on that collection: a nearest
query (top 10, payloads) and a prefetch + RRF query (two prefetches of 20, top 10, payloads); distinct query
vectors everywhere (no result-cache hit), cache settings left at their defaults on both sides, one asyncio httpx
client in this process for both, so the difference is the server's. This machine is shared and its load moves by
more than the difference measured, so the APIs are interleaved: at c=1 query by query (p50 of each), at c=8 in
alternating blocks (QPS of each, and the ingress replica's CPU per request from /proc). Ratios are per round
(Qdrant API / prism's API for p50, prism's / Qdrant's for QPS: above 1 means the Qdrant API is slower), reported
as the median of the rounds with their range. Writes docs/bench/qdrant.json.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

N, DIM, SHARDS, ROUNDS = 20_000, 128, 2, 5
C1_PAIRS, C8_BLOCKS, C8_BLOCK = 100, 4, 80  # per round and query kind
QDRANT = "/qdrant/collections/bench/points/query"
NATIVE = "/v1/collections/bench/query"
TARGET = "the Qdrant API's p50 (c=1) and QPS (c=8) within 1.1x of prism's own API on the same queries"


def _vec(i: int, salt: int) -> list[float]:
    return np.random.default_rng(salt * 1_000_003 + i).standard_normal(DIM).tolist()


def _nearest(api: str) -> Callable[[int], dict]:
    if api == "qdrant":
        return lambda i: {"query": _vec(i, 1), "using": "a", "limit": 10, "with_payload": True}
    return lambda i: {"prefetch": [{"space": "a", "vector": _vec(i, 1)}], "fusion": {"method": "none"}, "limit": 10,
                      "with_payload": True}


def _fused(api: str) -> Callable[[int], dict]:
    if api == "qdrant":
        return lambda i: {"prefetch": [{"query": _vec(i, 2), "using": "a", "limit": 20},
                                       {"query": _vec(i, 3), "using": "b", "limit": 20}],
                          "query": {"fusion": "rrf"}, "limit": 10, "with_payload": True}
    return lambda i: {"prefetch": [{"space": "a", "vector": _vec(i, 2), "limit": 20},
                                   {"space": "b", "vector": _vec(i, 3), "limit": 20}],
                      "fusion": {"method": "rrf"}, "limit": 10, "with_payload": True}


KINDS = {"nearest": _nearest, "rrf": _fused}


async def _paired_c1(url: str, kind: str, start: int, pairs: int) -> dict[str, list[float]]:
    """c=1, the two APIs interleaved query by query (the order flipping every pair): both see the same load."""
    import httpx

    lat: dict[str, list[float]] = {"qdrant": [], "native": []}
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        for i in range(pairs):
            for api in (("qdrant", "native") if i % 2 == 0 else ("native", "qdrant")):
                body = KINDS[kind](api)(start + i)
                t = time.perf_counter()
                r = await c.post(QDRANT if api == "qdrant" else NATIVE, json=body)
                lat[api].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (api, kind, r.text[:300])
    return lat


def _blocks_c8(url: str, kind: str, start: int, order: tuple[str, str]) -> dict[str, dict[str, float]]:
    """c=8 in alternating blocks; requests/s and the ingress replica's CPU ms per request (from /proc), per API."""
    from deploy.benchlib import cpu_ticks, http_load

    out: dict[str, dict[str, float]] = {api: {"seconds": 0.0, "requests": 0, "ingress_cpu_ticks": 0} for api in order}
    for b in range(C8_BLOCKS):
        for api in (order if b % 2 == 0 else order[::-1]):
            body = KINDS[kind](api)
            before = cpu_ticks()
            t = time.perf_counter()
            _, _, errors = asyncio.run(http_load(url, 8, C8_BLOCK, lambda i: body(start + i),
                                                 QDRANT if api == "qdrant" else NATIVE))
            out[api]["seconds"] += time.perf_counter() - t
            after = cpu_ticks()
            assert errors == 0, f"{errors} errors: {kind} through the {api} API"
            out[api]["requests"] += C8_BLOCK
            out[api]["ingress_cpu_ticks"] += after.get("Ingress", 0) - before.get("Ingress", 0)
            start += C8_BLOCK
    hz = os.sysconf("SC_CLK_TCK")
    return {api: {"qps": round(o["requests"] / o["seconds"], 1),
                  "ingress_cpu_ms": round(o["ingress_cpu_ticks"] / hz * 1000 / o["requests"], 2)}
            for api, o in out.items()}


def run(workdir: Path) -> dict:
    import httpx
    import yaml

    from cluster.cli import bootstrap
    from cluster.config import load_config
    from cluster.services import free_port, side_port
    from deploy.benchlib import http_load

    workdir.mkdir(parents=True, exist_ok=True)
    cfg_file = workdir / "qdrant.yaml"
    cfg_file.write_text(yaml.safe_dump({"elasticsearch": {"mode": "off"}}))
    port = free_port()
    cfg = load_config(cfg_file, port=port, grpc_port=side_port(), data_dir=str(workdir / "prism"))
    url = f"http://127.0.0.1:{port}"
    rounds: list[dict] = []
    try:
        bootstrap.start_detached(cfg, config_file=str(cfg_file))
        c = httpx.Client(base_url=url, timeout=600)
        c.put("/qdrant/collections/bench", json={"vectors": {
            "a": {"size": DIM, "distance": "Cosine"}, "b": {"size": DIM, "distance": "Cosine"}},
            "shard_number": SHARDS}).raise_for_status()
        rng = np.random.default_rng(0)
        for start in range(0, N, 1000):
            vecs = rng.standard_normal((2, 1000, DIM)).round(5)
            c.put("/qdrant/collections/bench/points?wait=true", json={"batch": {
                "ids": list(range(start, start + 1000)), "vectors": {"a": vecs[0].tolist(), "b": vecs[1].tolist()},
                "payloads": [{"n": i, "color": ("red", "green", "blue")[i % 3]} for i in range(start, start + 1000)]}}
                  ).raise_for_status()
        for kind in KINDS:  # warm-up, both APIs
            for api, path in (("qdrant", QDRANT), ("native", NATIVE)):
                asyncio.run(http_load(url, 4, 60, lambda i, k=kind, a=api: KINDS[k](a)(10**7 + i), path))
        offset = 0
        for r in range(ROUNDS):
            row: dict = {}
            for kind in KINDS:
                lat = asyncio.run(_paired_c1(url, kind, offset, C1_PAIRS))
                offset += C1_PAIRS
                c8 = _blocks_c8(url, kind, offset, ("qdrant", "native") if r % 2 == 0 else ("native", "qdrant"))
                offset += 2 * C8_BLOCKS * C8_BLOCK
                for api in ("qdrant", "native"):
                    row[f"{kind}_p50_ms_c1_{api}"] = round(float(np.percentile(lat[api], 50)), 3)
                    row[f"{kind}_qps_c8_{api}"] = c8[api]["qps"]
                    row[f"{kind}_ingress_cpu_ms_{api}"] = c8[api]["ingress_cpu_ms"]
                row[f"{kind}_ratio_p50_c1"] = round(row[f"{kind}_p50_ms_c1_qdrant"] / row[f"{kind}_p50_ms_c1_native"], 3)
                row[f"{kind}_ratio_qps_c8"] = round(row[f"{kind}_qps_c8_native"] / row[f"{kind}_qps_c8_qdrant"], 3)
            rounds.append(row)
            print(f"[qdrant] round {r + 1}: {row}", flush=True)
        c.close()
    finally:
        bootstrap.stop_instance(cfg.data_path)
    res: dict = {"points": N, "dim": DIM, "shards": SHARDS, "target": TARGET, "rounds": rounds}
    for key in rounds[0]:
        values = [row[key] for row in rounds]
        res[key] = round(statistics.median(values), 1 if "qps" in key and "ratio" not in key else 3)
        if "ratio" in key:
            res[f"{key}_spread"] = [min(values), max(values)]
    print(f"[qdrant] { {k: v for k, v in res.items() if k != 'rounds'} }", flush=True)
    return res


def table(payload: dict) -> str:
    lines = ["| query | p50 ms c=1, prism API | p50 ms c=1, Qdrant API | ratio (range) | QPS c=8, prism API | "
             "QPS c=8, Qdrant API | ratio (range) | ingress CPU ms/request, prism / Qdrant API |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, label in (("nearest", "nearest (top 10, payloads)"),
                        ("rrf", "2 prefetches of 20 + RRF (top 10, payloads)")):
        p, q = payload[f"{kind}_ratio_p50_c1_spread"], payload[f"{kind}_ratio_qps_c8_spread"]
        lines.append(f"| {label} | {payload[f'{kind}_p50_ms_c1_native']} | {payload[f'{kind}_p50_ms_c1_qdrant']} | "
                     f"{payload[f'{kind}_ratio_p50_c1']} ({p[0]}-{p[1]}) | {payload[f'{kind}_qps_c8_native']} | "
                     f"{payload[f'{kind}_qps_c8_qdrant']} | {payload[f'{kind}_ratio_qps_c8']} ({q[0]}-{q[1]}) | "
                     f"{payload[f'{kind}_ingress_cpu_ms_native']} / {payload[f'{kind}_ingress_cpu_ms_qdrant']} |")
    lines.append(f"\nMedians of {len(payload['rounds'])} rounds; a ratio is taken per round (Qdrant API / prism API for "
                 "p50, prism API / Qdrant API for QPS: above 1, the Qdrant API is slower) and shown with its range. "
                 f"Target: {payload['target']}. A nearest query is one prism query either way; a fused query through "
                 "/qdrant runs its prefetches as one prism query and fuses their lists with Qdrant's arithmetic.")
    return "\n".join(lines)
