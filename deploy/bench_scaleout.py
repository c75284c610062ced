"""Ingress scale-out (`python -m deploy.bench --only scaleout`): vector-query QPS at c=32 over HTTP against
`prism up` with 1 and with 2 ingress replicas (`ingress_replicas`), the same collection and queries, same run.

Each ingress replica is a Ray Serve replica (its own process) in front of the same shard actors; writes are
ordered by the shards' sequencers, so both replicas could take writes too (tests/integration/test_sequencer.py).
Rounds alternate 1, 2, 1, 2, ... so machine noise lands on both; the ratio is of medians.
"""
from __future__ import annotations

import asyncio
import os
import statistics
from pathlib import Path

from deploy.benchlib import cpu_per_request, cpu_ticks, http_load
from deploy.datasets import gaussian_mixture, query_vectors

DIM = 64


def _vector_query(qs: list[list[float]]):
    return lambda i: {"prefetch": [{"space": "v", "vector": qs[i % len(qs)], "limit": 10}],
                      "fusion": {"method": "none"}, "limit": 10, "with_payload": False, "cache": False}


def run(workdir: Path, n: int = 20_000, shards: int = 2, total: int = 800, rounds: int = 2) -> dict:
    import httpx
    import yaml

    from cluster.cli import bootstrap
    from cluster.config import ClusterConfig
    from cluster.services import free_port

    workdir.mkdir(parents=True, exist_ok=True)
    qs = [q.tolist() for q in query_vectors(500, DIM, seed=8, base_seed=7)]
    vecs = gaussian_mixture(n, DIM, seed=7)
    port = free_port()
    cfg = ClusterConfig(data_dir=str(workdir / "prism"), port=port, grpc_port=0, elasticsearch={"mode": "off"})
    url = f"http://127.0.0.1:{port}"
    qps: dict[int, list[float]] = {1: [], 2: []}
    p50: dict[int, list[float]] = {1: [], 2: []}
    p50_c1: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, dict[str, float]] = {}
    errors = 0
    try:
        for rnd in range(rounds):
            for replicas in (1, 2):
                override = workdir / f"ingress{replicas}.yaml"
                override.write_text(yaml.safe_dump({"ingress_replicas": replicas}))
                print(f"[scaleout] round {rnd + 1}: {replicas} ingress replica(s)", flush=True)
                bootstrap.start_detached(cfg, config_file=str(override))
                if rnd == 0 and replicas == 1:
                    spec = {"spaces": {"v": {"dim": DIM, "index": {"type": "HNSW"}}}, "shards": shards}
                    httpx.put(f"{url}/v1/collections/bench", json=spec, timeout=120).raise_for_status()
                    with httpx.Client(base_url=url, timeout=120) as c:
                        for i in range(0, n, 1000):
                            c.post("/v1/collections/bench/points", json={"points": [
                                {"id": f"p{j}", "vectors": {"v": vecs[j].tolist()}}
                                for j in range(i, min(n, i + 1000))]}).raise_for_status()
                    journals = sorted(p.name for p in (cfg.data_path / "sequencer" / "bench").iterdir())
                asyncio.run(http_load(url, 8, 100, _vector_query(qs)))  # warm-up: every replica sees requests
                lat1, _, err1 = asyncio.run(http_load(url, 1, 100, _vector_query(qs)))
                p50_c1[replicas].append(statistics.median(lat1))
                before = cpu_ticks()
                lat, rate, err = asyncio.run(http_load(url, 32, total, _vector_query(qs)))
                cpu[replicas] = cpu_per_request(before, cpu_ticks(), total)  # the last round's
                errors += err1
                qps[replicas].append(rate)
                p50[replicas].append(statistics.median(lat))
                errors += err
                bootstrap.stop_instance(cfg.data_path)
    finally:
        bootstrap.stop_instance(cfg.data_path)
    q1, q2 = statistics.median(qps[1]), statistics.median(qps[2])
    return {"points": n, "dim": DIM, "shards": shards, "concurrency": 32, "requests_per_round": total,
            "rounds": rounds, "qps_ingress1": round(q1, 1), "qps_ingress2": round(q2, 1),
            "ratio": round(q2 / q1, 2), "qps_rounds": {str(k): [round(x, 1) for x in v] for k, v in qps.items()},
            "p50_ms_ingress1": round(statistics.median(p50[1]), 2),
            "p50_ms_ingress2": round(statistics.median(p50[2]), 2), "errors": errors,
            "p50_ms_c1_ingress1": round(statistics.median(p50_c1[1]), 2),
            "p50_ms_c1_ingress2": round(statistics.median(p50_c1[2]), 2),
            "cpu_ms_per_request_c32": {str(k): v for k, v in cpu.items()},
            "sequencer_journals": journals,
            "cores": len(os.sched_getaffinity(0)), "backend": "milvus-lite, Ray actors"}


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prism-scaleout-") as tmp:
        print(json.dumps(run(Path(tmp), n=5000, total=300, rounds=1), indent=2))
