"""Sizing (`--only sizing`): Milvus server memory per million vectors, per dimension and index type."""
from __future__ import annotations

import os
import time
from pathlib import Path

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.ring import HashRing
from deploy.benchlib import close_all, load_points
from deploy.datasets import gaussian_mixture
from shards.local import local_shards, replica_specs


def _group_rss_mib(pgid: int) -> float:
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
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


def run(workdir: Path, n: int = 50_000) -> dict:
    """Milvus server memory per million vectors, per dimension and index type (RSS delta, extrapolated)."""
    from cluster.services import start_milvus_server

    rows = []
    for dim, index in ((384, "HNSW"), (512, "HNSW"), (384, "IVF_FLAT")):
        server = start_milvus_server(workdir / f"milvus-{dim}-{index}")
        try:
            time.sleep(5)
            idle = _group_rss_mib(server.pid)
            cfg = CollectionConfig(name=f"size{dim}_{index.lower()}", shards=1,
                                   spaces={"v": {"dim": dim, "index": {"type": index}}})
            clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="server", uri=server.uri), workdir, server.uri))
            load_points(clients, HashRing(range(1)), {"v": gaussian_mixture(n, dim, seed=dim)})
            clients[0][0].target.wait_indexed()
            close_all(clients)
            time.sleep(5)
            loaded = _group_rss_mib(server.pid)
        finally:
            server.stop()
        per_m = (loaded - idle) * 1_000_000 / n / 1024
        raw = dim * 4 / 1024**3 * 1_000_000
        rows.append({"dim": dim, "index": index, "points": n, "idle_rss_mib": round(idle), "loaded_rss_mib": round(loaded),
                     "gib_per_million": round(per_m, 2), "raw_float32_gib_per_million": round(raw, 2)})
        print(f"[sizing] {rows[-1]}", flush=True)
    return {"runs": rows}
