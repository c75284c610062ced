"""Sizing (`--only sizing`): Milvus server memory per million vectors, per dimension and index type.

Memory per million is the slope between two sizes of one collection on one server (loaded and fully indexed at
`small` points, then at `large`): (RSS at large - RSS at small) / (large - small), so the server's start-up memory,
which does not grow with the data, cancels (deploy.benchlib.gib_per_million). RSS is the server's whole process
group. The idle figure (before any collection) is kept to show what that fixed part is.
"""
from __future__ import annotations

import time
from pathlib import Path

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.ring import HashRing
from deploy.benchlib import close_all, gib_per_million, group_rss_mib, load_points
from deploy.datasets import gaussian_mixture
from shards.local import local_shards, replica_specs

CASES = ((384, "HNSW"), (512, "HNSW"), (384, "IVF_FLAT"))


def run(workdir: Path, sizes: tuple[int, int] = (25_000, 100_000), cases=CASES, settle_s: float = 5.0) -> dict:
    """Per (dim, index): RSS after `sizes[0]` points and after `sizes[1]`, and the slope between them."""
    from cluster.services import start_milvus_server

    small, large = sizes
    rows = []
    for dim, index in cases:
        server = start_milvus_server(workdir / f"milvus-{dim}-{index}")
        try:
            time.sleep(settle_s)  # not synchronisation: lets the fresh server's memory settle before it is read
            idle = group_rss_mib(server.pid)
            cfg = CollectionConfig(name=f"size{dim}_{index.lower()}", shards=1,
                                   spaces={"v": {"dim": dim, "index": {"type": index}}})
            clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="server", uri=server.uri), workdir, server.uri))
            x = gaussian_mixture(large, dim, seed=dim)
            rss = []
            try:
                for lo, hi in ((0, small), (small, large)):
                    load_points(clients, HashRing(range(1)), {"v": x[lo:hi]}, start=lo)
                    clients[0][0].target.wait_indexed()
                    time.sleep(settle_s)
                    rss.append(group_rss_mib(server.pid))
            finally:
                close_all(clients)
        finally:
            server.stop()
        raw = dim * 4 / 1024**3 * 1_000_000
        rows.append({"dim": dim, "index": index, "points_small": small, "points": large, "idle_rss_mib": round(idle),
                     "rss_small_mib": round(rss[0]), "rss_large_mib": round(rss[1]),
                     "gib_per_million": round(gib_per_million(small, rss[0], large, rss[1]), 2),
                     "raw_float32_gib_per_million": round(raw, 2)})
        print(f"[sizing] {rows[-1]}", flush=True)
    return {"method": "slope", "runs": rows}


def table(data: dict) -> str:
    """docs/benchmarks.md's sizing table (runs from before the slope method show their one size)."""
    lines = ["| dim | index | points loaded | run | GiB per million (measured) | GiB per million (raw float32) |",
             "|---|---|---|---|---|---|"]
    for r in data["runs"]:
        pts = f"{r['points_small']:,} -> {r['points']:,}" if "points_small" in r else f"{r['points']:,}"
        lines.append(f"| {r['dim']} | {r['index']} | {pts} | {r.get('run', '1')} | {r['gib_per_million']} | "
                     f"{r['raw_float32_gib_per_million']} |")
    return "\n".join(lines) + (f"\n\n{data['note']}" if data.get("note") else "")
