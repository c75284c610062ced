"""The Ray actor wrapping a plain Shard (same methods, same answers) and the client that calls it. (A shard's
sequencer runs in its own actor, router.replication.ray_sequencer, over these replica actors.)

`num_cpus=0`: on a 2-core machine, actors reserving whole CPUs starve each other and calls hang silently.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from cluster.actor_options import replica_node, shard_actor_options
from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings, PlacementConfig
from cluster.errors import ShardUnavailable
from shards.api import EXPORT_PAGE, PointRow, ScoredId, SearchSpec, StoredPoint
from shards.backend import BackendSpec
from shards.shard import Shard

NAMESPACE = "prism"
# Worker threads for searches, apart from the actor's other calls: a call waiting for the batch in flight (group
# commit, shards.group_commit) holds its thread, so with the actor's 4 at most 3 callers could join one batch, and
# writes and pings would wait behind them.
SEARCH_THREADS = 16


class PlacedShard(Shard):
    """A Shard that also says which Ray node it runs on, for status and placement checks."""

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    @ray.method(concurrency_group="search")
    def search_many(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        return super().search_many(specs)


# max_restarts=-1: a crashed replica comes back, reopens its persisted collections and is caught up by the
# coordinator before it serves reads again. Tasks are not retried: the coordinator fails over instead.
ShardActor = ray.remote(num_cpus=0, max_concurrency=4, concurrency_groups={"search": SEARCH_THREADS}, max_restarts=-1,
                        max_task_retries=0)(PlacedShard)


def actor_name(collection: str, shard: int, replica: int) -> str:
    return f"prism:{collection}:s{shard}:r{replica}"


class RayShardClient:
    """`ShardApi` over a ShardActor; actor death becomes ShardUnavailable, shard errors arrive as their own types."""

    def __init__(self, actor: Any, shard: int, replica: int, respawn: Callable[[], Any] | None = None,
                 name: str | None = None):
        self.actor = actor
        self.name = name
        self.shard = shard
        self.replica = replica
        self.respawn = respawn  # starts this replica's actor again, placed on a node alive now

    async def _await(self, ref: Any) -> Any:
        try:
            return await ref
        except ray.exceptions.ActorUnschedulableError as exc:
            # Its node is gone (the actor is pinned to it): start it on a live node instead. It reopens the same
            # collections; the router's heal probe reaches it and replays the writes it missed.
            await self._replace()
            raise ShardUnavailable(f"shard {self.shard} replica {self.replica}: its Ray node is gone; started again "
                                   f"on a live node ({exc})", shards=[self.shard]) from exc
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise ShardUnavailable(f"shard {self.shard} replica {self.replica} actor is gone: {exc}",
                                   shards=[self.shard]) from exc

    async def _replace(self, free_within_s: float = 10.0) -> None:
        """Kill the stranded actor, wait for Ray to free its name (bounded), start it again on a live node."""
        if self.respawn is None:
            return
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        deadline = time.monotonic() + free_within_s
        while self.name and time.monotonic() < deadline:
            try:
                ray.get_actor(self.name, namespace=NAMESPACE)
            except ValueError:
                break  # the name is free: the old actor is gone
            await asyncio.sleep(0.2)  # polling Ray's actor table, with a deadline
        self.actor = self.respawn()

    async def search_many(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        return await self._await(self.actor.search_many.remote(specs))

    async def get(self, ids: Sequence[str], with_vectors: Sequence[str] = ()) -> dict[str, StoredPoint]:
        return await self._await(self.actor.get.remote(ids, with_vectors))

    async def upsert(self, points: Sequence[PointRow], wait: bool = True) -> int:
        return await self._await(self.actor.upsert.remote(points, wait))

    async def delete(self, ids: Sequence[str], wait: bool = True) -> int:
        return await self._await(self.actor.delete.remote(ids, wait))

    async def export(self, ids: Sequence[str]) -> list[PointRow]:
        return await self._await(self.actor.export.remote(ids))

    async def export_page(self, after: str, limit: int = EXPORT_PAGE) -> list[PointRow]:
        return await self._await(self.actor.export_page.remote(after, limit))

    async def ids(self) -> list[str]:
        return await self._await(self.actor.ids.remote())

    async def scan(self, after: str, limit: int, expr: str | None = None) -> list[str]:
        return await self._await(self.actor.scan.remote(after, limit, expr))

    async def count(self) -> dict[str, int]:
        return await self._await(self.actor.count.remote())

    async def ping(self) -> dict[str, Any]:
        return await self._await(self.actor.ping.remote())

    async def digest(self, rescan_after_s: float | None = None) -> dict[str, Any]:
        return await self._await(self.actor.digest.remote(rescan_after_s))

    async def bucket_hashes(self, buckets: Sequence[int]) -> dict[str, int]:
        return await self._await(self.actor.bucket_hashes.remote(buckets))

    async def node(self) -> str | None:
        return await self._await(self.actor.node.remote())


def alive_nodes() -> list[str]:
    """Ids of the Ray nodes alive now, in a stable order."""
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def placement_strategy(shard: int, replica: int, nodes: list[str]) -> Any:
    """Node affinity to `replica_node`; SPREAD on a single node, where there is nothing to choose.

    Hard affinity: measured on Ray 2.60, a soft one sends actors to the head node whenever the chosen node is
    still starting a worker (so replicas of a shard ended up together). A replica whose node is lost becomes
    unschedulable and its client starts it again on a live node (`RayShardClient._replace`)."""
    node = replica_node(shard, replica, nodes)
    if node is None:
        return "SPREAD"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node, soft=False)


def actor_options(detached: bool, placement: PlacementConfig | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True,
                            **shard_actor_options(placement or PlacementConfig())}
    if detached:
        opts["lifetime"] = "detached"
    return opts


def replica_client(config: CollectionConfig, s: int, r: int, spec: BackendSpec, opts: dict[str, Any],
                   nodes: list[str], batching: BatchSettings | None = None) -> RayShardClient:
    """A client of replica r of shard s: its actor found by name, or started (placed on `nodes`)."""
    def spawn(nodes: list[str]) -> Any:
        return ShardActor.options(name=actor_name(config.name, s, r), **opts,
                                  scheduling_strategy=placement_strategy(s, r, nodes)).remote(config, s, r, spec,
                                                                                              batching)

    return RayShardClient(spawn(nodes), s, r, name=actor_name(config.name, s, r),
                          respawn=lambda: spawn(alive_nodes()))


def start_ray_shards(config: CollectionConfig, specs: list[list[BackendSpec]], *, detached: bool = False,
                     create: bool = True, first_shard: int = 0,
                     placement: PlacementConfig | None = None,
                     batching: BatchSettings | None = None) -> list[list[RayShardClient]]:
    """Start (or find, by name) one actor per shard replica and open its collections.

    `specs[i]` belongs to shard `first_shard + i` (resharding starts only the added shards). `batching`: the
    replicas' group commit (read by an actor when it starts; one found by name keeps its own)."""
    opts, nodes = actor_options(detached, placement), alive_nodes()
    clients = [[replica_client(config, first_shard + i, r, spec, opts, nodes, batching) for r, spec in enumerate(row)]
               for i, row in enumerate(specs)]
    if create:
        _create_all([c for row in clients for c in row])
    return clients


def _create_all(clients: list[RayShardClient], within_s: float = 120.0) -> None:
    """Open every replica's collections; a replica whose actor is restarting (it crashed) is asked again until it
    is back, within `within_s`: an ingress starting meanwhile must not fail for it."""
    deadline = time.monotonic() + within_s
    pending = clients
    while pending:
        refs = [c.actor.create.remote() for c in pending]
        retry = []
        for c, ref in zip(pending, refs):
            try:
                ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                retry.append(c)
        if retry:
            time.sleep(0.2)  # polling a restarting actor, with a deadline
        pending = retry


def stop_ray_shards(clients: list[list[RayShardClient]], drop: bool = False) -> None:
    for row in clients:
        for c in row:
            try:
                if drop:
                    ray.get(c.actor.drop.remote())
            finally:
                ray.kill(c.actor, no_restart=True)
