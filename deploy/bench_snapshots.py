"""Snapshots and restore (`--only snapshots`, issue 32): through the product's own path
(router.collection.service.PrismService in process, 4 shards on the bundled Milvus server, the bundled
Elasticsearch API server holding the documents):

- ingest: N points (384-d, HNSW, a small payload) loaded with their vectors given, in batches of INGEST_BATCH
  (wait=true, as restore writes); the rate is over the writes, the wait for the indexes is shown apart;
- snapshot while a writer upserts existing ids at a steady rate (open loop: each write is due at its time whether
  the one before it has answered or not, and its latency runs from when it was due, so a pause is not hidden):
  the snapshot's seconds and points/s, the longest write pause it reports (each shard's longest hold of its write
  lock by the cut, router.replication.cut), and the writer's p99/max latency during the snapshot beside the same writer's before it;
- restore into a new collection (the writer stopped): points/s, against the ingest rate (the same write path).

Targets (issue 32): snapshot >= 20,000 points/s, write pause <= 100 ms, restore >= the ingest rate with vectors
given. The size is a parameter (`--snapshots-n`); docs/bench/snapshots.json is the 200,000-point run.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from deploy.benchlib import indexed, pct
from deploy.datasets import gaussian_mixture

DIM, SHARDS, CATEGORIES = 384, 4, 16
INGEST_BATCH = 1000
# The writer: points/s, points per upsert. Below what wait=true writes sustain here: each waits until its write is
# visible (a Strong read, ~0.3 s on the Milvus server) and a shard's writes are ordered, so at 5 upserts/s a queue grew.
WRITE_RATE, WRITE_BATCH = 20.0, 10
BEFORE_S = 15.0                      # the writer alone before the snapshot: ~30 writes for its p99
TARGETS = {"snapshot_points_per_s_min": 20_000, "write_pause_ms_max": 100.0, "restore_vs_ingest_min": 1.0}


def payload(j: int) -> dict:
    return {"cat": f"c{j % CATEGORIES}", "n": j, "title": f"point {j}"}


def collection() -> dict:
    return {"spaces": {"v": {"dim": DIM, "metric": "cosine", "index": {"type": "HNSW"}}}, "shards": SHARDS,
            "metadata": {"cat": "keyword", "n": "integer"}}


async def ingest(svc, name: str, x: np.ndarray) -> dict:
    """The load, timed: the writes, then the wait until every replica's index is built."""
    t0 = time.perf_counter()
    for i in range(0, len(x), INGEST_BATCH):
        await svc.upsert(name, {"points": [{"id": f"p{j}", "vectors": {"v": x[j].tolist()}, "payload": payload(j)}
                                           for j in range(i, min(i + INGEST_BATCH, len(x)))]})
    written = time.perf_counter() - t0
    await indexed(svc, name)
    return {"write_s": written, "index_wait_s": time.perf_counter() - t0 - written}


class Writer:
    """Upserts WRITE_BATCH existing ids (new vectors and payloads) every WRITE_BATCH / WRITE_RATE seconds."""

    def __init__(self, svc, name: str, n: int, seed: int = 32):
        self.svc, self.name, self.n = svc, name, n
        self.rng = np.random.default_rng(seed)
        self.pool = gaussian_mixture(256, DIM, seed=seed + 1)
        self.done: list[tuple[float, float]] = []  # (when due, latency in ms)
        self.failed = 0
        self.stop = asyncio.Event()

    async def one(self, due: float) -> None:
        ids = self.rng.choice(self.n, WRITE_BATCH, replace=False)
        pts = [{"id": f"p{j}", "vectors": {"v": self.pool[int(j) % len(self.pool)].tolist()},
                "payload": {**payload(int(j)), "rewritten": True}} for j in ids]
        try:
            await self.svc.upsert(self.name, {"points": pts})
        except Exception:  # noqa: BLE001 - counted: a benchmark reports, it does not stop on one failed write
            self.failed += 1
            return
        self.done.append((due, (time.perf_counter() - due) * 1000))

    async def run(self) -> None:
        interval, t0, tasks = WRITE_BATCH / WRITE_RATE, time.perf_counter(), []
        k = 0
        while not self.stop.is_set():
            due = t0 + k * interval
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())  # pacing an open loop, not waiting on a result
                continue
            tasks.append(asyncio.create_task(self.one(due)))
            k += 1
        await asyncio.gather(*tasks)

    def window(self, start: float, end: float) -> dict:
        lat = [ms for due, ms in self.done if start <= due <= end]
        return {"writes": len(lat), "p99_ms": round(pct(lat, 99), 2), "max_ms": round(max(lat, default=0.0), 2),
                "p50_ms": round(pct(lat, 50), 2)}


async def take_snapshot(svc, name: str) -> dict:
    return await svc.snapshots.create(name)


async def restore_into(svc, sid: str, new: str) -> dict:
    return await svc.snapshots.restore(new, {"snapshot": sid})


async def scenario(svc, n: int, before_s: float) -> dict:
    src, new = "snap_src", "snap_restored"
    x = gaussian_mixture(n, DIM, seed=32)
    c0 = time.perf_counter()
    await svc.create_collection(src, collection())
    load = {"create_s": time.perf_counter() - c0, **await ingest(svc, src, x)}
    print(f"[snapshots] ingested {n} points in {load['write_s']:.1f}s (+{load['index_wait_s']:.1f}s indexing)",
          flush=True)
    writer = Writer(svc, src, n)
    running = asyncio.create_task(writer.run())
    w0 = time.perf_counter()
    await asyncio.sleep(before_s)  # the writer alone: the latency it sees without a snapshot
    s0 = time.perf_counter()
    snap = await take_snapshot(svc, src)
    s1 = time.perf_counter()
    writer.stop.set()
    await running
    print(f"[snapshots] snapshot {snap['id']}: {snap['counts']['points']} points in {s1 - s0:.2f}s, "
          f"pause {snap['write_pause_ms']} ms", flush=True)
    r0 = time.perf_counter()
    got = await restore_into(svc, snap["id"], new)
    r1 = time.perf_counter()
    await indexed(svc, new)
    restore_index_wait = time.perf_counter() - r1
    if got["points"] != snap["counts"]["points"]:
        raise RuntimeError(f"restore wrote {got['points']} points, the snapshot holds {snap['counts']['points']}")
    print(f"[snapshots] restored {got['points']} points in {r1 - r0:.2f}s", flush=True)
    for name in (src, new):
        await svc.delete_collection(name)
    return {"load": load, "snapshot": snap, "snapshot_s": s1 - s0, "restore_s": r1 - r0,
            "restore_index_wait_s": restore_index_wait, "before": writer.window(w0, s0),
            "during": writer.window(s0, s1), "failed_writes": writer.failed}


def run(workdir: Path, n: int = 200_000, before_s: float = BEFORE_S) -> dict:
    from cluster.config import ClusterConfig
    from cluster.services import start_elasticsearch, start_milvus_server
    from router.collection.service import PrismService
    from router.metadata.store import MetadataStore

    server = start_milvus_server(workdir / "milvus-server")
    es = start_elasticsearch(workdir / "es")
    try:
        cfg = ClusterConfig(data_dir=str(workdir / "data"), elasticsearch={"mode": "off"},
                            milvus={"mode": "server", "uri": server.uri})
        svc = PrismService(cfg, server_uri=server.uri, metadata=MetadataStore(es.uri, timeout_s=600))
        try:
            got = asyncio.run(scenario(svc, n, before_s))
        finally:
            svc.close()
    finally:
        es.stop()
        server.stop()
    return summarise(got, n, before_s)


def summarise(got: dict, n: int, before_s: float) -> dict:
    """docs/bench/snapshots.json from what `scenario` measured (pure: unit-tested)."""
    snap, points = got["snapshot"], got["snapshot"]["counts"]["points"]
    ingest_rate = n / got["load"]["write_s"]
    out = {"points": points, "dim": DIM, "shards": SHARDS, "backend": "server", "index": "HNSW",
           "ingest_batch": INGEST_BATCH, "ingest_s": round(got["load"]["write_s"], 2),
           "ingest_index_wait_s": round(got["load"]["index_wait_s"], 2), "create_s": round(got["load"]["create_s"], 2),
           "ingest_points_per_s": round(ingest_rate, 1),
           "snapshot_s": round(got["snapshot_s"], 3), "snapshot_points_per_s": round(points / got["snapshot_s"], 1),
           "snapshot_bytes": snap["bytes"], "write_pause_ms": snap["write_pause_ms"],
           "writer": {"points_per_s": WRITE_RATE, "batch": WRITE_BATCH, "before_s": before_s,
                      "failed": got["failed_writes"], "before": got["before"], "during": got["during"]},
           "writer_p99_ms_before": got["before"]["p99_ms"], "writer_p99_ms_during": got["during"]["p99_ms"],
           "writer_max_ms_before": got["before"]["max_ms"], "writer_max_ms_during": got["during"]["max_ms"],
           "restore_s": round(got["restore_s"], 3), "restore_index_wait_s": round(got["restore_index_wait_s"], 2),
           "restore_points_per_s": round(points / got["restore_s"], 1), "targets": TARGETS}
    out["restore_vs_ingest"] = round(out["restore_points_per_s"] / out["ingest_points_per_s"], 3)
    out["met"] = {"snapshot_points_per_s": out["snapshot_points_per_s"] >= TARGETS["snapshot_points_per_s_min"],
                  "write_pause_ms": out["write_pause_ms"] <= TARGETS["write_pause_ms_max"],
                  "restore_vs_ingest": out["restore_vs_ingest"] >= TARGETS["restore_vs_ingest_min"]}
    return out


def table(d: dict) -> str:
    """docs/benchmarks.md's table: one row per phase, then the targets."""
    w = d["writer"]
    out = ["| phase | seconds | points/s | note |", "|---|---|---|---|",
           f"| ingest (vectors given, batches of {d['ingest_batch']}) | {d['ingest_s']} | {d['ingest_points_per_s']} | "
           f"+{d['ingest_index_wait_s']} s until every index is built |",
           f"| snapshot, writer on | {d['snapshot_s']} | {d['snapshot_points_per_s']} | {d['snapshot_bytes']:,} bytes; "
           f"longest write pause {d['write_pause_ms']} ms |",
           f"| restore into a new collection | {d['restore_s']} | {d['restore_points_per_s']} | "
           f"{d['restore_vs_ingest']} x the ingest rate; its seconds include making the collection (the source's "
           f"took {d['create_s']} s) and checking every file; +{d['restore_index_wait_s']} s until indexed |",
           "", f"The writer ({w['points_per_s']:g} points/s in upserts of {w['batch']}, open loop, latency from when "
           f"each write was due): p50/p99/max {w['before']['p50_ms']}/{w['before']['p99_ms']}/{w['before']['max_ms']} ms "
           f"over {w['before']['writes']} writes before the snapshot, {w['during']['p50_ms']}/{w['during']['p99_ms']}/"
           f"{w['during']['max_ms']} ms over {w['during']['writes']} during it; {w['failed']} failed."
           + (" Its queue had grown before the snapshot began: at this size wait=true writes (each waits until "
              "Elasticsearch and the shards show it) did not keep up with its rate, so its latencies are that queue, "
              "not the snapshot (whose write pause is the lock hold above)." if w["before"]["p50_ms"] > 1000 else ""),
           "", f"Targets: snapshot >= {d['targets']['snapshot_points_per_s_min']:,} points/s, write pause <= "
           f"{d['targets']['write_pause_ms_max']:g} ms, restore >= the ingest rate; met: "
           + ", ".join(f"{k} **{'yes' if v else 'no'}**" for k, v in d["met"].items()) + "."]
    return "\n".join(out)
