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
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from deploy.datasets import gaussian_mixture, query_vectors
from router.collection.coordinator import Coordinator
from deploy.chaos_checks import final_check, watch_equal
from router.schema.points import Point
from router.schema.query import QueryRequest

DIM = 64


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q / 100 * len(s)))], 2)


@dataclass
class Fault:
    """`inject()` starts the fault and returns when it is over (the actor killed, the server back up);
    `queries` picks each worker's query (default: an unfiltered vector query)."""

    name: str
    inject: Callable[[Coordinator], Awaitable[None]]
    query: Callable[[random.Random, list[list[float]]], QueryRequest] | None = None
    notes: list[str] = field(default_factory=list)
    kind_of: Callable[[QueryRequest], str] = lambda req: "vector"  # how a query is counted in `by_kind`


def vector_query(rng: random.Random, qs: list[list[float]], **extra: Any) -> QueryRequest:
    return QueryRequest(prefetch=[{"space": "v", "vector": qs[rng.randrange(len(qs))]}], fusion={"method": "none"},
                        limit=10, with_payload=False, cache=False, **extra)


def all_live(coord: Coordinator) -> bool:
    return all(st["state"] == "live" for row in coord.replica_states() for st in row)


async def run_load(coord: Coordinator, fault: Fault, *, seconds: float, warmup_s: float, concurrency: int,
                   vecs: Any, qs: list[list[float]], payload: Callable[[int], dict] = lambda i: {}) -> dict:
    """The mixed load with `fault` injected at `warmup_s`; returns the run's row."""
    rng = random.Random(1)
    t0 = time.perf_counter()
    end = t0 + seconds
    samples: list[tuple[float, float, str]] = []  # (t, ms, outcome) of reads
    kinds: list[str] = []
    acked: list[str] = []
    refused_writes = [0]
    window: dict[str, float] = {}
    next_id = [0]
    pick = fault.query or vector_query

    async def worker() -> None:
        while time.perf_counter() < end:
            t = time.perf_counter()
            if rng.random() < 0.2:
                ids = [f"w{next_id[0] + k}" for k in range(10)]
                next_id[0] += 10
                try:
                    await coord.upsert([Point(id=i, payload=payload(k), vectors={"v": vecs[rng.randrange(len(vecs))].tolist()})
                                        for k, i in enumerate(ids)])
                    acked.extend(ids)
                except Exception:  # noqa: BLE001 - refused (not acknowledged): counted, never expected to be held
                    refused_writes[0] += 1
                continue
            req = pick(rng, qs)
            try:
                r = await coord.query(req)
                outcome = "partial" if r.partial else "ok"
            except Exception:  # noqa: BLE001 - counted as failed
                outcome = "failed"
            samples.append((t - t0, (time.perf_counter() - t) * 1000, outcome))
            kinds.append(fault.kind_of(req))

    async def healer() -> None:
        while True:
            await coord.heal()
            await asyncio.sleep(0.5)

    async def injector() -> None:
        await asyncio.sleep(warmup_s)
        window["start"] = time.perf_counter() - t0
        await fault.inject(coord)
        window["end"] = time.perf_counter() - t0
        while time.perf_counter() < end + 120:  # recovered: every replica live and a query answers complete
            if all_live(coord):
                try:
                    if not (await coord.query(pick(rng, qs))).partial:
                        break
                except Exception:  # noqa: BLE001 - not yet
                    pass
            await asyncio.sleep(0.1)
        window["recovered"] = time.perf_counter() - t0

    heal_task = asyncio.create_task(healer())
    equal_task = asyncio.create_task(watch_equal(coord, window, t0))
    try:
        await asyncio.gather(injector(), *(worker() for _ in range(concurrency)))
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline and not all_live(coord):
            await asyncio.sleep(0.5)
        await asyncio.wait_for(equal_task, 120)  # the load is over: replicas must come to equal digests
    except asyncio.TimeoutError:
        pass  # reported as null: never equal within 120 s of the load's end
    finally:
        heal_task.cancel()
        equal_task.cancel()
    checked = await final_check(coord, acked)
    fs, fe, rec = window["start"], window.get("end", window["start"]), window["recovered"]
    during = [ms for t, ms, o in samples if fs <= t < rec and o != "failed"]
    after = [ms for t, ms, o in samples if t >= rec and o != "failed"]
    by_kind: dict[str, dict[str, int]] = {}
    for (t, _, o), k in zip(samples, kinds):
        if fs <= t < rec:
            row = by_kind.setdefault(k, {"queries": 0, "failed": 0})
            row["queries"] += 1
            row["failed"] += o == "failed"
    return {"fault": fault.name, "queries": len(samples), "during_fault_by_kind": by_kind, "failed": sum(o == "failed" for *_, o in samples),
            "partial": sum(o == "partial" for *_, o in samples),
            "failed_during_fault": sum(o == "failed" and fs <= t < rec for t, _, o in samples),
            "p99_ms_before": _pct([ms for t, ms, o in samples if t < fs and o != "failed"], 99),
            "p99_ms_during": _pct(during, 99), "p99_ms_after": _pct(after, 99),
            "fault_s": round(fe - fs, 2), "recovery_s": round(rec - fe, 2),
            "writes_acked": len(acked), "writes_refused": refused_writes[0] * 10, **checked,
            "replicas_equal_after_s": round(window["equal_at"] - fe, 2) if "equal_at" in window else None,
            "seconds": seconds, "concurrency": concurrency, "shards": coord.config.shards,
            "replicas": coord.config.replicas, "write_quorum": coord.config.write_quorum, "notes": fault.notes}


async def _load(coord: Coordinator, vecs: Any, n: int, payload: Callable[[int], dict] = lambda i: {}) -> None:
    for i in range(0, n, 2000):
        await coord.upsert([Point(id=f"p{j}", payload=payload(j), vectors={"v": vecs[j].tolist()})
                            for j in range(i, min(n, i + 2000))])


def replica_kill(workdir: Path, seconds: float, concurrency: int, n: int = 20_000) -> dict:
    """Ray actors on milvus-lite, 3 shards x 2 replicas at the default write quorum (majority), writes through the
    shards' sequencers as the ingress sends them; a replica actor's PROCESS SIGKILLed every 10 s (Ray restarts it;
    the sequencer replays what it missed and compares it with its twin)."""
    import os
    import signal

    import ray

    from router.replication.ray_sequencer import start_ray_sequencers, stop_ray_sequencers
    from shards.actor import start_ray_shards, stop_ray_shards
    from shards.local import replica_specs

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="bench-chaos")
    cfg = CollectionConfig(name="chaos", shards=3, replicas=2, spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    specs = replica_specs(cfg, MilvusConfig(mode="lite"), workdir, None)
    clients = start_ray_shards(cfg, specs, detached=True)
    coord = Coordinator.from_clients(cfg, clients, timeout_s=5.0, poll_sequencer=False,
                                     sequencers=start_ray_sequencers(cfg, specs, workdir, timeout_s=5.0, detached=True))
    vecs = gaussian_mixture(n, DIM, seed=5)
    kills = max(1, int((seconds - 20) // 10))

    def pid_of(actor: Any) -> int:
        return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)

    async def inject(c: Coordinator) -> None:
        for k in range(kills):
            shard, replica = k % 3, (k // 3) % 2
            os.kill(await asyncio.to_thread(pid_of, c.shards[shard].clients[replica].actor), signal.SIGKILL)
            if k < kills - 1:
                await asyncio.sleep(10)

    try:
        asyncio.run(_load(coord, vecs, n))
        qs = [q.tolist() for q in query_vectors(200, DIM, seed=6, base_seed=5)]
        row = asyncio.run(run_load(coord, Fault("replica_kill", inject, notes=[
            f"{kills} replica processes SIGKILLed, 10 s apart"]), seconds=seconds, warmup_s=10,
            concurrency=concurrency, vecs=vecs, qs=qs))
    finally:
        stop_ray_sequencers([sh.sequencer for sh in coord.shards], drop=True)
        stop_ray_shards(clients)
        ray.shutdown()
    return {**row, "points": n, "backend": "milvus-lite, Ray actors, sequencer actors"}


def milvus_restart(workdir: Path, seconds: float, concurrency: int, n: int = 5_000) -> dict:
    """In-process shards on the bundled Milvus 2.3 server, 2 shards x 2 replicas at majority; the server stopped
    (process group) and started again on the same ports and data dir."""
    from cluster.services import free_port, start_milvus_server
    from shards.local import local_shards, replica_specs, stop_local_shards

    port, health, data = free_port(), free_port(), workdir / "milvus"
    server = {"h": start_milvus_server(data, port, health)}
    cfg = CollectionConfig(name="chaosm", shards=2, replicas=2, write_quorum="majority",
                           spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    uri = server["h"].uri
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="server", uri=uri), workdir, uri))
    coord = Coordinator.from_clients(cfg, clients, timeout_s=5.0)
    vecs = gaussian_mixture(n, DIM, seed=5)

    async def inject(c: Coordinator) -> None:
        await asyncio.to_thread(server["h"].stop)
        server["h"] = await asyncio.to_thread(start_milvus_server, data, port, health)

    try:
        asyncio.run(_load(coord, vecs, n))
        qs = [q.tolist() for q in query_vectors(200, DIM, seed=6, base_seed=5)]
        row = asyncio.run(run_load(coord, Fault("milvus_restart", inject, notes=[
            "every replica lives on the one server: while it is down no replica can answer, so reads fail (503 "
            "naming Milvus) instead of failing over"]), seconds=seconds, warmup_s=10, concurrency=concurrency,
            vecs=vecs, qs=qs))
    finally:
        try:
            stop_local_shards(clients, drop=True)
        finally:
            server["h"].stop()
    return {**row, "points": n, "backend": "Milvus 2.3 server, in-process shards"}


def es_outage(workdir: Path, seconds: float, concurrency: int, n: int = 5_000, outage_s: float = 15.0) -> dict:
    """milvus-lite shards and a noida-db metadata store stopped for `outage_s`; queries: a third unfiltered, a
    third with a filter Milvus runs (term on a keyword), a third with a full-text filter only Elasticsearch runs."""
    from cluster.services import free_port, start_elasticsearch
    from router.metadata.store import MetadataStore
    from shards.local import local_shards, replica_specs, stop_local_shards

    port, es_dir = free_port(), workdir / "es"
    es = {"h": start_elasticsearch(es_dir, port)}
    cfg = CollectionConfig(name="chaose", shards=2, replicas=2, write_quorum="majority",
                           metadata={"tag": "keyword", "note": "text"},
                           spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    store = MetadataStore(es["h"].uri, timeout_s=5)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), workdir, None))
    coord = Coordinator.from_clients(cfg, clients, timeout_s=5.0, metadata=store)
    vecs = gaussian_mixture(n, DIM, seed=5)

    def payload(i: int) -> dict:
        return {"tag": "ab"[i % 2], "note": f"note {i} about {'rain' if i % 3 else 'sun'}"}

    def pick(rng: random.Random, qs: list[list[float]]) -> QueryRequest:
        kind = rng.randrange(3)
        flt = None if kind == 0 else {"term": {"tag": "a"}} if kind == 1 else {"match": {"note": "rain"}}
        return vector_query(rng, qs, filter=flt) if flt else vector_query(rng, qs)

    def kind_of(req: QueryRequest) -> str:
        if req.filter is None:
            return "unfiltered"
        return "filter run by Milvus (term)" if "term" in req.filter else "filter needing Elasticsearch (match)"

    async def inject(c: Coordinator) -> None:
        await asyncio.to_thread(es["h"].stop)
        await asyncio.sleep(outage_s)
        es["h"] = await asyncio.to_thread(start_elasticsearch, es_dir, port)

    try:
        asyncio.run(_load(coord, vecs, n, payload))
        qs = [q.tolist() for q in query_vectors(200, DIM, seed=6, base_seed=5)]
        row = asyncio.run(run_load(coord, Fault("es_outage", inject, pick, notes=[
            f"Elasticsearch down {outage_s:.0f} s: full-text-filtered queries and every upsert answer 503 naming it; "
            "unfiltered and Milvus-run filters keep answering"], kind_of=kind_of), seconds=seconds, warmup_s=10,
            concurrency=concurrency, vecs=vecs, qs=qs, payload=payload))
        report = asyncio.run(coord.verify())
        row["drift_after"] = bool(report.drift)
        row["verify"] = {"shard_points": report.shard_points, "elasticsearch_documents": report.elasticsearch_documents}
    finally:
        try:
            stop_local_shards(clients, drop=True)
        finally:
            es["h"].stop()
    return {**row, "points": n, "backend": "milvus-lite + noida-db, in-process shards"}


def placement(coord: Coordinator) -> dict[str, Any]:
    """Where every shard replica's actor runs (the node id each reports from its Ray runtime context, checked
    against Ray's live node table) and whether each shard's replicas are on different nodes."""
    from shards.actor import alive_nodes

    alive = set(alive_nodes())

    async def all_nodes() -> dict[int, list[str | None]]:
        return {sh.shard: await sh.nodes() for sh in coord.shards}

    layout = asyncio.run(all_nodes())
    spread = all(all(x in alive for x in nodes) and len(set(nodes)) == len(nodes) for nodes in layout.values())
    return {"layout": layout, "nodes_alive": len(alive), "replicas_on_distinct_nodes": spread}


def node_loss(workdir: Path, seconds: float, concurrency: int, n: int = 5_000, down_s: float = 10.0,
              cluster: dict | None = None) -> dict:
    """A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`: two raylets, two
    object stores), shard actors placed with each shard's replicas on different nodes (checked against Ray's node
    table), 2 shards x 2 replicas at majority on milvus-lite; the worker node SIGKILLed (every process of its
    session) under load, then started again `down_s` later.

    `cluster`: use a running two-node cluster instead of starting one ({"address", "worker_pid", "temp"}, the
    token in RAY_AUTH_TOKEN); the worker this run starts again is stopped at its end, the head is left running."""
    import os
    import secrets
    import sys
    import tempfile

    if "ray" in sys.modules:  # Ray reads RAY_AUTH_MODE once, at import: this run needs a process of its own
        raise RuntimeError("node_loss must run in a fresh process: python -m deploy.bench_chaos node_loss")
    token = os.environ["RAY_AUTH_TOKEN"] if cluster else secrets.token_hex(32)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    import ray

    from cluster.services import RayNode, start_ray_node
    from shards.actor import start_ray_shards, stop_ray_shards
    from shards.local import replica_specs

    if cluster:
        temp = Path(cluster["temp"])
        head = None
        address = cluster["address"]
        nodes = {"worker": RayNode(int(cluster["worker_pid"]), address, False, "")}
    else:
        temp = Path(tempfile.mkdtemp(prefix="prism-ray-", dir="/tmp"))  # short: Unix socket paths
        head = start_ray_node(temp, token)
        address = head.address
        nodes = {"worker": start_ray_node(temp, token, address=address)}
    cfg = CollectionConfig(name="chaosn", shards=2, replicas=2, write_quorum="majority",
                           spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    clients = []
    try:
        ray.init(address=address, namespace="bench-node-loss", logging_level="ERROR",
                 _node_ip_address="127.0.0.1")
        clients = start_ray_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), workdir, None))
        coord = Coordinator.from_clients(cfg, clients, timeout_s=5.0)
        where = placement(coord)
        vecs = gaussian_mixture(n, DIM, seed=5)

        async def inject(c: Coordinator) -> None:
            await asyncio.to_thread(nodes["worker"].kill)
            await asyncio.sleep(down_s)
            nodes["worker"] = await asyncio.to_thread(start_ray_node, temp, token, address=address)

        asyncio.run(_load(coord, vecs, n))
        qs = [q.tolist() for q in query_vectors(200, DIM, seed=6, base_seed=5)]
        row = asyncio.run(run_load(coord, Fault("node_loss", inject, notes=[
            f"worker node killed (SIGKILL to every process of its session), back after {down_s:.0f} s; its replicas restart "
            "on the surviving node (started again by their clients once Ray finds them unschedulable) and are caught up there"]), seconds=seconds, warmup_s=10,
            concurrency=concurrency, vecs=vecs, qs=qs))
        counts = asyncio.run(coord.counts())
        row["replica_counts_equal"] = all(len({json.dumps(c, sort_keys=True) for c in row_}) == 1 for row_ in counts)
        row["placement_before"] = where
        row["placement_after"] = placement(coord)
    finally:
        try:
            if clients:
                stop_ray_shards(clients)
        finally:
            ray.shutdown()
            nodes["worker"].stop()
            if head is not None:
                head.stop()
    return {**row, "points": n, "backend": "milvus-lite, Ray actors on 2 Ray nodes"}


def node_loss_in_subprocess(seconds: float, concurrency: int, points: int = 5_000, timeout_s: float = 900,
                            cluster: dict | None = None, down_s: float = 10.0, token: str | None = None) -> dict:
    """`node_loss` in a fresh Python process (a process connects to one Ray cluster only); its row. `cluster` and
    `token`: a running two-node cluster to use (see `node_loss`)."""
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


class Restartable:
    """The ingress as the load sees it: every call goes to the current coordinator; `restart()` builds a new one
    the way a restarted ingress replica does (attach to the shard actors and sequencers by name) and drops the
    old one, whose in-flight calls finish."""

    def __init__(self, make: Callable[[], Coordinator]):
        self.make = make
        self.current = make()
        self.restarts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)

    async def restart(self) -> None:
        self.current = await asyncio.to_thread(self.make)
        self.restarts += 1


def ingress_restart(workdir: Path, seconds: float, concurrency: int, n: int = 5_000) -> dict:
    """Ray actors on milvus-lite, 2 shards x 2 replicas, write quorum 1, writes through the shards' sequencers;
    every 10 s one replica actor killed (Ray restarts it; it misses writes meanwhile) and the ingress restarted at
    the same moment, so the new ingress must learn from the sequencer which replica is behind."""
    import ray

    from router.replication.ray_sequencer import start_ray_sequencers, stop_ray_sequencers
    from shards.actor import start_ray_shards, stop_ray_shards
    from shards.local import replica_specs

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="bench-chaos")
    cfg = CollectionConfig(name="chaosi", shards=2, replicas=2, write_quorum=1,
                           spaces={"v": {"dim": DIM, "index": {"type": "HNSW"}}})
    specs = replica_specs(cfg, MilvusConfig(mode="lite"), workdir, None)

    def make() -> Coordinator:
        # Detached, as the ingress starts them: the actors outlive the coordinator that started them.
        return Coordinator.from_clients(cfg, start_ray_shards(cfg, specs, detached=True), timeout_s=5.0,
                                        sequencers=start_ray_sequencers(cfg, specs, workdir, timeout_s=5.0,
                                                                        detached=True))

    ingress = Restartable(make)
    vecs = gaussian_mixture(n, DIM, seed=5)
    restarts = max(1, int((seconds - 20) // 10))

    async def inject(_c: Any) -> None:
        for k in range(restarts):
            ray.kill(ingress.shards[k % 2].clients[(k // 2) % 2].actor, no_restart=False)
            await ingress.restart()
            if k < restarts - 1:
                await asyncio.sleep(10)

    try:
        asyncio.run(_load(ingress.current, vecs, n))
        qs = [q.tolist() for q in query_vectors(200, DIM, seed=6, base_seed=5)]
        fault = Fault("ingress_restart", inject, notes=[f"{restarts} ingress restarts, 10 s apart, each with a "
                                                        "replica actor killed at the same moment"])
        row = asyncio.run(run_load(ingress, fault, seconds=seconds, warmup_s=10, concurrency=concurrency,
                                   vecs=vecs, qs=qs))
        journal_seq = [sh.state.seq for sh in ingress.shards]
    finally:
        stop_ray_sequencers([sh.sequencer for sh in ingress.shards], drop=True)
        stop_ray_shards([sh.clients for sh in ingress.shards])
        ray.shutdown()
    return {**row, "points": n, "restarts": ingress.restarts, "shard_seq_at_end": journal_seq,
            "backend": "milvus-lite, Ray actors, sequencer actors"}


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
