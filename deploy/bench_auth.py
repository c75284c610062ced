"""What access control costs a query (`python -m deploy.bench --only auth`).

One `prism up` (milvus-lite, 2 shards, FLAT) with rate limits configured high enough never to bind, so the bucket
is taken in both modes. Rounds alternate auth off (no key anywhere: the guard checks the route and takes a bucket by
client address) and auth on (an admin key in the keys file, sent with every query: the hash is checked too); the
keys file is switched while prism runs, so both modes share one process, one collection and one warm cache of
everything. Beside it, the guard alone in this process (microseconds per check). Writes docs/bench/auth.json.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

from deploy.benchlib import http_load

DIM, N, ROUNDS, QUERIES = 64, 2000, 6, 200
PATH = "/v1/collections/bench/query"


def _body(i: int) -> dict:
    v = np.random.default_rng(10_000 + i).standard_normal(DIM)
    return {"prefetch": [{"space": "v", "vector": (v / np.linalg.norm(v)).tolist()}], "fusion": {"method": "none"},
            "limit": 10, "with_payload": False, "cache": False}


def _wait(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the keys file change was not picked up")
        time.sleep(0.05)


def guard_us() -> dict:
    """Microseconds per Guard.check in this process: auth off vs on (a key verified), rate limit taken in both."""
    from cluster.auth import KeySource, new_key
    from router.serving.access import Guard

    key, rec = new_key("admin")
    out = {}
    for mode, records, headers in (("off", [], []), ("on", [rec], [(b"authorization", f"Bearer {key}".encode())])):
        g = Guard(KeySource(records, None, environ={}), read_per_s=1e9)
        t0 = time.perf_counter()
        for _ in range(20_000):
            g.check("POST", PATH, headers, "127.0.0.1")
        out[f"guard_us_{mode}"] = round((time.perf_counter() - t0) / 20_000 * 1e6, 2)
    return out


def run(workdir: Path) -> dict:
    import httpx
    import yaml

    from cluster.auth import keys_path, new_key, write_keys_file
    from cluster.cli import bootstrap
    from cluster.config import load_config
    from cluster.services import free_port, side_port

    workdir.mkdir(parents=True, exist_ok=True)
    cfg_file = workdir / "auth.yaml"
    cfg_file.write_text(yaml.safe_dump({"elasticsearch": {"mode": "off"},
                                        "auth": {"rate_limits": {"read_per_s": 1e6, "write_per_s": 1e6}}}))
    port = free_port()
    cfg = load_config(cfg_file, port=port, grpc_port=side_port(), data_dir=str(workdir / "prism"))
    url = f"http://127.0.0.1:{port}"
    key, record = new_key("admin")
    keys = keys_path(cfg.data_path)
    try:
        bootstrap.start_detached(cfg, config_file=str(cfg_file))
        c = httpx.Client(base_url=url, timeout=300)
        c.put("/v1/collections/bench", json={"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}},
                                             "shards": 2}).raise_for_status()
        rng = np.random.default_rng(1)
        vecs = rng.standard_normal((N, DIM))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for start in range(0, N, 500):
            c.post("/v1/collections/bench/points", json={"points": [
                {"id": f"p{i}", "vectors": {"v": vecs[i].tolist()}} for i in range(start, start + 500)]}
            ).raise_for_status()
        asyncio.run(http_load(url, 4, 100, _body, PATH))  # warm-up
        rounds = []
        for r in range(ROUNDS):
            row = {}
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):  # alternate which goes first
                if mode == "on":
                    write_keys_file(keys, [record])
                    _wait(lambda: c.get("/v1/collections").status_code == 401)
                    headers = {"Authorization": f"Bearer {key}"}
                else:
                    keys.unlink(missing_ok=True)
                    _wait(lambda: c.get("/v1/collections").status_code == 200)
                    headers = None
                lat, _, errors = asyncio.run(http_load(url, 1, QUERIES, _body, PATH, headers=headers))
                assert errors == 0, f"{errors} errors with auth {mode}"
                row[f"p50_ms_{mode}"] = round(float(np.percentile(lat, 50)), 3)
            rounds.append(row)
        c.close()
    finally:
        bootstrap.stop_instance(cfg.data_path)
    off = statistics.median(r["p50_ms_off"] for r in rounds)
    on = statistics.median(r["p50_ms_on"] for r in rounds)
    res = {"p50_ms_c1_auth_off": round(off, 3), "p50_ms_c1_auth_on": round(on, 3), "diff_ms": round(on - off, 3),
           "rounds": rounds, **guard_us(), "target": "auth + rate limit add <= 1 ms to a vector query's p50 (c=1)"}
    print(f"[auth] {res}", flush=True)
    return res


def table(payload: dict) -> str:
    lines = ["| round | p50 ms, auth off | p50 ms, auth on |", "|---|---|---|"]
    lines += [f"| {i + 1} | {r['p50_ms_off']} | {r['p50_ms_on']} |" for i, r in enumerate(payload["rounds"])]
    lines.append(f"| median | {payload['p50_ms_c1_auth_off']} | {payload['p50_ms_c1_auth_on']} |")
    lines.append(f"\nDifference of the medians: {payload['diff_ms']} ms ({payload['target']}). The guard alone, in "
                 f"one process: {payload['guard_us_off']} us per request with auth off, {payload['guard_us_on']} us "
                 "with a key verified (route policy, sha256 of the key, token bucket).")
    diffs = [r["p50_ms_on"] - r["p50_ms_off"] for r in payload["rounds"]]
    lines.append(f"Per round, on minus off ranged {min(diffs):+.2f} to {max(diffs):+.2f} ms: this machine's noise between "
                 "rounds of the same mode is larger than what the guard costs.")
    return "\n".join(lines)
