"""Anti-entropy's cost (`python -m deploy.bench --only antientropy`): an idle, equal collection of `n` points (one
shard, two milvus-lite replicas, in process), its replicas compared by digest as a sequencer does every
`anti_entropy_interval_s`; and what keeping the digest up to date adds to a write.

Reported: the one-time digest build (a full scan of each replica, also what each `digest_rescan_s` costs), the CPU
time of one comparison of two equal replicas (median of `passes`), that CPU as a share of one core at the default
interval (plus the rescan amortised over its period), and the median time of a one-point upsert with the digest
kept up to date vs without one (alternating blocks, so drift in the machine hits both alike).
"""
from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig, ReplicationSettings
from router.replication.replicas import ReplicatedShard
from shards.api import PointRow
from shards.local import local_shards, replica_specs, stop_local_shards

DIM = 16


def _rows(start: int, n: int, rng: np.random.Generator) -> list[PointRow]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [PointRow(id=f"p{start + i:07d}", payload={"i": start + i, "tag": f"t{(start + i) % 13}"},
                     meta={"tag": f"t{(start + i) % 13}"}, vectors={"v": v[i].tolist()}) for i in range(n)]


def run(workdir: Path, n: int = 200_000, passes: int = 20, writes: int = 200) -> dict:
    cfg = CollectionConfig(name="ae", shards=1, replicas=2, spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), workdir, None))
    settings = ReplicationSettings()
    try:
        rs = ReplicatedShard(0, clients[0], key="ae/0", write_quorum="all")
        rng = np.random.default_rng(1)
        t = time.perf_counter()
        for k in range(0, n, 5000):
            asyncio.run(rs.upsert(_rows(k, min(5000, n - k), rng), wait=False))
        load_s = time.perf_counter() - t
        targets = [c.target for c in clients[0]]
        t, c0 = time.perf_counter(), time.process_time()
        for s in targets:
            s.digest()
        build_wall, build_cpu = time.perf_counter() - t, time.process_time() - c0

        async def one_pass() -> float:
            c = time.process_time()
            found = await rs.anti_entropy()
            assert found is not None and found.equal, found
            return time.process_time() - c

        cpu = [asyncio.run(one_pass()) for _ in range(passes)]
        per_pass = statistics.median(cpu)
        idle_share = per_pass / settings.anti_entropy_interval_s + build_cpu / settings.digest_rescan_s

        # The write path: one-point upserts (wait=True, as the API's default) with the digest kept vs none.
        built = {id(s): s._digest for s in targets}

        def block(kept: bool, start: int) -> list[float]:
            # Swapped out and back rather than rebuilt (a rebuild is a full scan); the digests are not compared
            # after this, so what the unkept blocks' writes leave out of them does not matter.
            for s in targets:
                s._digest = built[id(s)] if kept else None
            out = []
            for i in range(start, start + writes // 10):
                row = _rows(n + i, 1, rng)
                t = time.perf_counter()
                asyncio.run(rs.upsert(row))
                out.append((time.perf_counter() - t) * 1000)
            return out

        kept_ms: list[float] = []
        none_ms: list[float] = []
        for b in range(10):
            kept_ms += block(True, 2 * b * writes)
            none_ms += block(False, (2 * b + 1) * writes)
        return {"points": n, "dim": DIM, "replicas": 2, "backend": "milvus-lite, in-process shards",
                "load_s": round(load_s, 1), "digest_build_s_both_replicas": round(build_wall, 2),
                "digest_build_cpu_s": round(build_cpu, 2), "compare_cpu_ms_median": round(per_pass * 1000, 3),
                "compare_cpu_ms_max": round(max(cpu) * 1000, 3), "passes": passes,
                "anti_entropy_interval_s": settings.anti_entropy_interval_s,
                "digest_rescan_s": settings.digest_rescan_s,
                "idle_cpu_percent_of_one_core": round(idle_share * 100, 4),
                "upsert_ms_median_digest_kept": round(statistics.median(kept_ms), 3),
                "upsert_ms_median_no_digest": round(statistics.median(none_ms), 3),
                "upserts_per_mode": len(kept_ms),
                "notes": ["in process: the Ray deployment adds one actor call per replica per pass (measured "
                          "separately in the chaos rows' replicas_equal_after_s, not here)"]}
    finally:
        stop_local_shards(clients, drop=True)


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prism-ae-") as tmp:
        print(json.dumps(run(Path(tmp), n=int(sys.argv[1]) if len(sys.argv) > 1 else 200_000), indent=2))
