"""Ray options of prism's actors and where shard replicas are placed (the config's `placement` section says what
they may use)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.config import PlacementConfig

HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource (1 unit)


def shard_actor_options(placement: "PlacementConfig") -> dict:
    """Ray options of a shard replica actor: never whole CPUs (2-core machines hang) and no GPU. Where each one
    runs (its scheduling strategy) is chosen per replica by `shards.actor.placement_strategy`."""
    return {"num_cpus": 0}


def replica_node(shard: int, replica: int, nodes: Sequence[str]) -> str | None:
    """The node a shard replica is placed on: node (shard + replica) mod N of the alive nodes (a stable order), so
    a shard's replicas land on different nodes while there are as many nodes as replicas, and shards' first
    replicas rotate over the nodes. None with fewer than 2 nodes (nothing to choose)."""
    if len(nodes) < 2:
        return None
    return nodes[(shard + replica) % len(nodes)]


def encoder_actor_options(placement: "PlacementConfig") -> dict:
    opts: dict = {"num_cpus": 0}
    if placement.encoder_num_gpus:
        opts["num_gpus"] = placement.encoder_num_gpus
    return opts
