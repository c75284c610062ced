"""Timing script (not a test, not in `make bench`): what updates of existing points cost on a trained vector-routed
collection, 8 milvus-lite shards and a bundled noida-db, in process. 2,000 points are written, then written again
in batches of 100, `--repeats` times each way, alternating: `same` (the same vectors: no point moves),
`same_again` (once more) and `moved` (vectors of the next mixture component: every point moves shard). Prints each way's median seconds and spread.

Run it from a checkout (PYTHONPATH=<checkout>) to compare two versions of the write path on the same machine:
  PYTHONPATH=$PWD .venv/bin/python deploy/measure_routed_writes.py
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.services import free_port, start_elasticsearch
from router.collection import placing
from router.collection.coordinator import Coordinator
from router.metadata.store import MetadataStore
from router.schema.points import Point
from shards.local import local_shards, replica_specs, stop_local_shards

SHARDS, DIM, COMPONENTS = 8, 16, 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    means = rng.standard_normal((COMPONENTS, DIM)).astype(np.float32)
    comp = rng.integers(0, COMPONENTS, args.points)

    def vectors(shift: int) -> np.ndarray:
        return means[(comp + shift) % COMPONENTS] + 0.1 * rng.standard_normal((args.points, DIM)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        es = start_elasticsearch(Path(tmp) / "es", free_port())
        cfg = placing.checked(CollectionConfig(name="timing", shards=SHARDS, metadata={"n": "integer"},
                                               spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}},
                                               routing={"method": "vector", "space": "v", "centroids": COMPONENTS}))
        store = MetadataStore(es.uri)
        store.ensure_index(cfg)
        clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), Path(tmp) / "milvus", None))
        try:
            placement = placing.placement_of(cfg).trained(means, np.arange(COMPONENTS) % SHARDS)
            coord = Coordinator.from_clients(cfg, clients, metadata=store, placement=placement)

            async def write(vecs: np.ndarray) -> float:
                t0 = time.perf_counter()
                for i in range(0, args.points, args.batch):
                    await coord.upsert([Point(id=f"p{j}", payload={"n": j}, vectors={"v": vecs[j].tolist()})
                                        for j in range(i, min(i + args.batch, args.points))])
                return time.perf_counter() - t0

            current = vectors(0)
            asyncio.run(write(current))  # the points exist before anything is timed
            runs: dict[str, list[float]] = {"same": [], "same_again": [], "moved": []}
            for r in range(args.repeats):
                runs["same"].append(asyncio.run(write(current)))  # after a move: its old shard is asked once more
                runs["same_again"].append(asyncio.run(write(current)))  # no point moved since the last write
                current = vectors(r + 1)
                runs["moved"].append(asyncio.run(write(current)))
            print(json.dumps({k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
                                  "max_s": round(max(v), 3)} for k, v in runs.items()}))
        finally:
            stop_local_shards(clients, drop=True)
            es.stop()


if __name__ == "__main__":
    main()
