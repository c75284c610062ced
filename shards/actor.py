"""The Ray actor wrapping a plain Shard (same methods, same answers) and the client that calls it.

`num_cpus=0`: on a 2-core machine, actors reserving whole CPUs starve each other and calls hang silently.
"""
from __future__ import annotations

from typing import Any

import ray

from cluster.config import CollectionConfig, PlacementConfig, shard_actor_options
from cluster.errors import ShardUnavailable
from shards.backend import BackendSpec
from shards.shard import Shard

NAMESPACE = "prism"
# max_restarts=-1: a crashed replica comes back, reopens its persisted collections and is caught up by the
# coordinator before it serves reads again. Tasks are not retried: the coordinator fails over instead.
ShardActor = ray.remote(num_cpus=0, max_concurrency=4, max_restarts=-1, max_task_retries=0)(Shard)


def actor_name(collection: str, shard: int, replica: int) -> str:
    return f"prism:{collection}:s{shard}:r{replica}"


class RayShardClient:
    """Calls a ShardActor; actor death becomes ShardUnavailable, shard errors arrive as their own types."""

    def __init__(self, actor: Any, shard: int, replica: int):
        self.actor = actor
        self.shard = shard
        self.replica = replica

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self.actor, method).remote(*args, **kwargs)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise ShardUnavailable(f"shard {self.shard} replica {self.replica} actor is gone: {exc}",
                                   shards=[self.shard]) from exc


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
