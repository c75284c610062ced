"""Chaos benchmark (`python -m deploy.bench --only chaos`): one run per fault, the same mixed load in each.

Load: `concurrency` workers for `seconds`, 80% vector queries (top 10) and 20% upserts of 10 new points, the
coordinator's heal loop running every 0.5 s as the router's does. Each fault is injected after `warmup_s`; a run
reports the queries, how many failed or came back partial, p99 during the fault and after it, the time from the
fault's end (the replica killed, the server back) until every replica is live again and a query answers complete,
and, at the end, every shard's replicas compared with each other and with what was acknowledged
(deploy/chaos_checks.py): `diverged_ids` (ids a replica holds differently from its twin, after a full rescan),
`replicas_equal_after_s` (from the fault's end until every shard's replicas first had equal digests) and
`writes_lost` (acknowledged writes missing on ANY replica).

Faults: `replica_kill` (a shard replica actor's process SIGKILLed every 10 s, default quorum, writes through the
sequencers; Ray restarts it and the sequencer replays what it missed), `node_loss` (a second Ray node's raylet killed under load, in a subprocess attached to a
two-node cluster), `milvus_restart` (the Milvus 2.3 server all replicas use stopped by process group and started
again on its port and data dir), `es_outage` (the Elasticsearch-API server stopped for `outage_s`; a third of the
queries carry a filter only Elasticsearch can answer), `ingress_restart` (writes ordered by the shards' sequencer
actors; every 10 s a replica actor is killed and the ingress restarted at once: a new coordinator built from the
actors and the sequencers' journals takes over the load).

The load and its row: deploy/chaos_load.py; the faults: deploy/chaos_faults.py; the closing comparison:
deploy/chaos_checks.py. This module runs them (`run`, for deploy.bench) and is the command line of one run.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from deploy.chaos_faults import es_outage, ingress_restart, milvus_restart, node_loss, replica_kill


def node_loss_in_subprocess(seconds: float, concurrency: int, points: int = 5_000, timeout_s: float = 900,
                            cluster: dict | None = None, down_s: float = 10.0, token: str | None = None) -> dict:
    """`node_loss` in a fresh Python process (a process connects to one Ray cluster only); its row. `cluster` and
    `token`: a running two-node cluster to use (see deploy.chaos_faults.node_loss)."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prism-chaos-") as tmp:
        out = Path(tmp) / "row.json"
        extra = ["--cluster", json.dumps(cluster)] if cluster else []
        env = {**os.environ, **({"RAY_AUTH_TOKEN": token} if token else {})}
        proc = subprocess.run([sys.executable, "-m", "deploy.bench_chaos", "node_loss", "--seconds", str(seconds),
                               "--concurrency", str(concurrency), "--points", str(points), "--down-s", str(down_s),
                               "--json", str(out), *extra],
                              capture_output=True, text=True, timeout=timeout_s, start_new_session=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"node_loss run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def run(workdir: Path, seconds: float = 60.0, concurrency: int = 8, only: tuple[str, ...] = ()) -> dict:
    runs = []
    for name, fn in (("replica_kill", replica_kill), ("node_loss", node_loss), ("milvus_restart", milvus_restart),
                     ("es_outage", es_outage), ("ingress_restart", ingress_restart)):
        if only and name not in only:
            continue
        print(f"[chaos] {name}: {seconds:.0f}s at concurrency {concurrency}", flush=True)
        # The Milvus restart itself takes ~40 s under load: a longer run leaves an `after` window.
        if name == "node_loss":
            row = node_loss_in_subprocess(seconds, concurrency)
        else:
            row = fn(workdir / name, seconds + (40 if name == "milvus_restart" else 0), concurrency)
        print(f"[chaos] {json.dumps(row)}", flush=True)
        runs.append(row)
    return {"runs": runs,
            "recovery_s_mean": round(statistics.mean(r["recovery_s"] for r in runs), 2) if runs else None}


def main(argv: list[str] | None = None) -> int:
    """One run, its row as JSON: `python -m deploy.bench_chaos FAULT --seconds S --concurrency C --json OUT`."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m deploy.bench_chaos")
    ap.add_argument("fault", choices=["replica_kill", "node_loss", "milvus_restart", "es_outage", "ingress_restart"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--points", type=int, default=5_000)
    ap.add_argument("--json", help="write the row here (else stdout)")
    ap.add_argument("--down-s", type=float, default=10.0, help="node_loss: how long the worker node stays down")
    ap.add_argument("--cluster", help='node_loss: a running cluster, JSON {"address", "worker_pid", "temp"}')
    args = ap.parse_args(argv)
    fn = {"replica_kill": replica_kill, "node_loss": node_loss, "milvus_restart": milvus_restart,
          "es_outage": es_outage, "ingress_restart": ingress_restart}[args.fault]
    with tempfile.TemporaryDirectory(prefix="prism-chaos-") as tmp:
        if args.fault == "node_loss":
            row = node_loss(Path(tmp), args.seconds, args.concurrency, args.points, args.down_s,
                            json.loads(args.cluster) if args.cluster else None)
        else:
            row = fn(Path(tmp), args.seconds, args.concurrency, args.points)
    text = json.dumps(row, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
