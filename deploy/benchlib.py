"""What the benchmarks share: machine facts, percentiles, load generators, CPU accounting, bulk loading and the
docs/bench/*.json writer. Imports no bench_* module and is imported by all of them (deploy.bench only dispatches).
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cluster.ring import HashRing
from shards.api import PointRow


DOCS = Path(__file__).resolve().parent.parent / "docs"


def machine() -> dict:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "ram_gib": round(mem_gib, 1), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def write_json(name: str, payload: dict) -> None:
    (DOCS / "bench").mkdir(parents=True, exist_ok=True)
    (DOCS / "bench" / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


def keep_other_runs(name: str, runs: list[dict], key) -> list[dict]:
    """`runs` plus the runs of docs/bench/NAME.json that `runs` does not redo (by `key(run)`): a partial re-run
    (one backend, one fault) does not erase the others' rows."""
    path = DOCS / "bench" / f"{name}.json"
    old = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    done = {key(r) for r in runs}
    return runs + [r for r in old if key(r) not in done]


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


def load_points(shards, ring: HashRing, vecs: dict[str, np.ndarray], batch: int = 2000, start: int = 0) -> float:
    """Bulk load straight into the shards (routing by the same ring); returns seconds. Row i gets id
    p{start + i}, so a second call with `start` adds points instead of overwriting the first call's."""
    n = len(next(iter(vecs.values())))
    by_shard: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        by_shard[int(ring.get(f"p{start + i}"))].append(i)
    t0 = time.perf_counter()

    def load_one(s: int) -> None:
        idx = by_shard[s]
        for start in range(0, len(idx), batch):
            chunk = idx[start : start + batch]
            pts = [PointRow(id=f"p{start + i}", payload={"n": start + i}, vectors={sp: vecs[sp][i].tolist() for sp in vecs})
                   for i in chunk]
            for c in shards[s]:
                c.target.upsert(pts, wait=False)  # bulk: one visibility wait at the end, not one per batch
        for c in shards[s]:
            c.target.wait_visible()

    with ThreadPoolExecutor(len(shards)) as pool:
        list(pool.map(load_one, range(len(shards))))
    return time.perf_counter() - t0


def group_rss_mib(pgid: int) -> float:
    """Resident memory (MiB) of every process in group `pgid` (a service prism started: its pid is its group)."""
    total = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
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


def gib_per_million(points_small: int, rss_small_mib: float, points_large: int, rss_large_mib: float) -> float:
    """Memory per million points from the slope between two sizes of the same collection: what the extra points
    cost, so the server's fixed start-up memory (and anything else that does not grow with the data) cancels.
    One size scaled to a million would count that fixed memory once per 1/size of a million."""
    if points_large <= points_small:
        raise ValueError(f"sizes must grow: {points_small!r} then {points_large!r}")
    return (rss_large_mib - rss_small_mib) / 1024 / ((points_large - points_small) / 1_000_000)


async def indexed(svc, name: str) -> None:
    """Every replica's index of collection `name` (a PrismService's, shards in process) built and loaded."""
    for sh in svc.coordinator(name).shards:
        for c in sh.clients:
            wait = getattr(getattr(c, "target", None), "wait_indexed", None)
            if wait is not None:
                await asyncio.to_thread(wait)


def close_all(shards) -> None:
    for row in shards:
        for c in row:
            c.target.close()


async def run_concurrent(coord, reqs: list, concurrency: int) -> tuple[list[float], float]:
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


QUERY_TEXTS = [
    "lightweight running shoes", "waterproof jacket for hiking", "espresso machine with milk frother",
    "noise cancelling headphones", "a warm wool sweater", "cast iron pan", "tent for two people",
    "gift for a coffee lover", "bright red lipstick", "robot vacuum for pet hair", "yoga mat non slip",
    "kids rain boots", "portable speaker for the beach", "down sleeping bag", "mechanical keyboard",
]


def text_query(i: int, cache: bool = False) -> dict:
    return {"prefetch": [{"space": "text", "text": f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} {i}"}],
            "fusion": {"method": "none"}, "limit": 10, "with_payload": False, "cache": cache}


async def http_load(url: str, concurrency: int, total: int, body=text_query,
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


# The sample catalog's queries (deploy/data/catalog.jsonl behind deploy/demo.yaml): bench_tiny and bench_grpc.
def catalog_vector_query(i: int, payload: bool = True) -> dict:
    v = np.random.default_rng(i).standard_normal(384)
    return {"prefetch": [{"space": "text", "vector": (v / np.linalg.norm(v)).tolist()}], "fusion": {"method": "none"},
            "limit": 5, "cache": False, **({} if payload else {"with_payload": False})}


def catalog_text_query(i: int) -> dict:
    return {"prefetch": [{"space": "text", "text": f"something warm for a cold hike, take {i}"}],
            "fusion": {"method": "none"}, "limit": 5, "cache": False}
