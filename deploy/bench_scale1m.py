"""A million points, once (`--only scale1m`, issue 29): 1,000,000 x 384 points (a Gaussian mixture, made in
chunks so the bench never holds them all) into a collection of 4 shards on the bundled Milvus server, through the
product's own path (router.collection.service.PrismService in process), once per index type (HNSW, IVF_SQ8), each on
a fresh server.

Per index: `load_s` (the upserts), `index_s` (waiting, after the upserts, until every replica's index covers every
row: at the small size and at the full one, summed), `p50_ms_c1` and `qps_c8` (deploy.benchlib.run_concurrent over
the coordinator), `recall_at_10` on the queries against exact search (numpy, over the same points as they are
made), and `gib_per_million`: the slope of the server's RSS (its process group) between `small` points and all
`n`, (rss_n - rss_small) / (n - small), so its start-up memory cancels (deploy.benchlib.gib_per_million).

Sizes are parameters (`--scale1m-n`, `--scale1m-small`); docs/bench/scale1m.json is the lead's full-size run (about
an hour on 2 cores).
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

from deploy.benchlib import gib_per_million, group_rss_mib, indexed, pct, run_concurrent
from deploy.datasets import gaussian_mixture_chunks, query_vectors

DIM, SHARDS, SEED, K = 384, 4, 41, 10
INDEXES = ("HNSW", "IVF_SQ8")  # both in cluster.collection_spec.CPU_INDEX_TYPES (Milvus 2.3 server and lite)
BATCH = 1000   # points per upsert request
CHUNK = 50_000  # points made at a time
SHARD_TIMEOUT_S = 30.0  # a bulk load's setting: the 2.3 server on 2 cores stalls writes > 10 s (the default) at times


class ExactTop:
    """The exact top-K (cosine: rows are unit vectors) of each query over rows seen chunk by chunk, by row number."""

    def __init__(self, queries: np.ndarray, k: int = K):
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.rows = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, start: int, x: np.ndarray) -> None:
        s = self.q @ x.T
        top = np.argpartition(-s, min(self.k, s.shape[1] - 1), axis=1)[:, : self.k]
        scores = np.concatenate([self.scores, np.take_along_axis(s, top, axis=1)], axis=1)
        rows = np.concatenate([self.rows, top + start], axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        self.scores, self.rows = np.take_along_axis(scores, best, axis=1), np.take_along_axis(rows, best, axis=1)

    def ids(self) -> list[set[str]]:
        return [{f"p{j}" for j in row if j >= 0} for row in self.rows]


def requests(qs: np.ndarray) -> list:
    from router.schema.query import QueryRequest

    return [QueryRequest.model_validate({"prefetch": [{"space": "v", "vector": q.tolist(), "limit": K}],
                                         "fusion": {"method": "none"}, "limit": K, "with_payload": False,
                                         "cache": False}) for q in qs]


async def heal_now(svc, name: str) -> None:
    """What the router's heal loop does (this bench runs the service in process, without one): probe the replicas
    a failed write marked down now, and replay what they missed."""
    for sh in svc.coordinator(name).shards:
        await sh.heal(probe_now=True)


async def upsert_retrying(svc, name: str, body: dict, tries: int = 6, pause=asyncio.sleep, recover=heal_now) -> int:
    """One upsert; a write the shards did not acknowledge in time (ShardUnavailable: "retrying it is safe", the
    journal has it) is sent again, as a loader does, after a backoff of 2, 4, 8, 16, 30 s and a heal pass, at most
    `tries` times. Returns the retries it took, reported: on 2 cores the 2.3 server stalled writes past
    shard_timeout_s while it built IVF_SQ8 indexes after 250k points."""
    from cluster.errors import ShardUnavailable

    for attempt in range(tries):
        try:
            await svc.upsert(name, body)
            return attempt
        except ShardUnavailable:
            if attempt == tries - 1:
                raise
            await pause(min(30.0, 2.0 ** (attempt + 1)))  # a loader's backoff in real time, not synchronisation
            await recover(svc, name)
    return tries


async def one_index(svc, pgid: int, index: str, n: int, small: int, qs: np.ndarray, exact: ExactTop | None,
                    settle_s: float, chunk: int) -> dict:
    """Load, index and measure one collection; `exact` (when given) sees every chunk as it is loaded."""
    name = f"scale1m_{index.lower()}"
    await svc.create_collection(name, {"spaces": {"v": {"dim": DIM, "metric": "cosine", "index": {"type": index}}},
                                       "shards": SHARDS})
    marks, rss, load_s, index_s, retries = sorted({small, n}), {}, 0.0, 0.0, 0
    for start, x in gaussian_mixture_chunks(n, DIM, seed=SEED, chunk=chunk):
        if exact is not None:
            exact.add(start, x)
        lo = 0
        while lo < len(x):  # a chunk may straddle a mark: load up to it, read memory, go on
            mark = next(m for m in marks if m > start + lo)
            hi = min(len(x), mark - start)
            t0 = time.perf_counter()
            for i in range(lo, hi, BATCH):
                retries += await upsert_retrying(svc, name, {"points": [{"id": f"p{start + j}",
                                                                         "vectors": {"v": x[j].tolist()}}
                                                                        for j in range(i, min(i + BATCH, hi))]})
            load_s += time.perf_counter() - t0
            lo = hi
            if start + hi == mark:
                t0 = time.perf_counter()
                await indexed(svc, name)
                index_s += time.perf_counter() - t0
                await asyncio.sleep(settle_s)  # not synchronisation: lets the server's memory settle before a read
                rss[mark] = group_rss_mib(pgid)
                print(f"[scale1m] {index}: {mark:,} points loaded and indexed, server RSS {rss[mark]:.0f} MiB",
                      flush=True)
    coord = svc.coordinator(name)
    reqs = requests(qs)
    await run_concurrent(coord, reqs[:5], 1)  # warm-up
    lat1, _ = await run_concurrent(coord, reqs, 1)
    _, qps8 = await run_concurrent(coord, reqs, 8)
    got = [await coord.query(r) for r in reqs]
    await svc.delete_collection(name)
    return {"load_s": round(load_s, 1), "index_s": round(index_s, 1), "write_retries": retries, "p50_ms_c1": round(pct(lat1, 50), 2),
            "qps_c8": round(qps8, 1), "got": got, "rss_small_mib": round(rss[small]), "rss_mib": round(rss[n]),
            "gib_per_million": round(gib_per_million(small, rss[small], n, rss[n]), 3)}


def run(workdir: Path, n: int = 1_000_000, small: int = 250_000, n_queries: int = 200, indexes=INDEXES,
        settle_s: float = 5.0, chunk: int = CHUNK) -> dict:
    from cluster.config import ClusterConfig
    from cluster.services import start_milvus_server
    from router.collection.service import PrismService

    if not 0 < small < n:
        raise ValueError(f"--scale1m-small {small!r} must be between 0 and --scale1m-n {n!r}")
    qs = query_vectors(n_queries, DIM, seed=SEED + 1, base_seed=SEED)
    exact, truth, out = ExactTop(qs), None, {}
    for index in indexes:
        server = start_milvus_server(workdir / f"milvus-{index.lower()}")  # a fresh server: its RSS is this index's
        try:
            cfg = ClusterConfig(data_dir=str(workdir / f"data-{index.lower()}"), elasticsearch={"mode": "off"},
                                milvus={"mode": "server", "uri": server.uri}, shard_timeout_s=SHARD_TIMEOUT_S)
            svc = PrismService(cfg, server_uri=server.uri)
            try:
                r = asyncio.run(one_index(svc, server.pid, index, n, small, qs, exact if truth is None else None,
                                          settle_s, chunk))
            finally:
                svc.close()
        finally:
            server.stop()
        truth = truth or exact.ids()  # the points are the same for every index: exact search once
        got = r.pop("got")
        r["recall_at_10"] = round(statistics.mean(len({h.id for h in g.hits} & t) / K for g, t in zip(got, truth)), 4)
        r["shard_timeout_s"] = SHARD_TIMEOUT_S
        out[index] = r
        print(f"[scale1m] {index}: {r}", flush=True)
        (workdir / "scale1m-partial.json").write_text(json.dumps({"points": n, "indexes": out}, indent=1))  # a
        # long run stopped later still leaves each finished index's figures
    return {"points": n, "points_small": small, "dim": DIM, "shards": SHARDS, "queries": n_queries,
            "backend": "server", "indexes": out,
            "raw_float32_gib_per_million": round(DIM * 4 / 1024**3 * 1_000_000, 2)}


def table(data: dict) -> str:
    """docs/benchmarks.md's table: one row per index."""
    lines = ["| index | load s | index s | writes retried | p50 ms c=1 | QPS c=8 | recall@10 | GiB per million (slope) |",
             "|---|---|---|---|---|---|---|---|"]
    for index, r in data["indexes"].items():
        lines.append(f"| {index} | {r['load_s']} | {r['index_s']} | {r.get('write_retries', 'not counted')} | "
                     f"{r['p50_ms_c1']} | {r['qps_c8']} | {r['recall_at_10']} | {r['gib_per_million']} |")
    runs = "".join(f"\n- {index}: {how}" for index, how in data.get("runs", {}).items())
    return ("\n".join(lines) + f"\n\nRaw float32: {data['raw_float32_gib_per_million']} GiB per million. Search "
            "defaults: HNSW ef 64 (M 16, efConstruction 200 unless set), IVF_SQ8 nlist 128 and nprobe 16; shard_timeout_s "
            + ", ".join(f"{i} {r.get('shard_timeout_s', 10.0)} s"
                        for i, r in data["indexes"].items()) + "." + (f"\n\nRuns:{runs}" if runs else ""))
