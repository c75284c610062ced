"""`make bench`: measured numbers for docs/benchmarks.md and docs/bench/*.json. Not a test: nothing here asserts.

Every figure is compared with a baseline measured in the same run, on the same machine, because this machine
is noisy: ratios travel, absolute milliseconds do not.

This module only dispatches: each section is a deploy/bench_*.py module with a `run` (imported when its section
runs), and what they share lives in deploy/benchlib.py, which imports none of them.
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from deploy.benchlib import keep_other_runs, machine, write_json

CHAOS_ORDER = ["replica_kill", "node_loss", "milvus_restart", "es_outage", "ingress_restart"]


def section(name: str) -> Callable[..., dict]:
    return importlib.import_module(f"deploy.bench_{name}").run


def core(args, workdir: Path) -> dict:
    runs = [section("core")(args.n, args.shards, b, args.queries, workdir / b) for b in args.backends.split(",")]
    # Runs of other (backend, size) pairs stay: a 1-backend or smaller re-run does not erase the others.
    return {"runs": keep_other_runs("core", runs, key=lambda r: (r["backend"], r["n"]))}


def chaos(args, workdir: Path) -> dict:
    out = section("chaos")(workdir, only=tuple(args.chaos_faults.split(",")))
    runs = keep_other_runs("chaos", out["runs"], key=lambda r: r.get("fault"))
    runs.sort(key=lambda r: CHAOS_ORDER.index(r["fault"]) if r["fault"] in CHAOS_ORDER else len(CHAOS_ORDER))
    return {**out, "runs": runs, "recovery_s_mean": round(sum(r["recovery_s"] for r in runs) / len(runs), 2)}


# section -> what it writes to docs/bench/SECTION.json (None: the section writes its own file)
SECTIONS: dict[str, Callable | None] = {
    "core": core,
    "serving": lambda a, w: section("serving")(a.n, a.shards, w),
    "filters": lambda a, w: section("filters")(a.n, a.shards, w),
    "chaos": chaos,
    "scaleout": lambda a, w: section("scaleout")(w),
    "ingest": lambda a, w: section("ingest")(w),
    "scaling": lambda a, w: section("scaling")(w, sizes=tuple(int(x) for x in a.scaling_sizes.split(","))),
    "sizing": lambda a, w: section("sizing")(w, sizes=tuple(int(x) for x in a.sizing_sizes.split(","))),
    "encode": None,
    "freshness": lambda a, w: section("freshness")(w),
    "batching": lambda a, w: section("batching")(w),
    "tiny": lambda a, w: section("tiny")(w),
    "auth": lambda a, w: section("auth")(w),
    "stages": lambda a, w: section("stages")(w),
    "json_depth": lambda a, w: section("json_depth")(),
    "antientropy": lambda a, w: section("antientropy")(w),
    "grpc": lambda a, w: section("grpc")(w),
    "qdrant": lambda a, w: section("qdrant")(w),
    "kmeans": lambda a, w: section("kmeans")(w),
    "routing": lambda a, w: section("routing")(w, n=a.routing_n, n_queries=a.queries,
                                                       key_n=a.routing_key_n),
    "startup": lambda a, w: section("startup")(w, cycles=a.startup_cycles, label=a.startup_label),
    "capacity": lambda a, w: section("capacity")(w),
    "snapshots": lambda a, w: section("snapshots")(w, n=a.snapshots_n),
    "scale1m": lambda a, w: section("scale1m")(w, n=a.scale1m_n, small=a.scale1m_small, n_queries=a.queries,
                                                  indexes=tuple(a.scale1m_indexes.split(","))),
}
# Not part of a plain `make bench` (about an hour on 2 cores): only when named in --only.
ON_REQUEST = {"scale1m"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="prism bench", description=__doc__)
    ap.add_argument("--only", default=",".join(s for s in SECTIONS if s not in ON_REQUEST),
                    help="comma list of sections: " + ", ".join(SECTIONS) + f" ({', '.join(ON_REQUEST)} only when named)")
    ap.add_argument("--scaling-sizes", default="50000,100000,200000")
    ap.add_argument("--sizing-sizes", default="25000,100000",
                    help="the two sizes whose memory difference gives sizing's per-million slope")
    ap.add_argument("--scale1m-n", type=int, default=1_000_000, help="points in the scale1m section")
    ap.add_argument("--scale1m-indexes", default="HNSW,IVF_SQ8", help="index types scale1m loads, one server each")
    ap.add_argument("--scale1m-small", type=int, default=250_000,
                    help="the smaller size scale1m reads memory at (the per-million slope runs from it to --scale1m-n)")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--routing-n", type=int, default=200_000, help="points per set in the routing section")
    ap.add_argument("--routing-key-n", type=int, default=None, help="points in its key-routing part (default: --routing-n)")
    ap.add_argument("--snapshots-n", type=int, default=200_000, help="points in the snapshots section's collection")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--backends", default="server,lite")
    ap.add_argument("--chaos-faults", default=",".join(CHAOS_ORDER),
                    help="chaos runs to make; the other faults' rows in docs/bench/chaos.json are kept")
    ap.add_argument("--startup-cycles", type=int, default=3)
    ap.add_argument("--startup-label", default="current",
                    help="startup runs are kept by label (before/after a change: the ratio of their medians)")
    args = ap.parse_args(argv)
    sections = args.only.split(",")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    workdir = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    try:
        for name in SECTIONS:  # in this order, whatever the order asked for
            if name not in sections:
                continue
            if SECTIONS[name] is None:
                section(name)()
            else:
                write_json(name, {"machine": machine(), **SECTIONS[name](args, workdir / name)})
        from deploy.report import write_report

        write_report()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
