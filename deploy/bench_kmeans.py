"""The cost of training routing centroids (issue 28): router.routing.kmeans.train of 256 centroids over 100,000 x 384
points (a Gaussian mixture of 64 components), cosine and l2, wall and CPU seconds (median of 3 runs, the load
average recorded: this machine is shared), and what the schedule (warm-up subsample, then 3 rounds on all points)
costs in quality against 20 full Lloyd rounds on all points (mean score of a point to its centroid); then
balance.assign of those centroids to 8 shards. Writes docs/bench/kmeans.json: a section `kmeans` for deploy/bench.py
(`run`), or on its own:

    PYTHONPATH=. python -m deploy.bench_kmeans
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

from deploy.benchlib import machine, write_json
from router.routing import balance, kmeans

N, DIM, K, COMPONENTS, SHARDS, REPEATS = 100_000, 384, 256, 64, 8, 3


def mixture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(COMPONENTS, DIM)).astype(np.float32)
    comp = rng.integers(COMPONENTS, size=N)
    return centres[comp] + 0.5 * rng.normal(size=(N, DIM)).astype(np.float32)


def fit(x: np.ndarray, c: np.ndarray, metric: str) -> float:
    """Mean nearness of a point to its nearest centroid (inner product for cosine; -squared distance for l2)."""
    return float(kmeans.nearest(kmeans.prepare(x, metric), c, metric)[1].mean())


def run(workdir=None) -> dict:
    x = mixture()
    results = {}
    for metric in ("cosine", "l2"):
        walls, cpus, loads = [], [], []
        for _ in range(REPEATS):
            loads.append(os.getloadavg()[0])
            w0, c0 = time.perf_counter(), time.process_time()
            c = kmeans.train(x, K, metric=metric, seed=0)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        # the reference: the same seeding, then 20 Lloyd rounds on all 100k points (no warm-up subsample)
        w0, c0 = time.perf_counter(), time.process_time()
        ref = kmeans._lloyd(kmeans.prepare(x, metric), kmeans._seed(kmeans.prepare(x, metric), K, metric,
                                                                     np.random.default_rng(0)), metric, 20)
        ref_wall, ref_cpu = time.perf_counter() - w0, time.process_time() - c0
        labels, _ = kmeans.nearest(kmeans.prepare(x, metric), c, metric)
        sizes = np.bincount(labels, minlength=K)
        b0, bc0 = time.perf_counter(), time.process_time()
        owners = balance.assign(c, sizes, SHARDS, metric=metric)
        balance_wall, balance_cpu = time.perf_counter() - b0, time.process_time() - bc0
        results[metric] = {
            "train_wall_s": [round(v, 2) for v in walls], "train_wall_s_median": round(statistics.median(walls), 2),
            "train_cpu_s_median": round(statistics.median(cpus), 2),
            "load_average_at_start": [round(v, 1) for v in loads],
            "fit_schedule": round(fit(x, c, metric), 4), "fit_20_full_rounds": round(fit(x, ref, metric), 4),
            "reference_20_full_rounds_wall_s": round(ref_wall, 2),
            "reference_20_full_rounds_cpu_s": round(ref_cpu, 2),
            "balance_wall_s": round(balance_wall, 3), "balance_cpu_s": round(balance_cpu, 3),
            "balance_spread": round(balance.spread(sizes, owners, SHARDS), 4),
        }
        print(metric, results[metric], flush=True)
    return {"numpy": np.__version__, "points": N, "dim": DIM, "centroids": K, "components": COMPONENTS,
            "shards": SHARDS, "results": results}


if __name__ == "__main__":
    write_json("kmeans", {"machine": machine(), **run()})
