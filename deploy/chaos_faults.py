"""The chaos benchmark's faults (deploy/bench_chaos.py), one function per run: each builds its shards (milvus-lite or
the Milvus 2.3 server, in-process or Ray actors), loads points, runs deploy/chaos_load.py's load with its fault
injected, tears everything down and returns the run's row."""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from deploy.chaos_load import DIM, Fault, preload, run_load, vector_query
from deploy.datasets import gaussian_mixture, query_vectors
from router.collection.coordinator import Coordinator
from router.schema.query import QueryRequest


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
        asyncio.run(preload(coord, vecs, n))
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
        asyncio.run(preload(coord, vecs, n))
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
        asyncio.run(preload(coord, vecs, n, payload))
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

        asyncio.run(preload(coord, vecs, n))
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
        asyncio.run(preload(ingress.current, vecs, n))
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
