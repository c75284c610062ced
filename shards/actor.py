"""The Ray actor wrapping a plain Shard (same methods, same answers) and the client that calls it.

`num_cpus=0`: on a 2-core machine, actors reserving whole CPUs starve each other and calls hang silently.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from cluster.config import CollectionConfig, PlacementConfig, shard_actor_options
from cluster.errors import ShardUnavailable
from shards.api import PointRow, ScoredId, SearchSpec, StoredPoint
from shards.backend import BackendSpec
from shards.shard import Shard

NAMESPACE = "prism"
# max_restarts=-1: a crashed replica comes back, reopens its persisted collections and is caught up by the
# coordinator before it serves reads again. Tasks are not retried: the coordinator fails over instead.
ShardActor = ray.remote(num_cpus=0, max_concurrency=4, max_restarts=-1, max_task_retries=0)(Shard)


def actor_name(collection: str, shard: int, replica: int) -> str:
    return f"prism:{collection}:s{shard}:r{replica}"


class RayShardClient:
    """`ShardApi` over a ShardActor; actor death becomes ShardUnavailable, shard errors arrive as their own types."""

    def __init__(self, actor: Any, shard: int, replica: int):
        self.actor = actor
        self.shard = shard
        self.replica = replica

    async def _await(self, ref: Any) -> Any:
        try:
            return await ref
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise ShardUnavailable(f"shard {self.shard} replica {self.replica} actor is gone: {exc}",
                                   shards=[self.shard]) from exc

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

    async def ids(self) -> list[str]:
        return await self._await(self.actor.ids.remote())

    async def scan(self, after: str, limit: int, expr: str | None = None) -> list[str]:
        return await self._await(self.actor.scan.remote(after, limit, expr))

    async def count(self) -> dict[str, int]:
        return await self._await(self.actor.count.remote())

    async def ping(self) -> dict[str, int]:
        return await self._await(self.actor.ping.remote())


def start_ray_shards(config: CollectionConfig, specs: list[list[BackendSpec]], *, detached: bool = False,
                     create: bool = True, first_shard: int = 0,
                     placement: PlacementConfig | None = None) -> list[list[RayShardClient]]:
    """Start (or find, by name) one actor per shard replica and open its collections.

    `specs[i]` belongs to shard `first_shard + i` (resharding starts only the added shards)."""
    clients: list[list[RayShardClient]] = []
    # SPREAD places a shard's replicas on different Ray nodes when there are several (one node here: no-op).
    opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True,
                            **shard_actor_options(placement or PlacementConfig())}
    if detached:
        opts["lifetime"] = "detached"
    for i, replica_specs in enumerate(specs):
        s = first_shard + i
        row = []
        for r, spec in enumerate(replica_specs):
            actor = ShardActor.options(name=actor_name(config.name, s, r), **opts).remote(config, s, r, spec)
            row.append(RayShardClient(actor, s, r))
        clients.append(row)
    if create:
        ray.get([c.actor.create.remote() for row in clients for c in row])
    return clients


def stop_ray_shards(clients: list[list[RayShardClient]], drop: bool = False) -> None:
    for row in clients:
        for c in row:
            try:
                if drop:
                    ray.get(c.actor.drop.remote())
            finally:
                ray.kill(c.actor, no_restart=True)
