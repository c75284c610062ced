"""Ingress scale-out (`python -m deploy.bench --only scaleout`): vector-query QPS at c=32 over HTTP against
`prism up` with 1 and with 2 ingress replicas (`ingress_replicas`; with and without group commit at the shard
replica, and without the ingress-side coalescer), and with 1 and 2 replicas per shard behind one ingress; the same
collections and queries, same run. At c=1 the server's own `took_ms` is kept beside the client's latency.

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


def _vector_query(qs: list[list[float]], debug: bool = False):
    return lambda i: {"prefetch": [{"space": "v", "vector": qs[i % len(qs)], "limit": 10}],
                      "fusion": {"method": "none"}, "limit": 10, "with_payload": False, "cache": False,
                      **({"debug": True} if debug else {})}


# The configurations compared, each a `prism up` with this override (same collections, same queries, same run):
CONFIGS = {
    "ingress1": {"ingress_replicas": 1},
    "ingress2": {"ingress_replicas": 2},
    # the same two ingress replicas without group commit at the shard replica: what each ingress batching only its
    # own queries gives (docs/bench/scaleout.json's 0.64 before issue 29)
    "ingress2_no_group_commit": {"ingress_replicas": 2, "batching": {"replica_enabled": False}},
    # ... and without the ingress-side coalescer (group commit at the replica alone): does the coalescer still pay?
    "ingress2_no_ingress_batching": {"ingress_replicas": 2, "batching": {"enabled": False}},
}


def _load_collection(url: str, name: str, vecs, shards: int, replicas: int) -> None:
    import httpx

    spec = {"spaces": {"v": {"dim": DIM, "index": {"type": "HNSW"}}}, "shards": shards, "replicas": replicas}
    httpx.put(f"{url}/v1/collections/{name}", json=spec, timeout=120).raise_for_status()
    with httpx.Client(base_url=url, timeout=120) as c:
        for i in range(0, len(vecs), 1000):
            c.post(f"/v1/collections/{name}/points", json={"points": [
                {"id": f"p{j}", "vectors": {"v": vecs[j].tolist()}}
                for j in range(i, min(len(vecs), i + 1000))]}).raise_for_status()


def run(workdir: Path, n: int = 20_000, shards: int = 2, total: int = 800, rounds: int = 2) -> dict:
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
    runs: dict[str, dict[str, list[float]]] = {k: {"qps": [], "p50": [], "p50_c1": [], "took_c1": [], "fan_out_c1": []}
                                                for k in (*CONFIGS, "replicas1", "replicas2")}
    cpu: dict[str, dict[str, float]] = {}
    errors = 0
    journals: list[str] = []

    def measure(label: str, collection: str) -> None:
        nonlocal errors
        path = f"/v1/collections/{collection}/query"
        took: list[float] = []
        asyncio.run(http_load(url, 8, 100, _vector_query(qs), path=path))  # warm-up: every replica sees requests
        fan: list[float] = []
        lat1, _, err1 = asyncio.run(http_load(url, 1, 100, _vector_query(qs, debug=True), path=path,
                                              seen=lambda a: (took.append(a["took_ms"]),
                                                              fan.append(a["timings_ms"]["fan_out"]))))
        before = cpu_ticks()
        lat, rate, err = asyncio.run(http_load(url, 32, total, _vector_query(qs), path=path))
        cpu[label] = cpu_per_request(before, cpu_ticks(), total)  # the last round's
        r = runs[label]
        r["qps"].append(rate)
        r["p50"].append(statistics.median(lat))
        r["p50_c1"].append(statistics.median(lat1))
        r["took_c1"].append(statistics.median(took))
        r["fan_out_c1"].append(statistics.median(fan))  # of took: the shards' answers (Ray call + Milvus search)
        errors += err + err1

    try:
        for rnd in range(rounds):
            for label, override in CONFIGS.items():
                path = workdir / f"{label}.yaml"
                path.write_text(yaml.safe_dump(override))
                print(f"[scaleout] round {rnd + 1}: {label}", flush=True)
                bootstrap.start_detached(cfg, config_file=str(path))
                if not journals:
                    _load_collection(url, "bench", vecs, shards, 1)
                    _load_collection(url, "bench_r2", vecs, shards, 2)
                    journals = sorted(p.name for p in (cfg.data_path / "sequencer" / "bench").iterdir())
                measure(label, "bench")
                if label == "ingress1":  # replicas: one ingress, the same shards with 1 and 2 replicas each
                    measure("replicas1", "bench")
                    measure("replicas2", "bench_r2")
                bootstrap.stop_instance(cfg.data_path)
    finally:
        bootstrap.stop_instance(cfg.data_path)
    med = {k: {m: round(statistics.median(v), 2) for m, v in r.items()} for k, r in runs.items()}
    q = {k: med[k]["qps"] for k in med}
    return {"points": n, "dim": DIM, "shards": shards, "concurrency": 32, "requests_per_round": total,
            "rounds": rounds, "configs": CONFIGS, "medians": med,
            "qps_rounds": {k: [round(x, 1) for x in r["qps"]] for k, r in runs.items()},
            "qps_ingress1": q["ingress1"], "qps_ingress2": q["ingress2"],
            "ratio": round(q["ingress2"] / q["ingress1"], 2),
            "ratio_no_group_commit": round(q["ingress2_no_group_commit"] / q["ingress1"], 2),
            "ratio_no_ingress_batching": round(q["ingress2_no_ingress_batching"] / q["ingress1"], 2),
            "replica_ratio": round(q["replicas2"] / q["replicas1"], 2),
            "p50_ms_ingress1": med["ingress1"]["p50"], "p50_ms_ingress2": med["ingress2"]["p50"], "errors": errors,
            "p50_ms_c1_ingress1": med["ingress1"]["p50_c1"], "p50_ms_c1_ingress2": med["ingress2"]["p50_c1"],
            "took_ms_c1_ingress1": med["ingress1"]["took_c1"], "took_ms_c1_ingress2": med["ingress2"]["took_c1"],
            "cpu_ms_per_request_c32": cpu, "sequencer_journals": journals,
            "targets": {"ratio": 1.0, "replica_ratio": 1.0},
            "cores": len(os.sched_getaffinity(0)), "backend": "milvus-lite, Ray actors"}


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prism-scaleout-") as tmp:
        print(json.dumps(run(Path(tmp), n=5000, total=300, rounds=1), indent=2))
