"""The Ray shell of a shard's sequencer (router.replication.sequencer): the actor that hosts it over the shard's
replica actors (shards.actor), keeps its journal on the head node's disk, and the client that calls it.

`num_cpus=0`, as the replica actors: on a 2-core machine actors reserving whole CPUs starve each other.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import ray

from cluster.collection_spec import CollectionConfig
from cluster.config import PlacementConfig, ReplicationSettings, SnapshotSettings
from cluster.errors import ShardUnavailable
from router.replication.replicas import ReplicatedShard
from router.replication.sequencer import Journal, Sequencer
from shards.actor import NAMESPACE, actor_options, alive_nodes, replica_client
from shards.backend import BackendSpec


def sequencer_name(collection: str, shard: int) -> str:
    return f"prism:{collection}:s{shard}:seq"


def sequencer_dir(data_path: Path, collection: str, shard: int) -> Path:
    return Path(data_path) / "sequencer" / collection / f"s{shard}"


class SequencerHost(Sequencer):
    """A shard's sequencer (router.replication.sequencer) over the replica actors, with a journal in `journal_dir`.
    Restarted by Ray after a crash, it reloads the journal."""

    def __init__(self, config: CollectionConfig, shard: int, specs: list[BackendSpec], journal_dir: str,
                 timeout_s: float, detached: bool, placement: PlacementConfig | None,
                 replication: ReplicationSettings | None = None, snapshots: SnapshotSettings | None = None,
                 data_path: str | None = None):
        opts, nodes = actor_options(detached, placement), alive_nodes()
        clients = [replica_client(config, shard, r, spec, opts, nodes) for r, spec in enumerate(specs)]
        super().__init__(ReplicatedShard(shard, clients, key=f"{config.name}/{shard}",
                                         write_quorum=config.write_quorum, timeout_s=timeout_s, hedge=False,
                                         journal=Journal(Path(journal_dir))),
                         heal_interval_s=(replication or ReplicationSettings()).heal_interval_s)
        settings = replication or ReplicationSettings()
        # Anti-entropy runs in this sequencer's heal passes (router.replication.repair.Repairs.anti_entropy).
        self.host.anti_entropy_interval_s = settings.anti_entropy_interval_s or None
        self.host.digest_rescan_s = settings.digest_rescan_s
        if snapshots is not None and snapshots.archive.enabled:  # this sequencer is its shard's only archive writer
            from cluster.snapshot_store import SnapshotStore
            from router.replication.archive import archive_for

            store = SnapshotStore(snapshots.url or Path(data_path or ".") / "snapshots", snapshots.options)
            self.host.start_archive(archive_for(store, config.name, shard, self.host.epoch, snapshots.archive))

    async def close(self, drop: bool = False) -> None:
        """Close the journal; `drop`: delete it (the collection or the shard is gone)."""
        self.host.journal.close()
        if drop:
            shutil.rmtree(self.host.journal.path, ignore_errors=True)


# Restarted after a crash (it reloads its journal); tasks are not retried: a write the caller saw fail may be
# replayed from the journal, which is the same as once (upserts and deletes are idempotent).
SequencerActor = ray.remote(num_cpus=0, max_concurrency=64, max_restarts=-1, max_task_retries=0)(SequencerHost)


def head_node() -> str | None:
    """The Ray head node's id (sequencers keep their journals on its disk, with the data dir)."""
    for n in ray.nodes():
        if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {}):
            return n["NodeID"]
    return None


class RaySequencerClient:
    """router.replication.sequencer's sequencer API over a SequencerActor; `initial` is its view when this client was made."""

    def __init__(self, actor: Any, shard: int, initial: Any):
        self.actor = actor
        self.shard = shard
        self.initial = initial

    async def _await(self, ref: Any) -> Any:
        try:
            return await ref
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise ShardUnavailable(f"shard {self.shard}: its sequencer is unavailable (Ray restarts it): {exc}",
                                   shards=[self.shard]) from exc

    async def write(self, kind: str, args: Any, wait: bool = True) -> Any:
        return await self._await(self.actor.write.remote(kind, args, wait))

    async def heal(self, probe_now: bool = False) -> tuple[int, int, Any]:
        return await self._await(self.actor.heal.remote(probe_now))

    async def compare(self) -> Any:
        return await self._await(self.actor.compare.remote())

    async def lock(self, owner: str, ids: list[str], lease_s: float, wait_s: float) -> list[str]:
        return await self._await(self.actor.lock.remote(owner, ids, lease_s, wait_s))

    async def unlock(self, owner: str, ids: list[str]) -> list[str]:
        return await self._await(self.actor.unlock.remote(owner, ids))

    async def mark(self) -> Any:
        return await self._await(self.actor.mark.remote())

    async def ship_archive(self) -> Any:
        return await self._await(self.actor.ship_archive.remote())

    async def cut(self, since: int) -> Any:
        return await self._await(self.actor.cut.remote(since))


def start_ray_sequencers(config: CollectionConfig, specs: list[list[BackendSpec]], data_path: Path, *,
                         timeout_s: float, detached: bool = False, first_shard: int = 0,
                         placement: PlacementConfig | None = None,
                         replication: ReplicationSettings | None = None,
                         snapshots: SnapshotSettings | None = None) -> list[RaySequencerClient]:
    """Start (or find, by name) one sequencer per shard, on the head node, and read each one's view."""
    actors = launch_ray_sequencers(config, specs, data_path, timeout_s=timeout_s, detached=detached,
                                   first_shard=first_shard, placement=placement, replication=replication,
                                   snapshots=snapshots)
    views = _views(actors)
    return [RaySequencerClient(a, first_shard + i, v) for i, (a, v) in enumerate(zip(actors, views))]


def launch_ray_sequencers(config: CollectionConfig, specs: list[list[BackendSpec]], data_path: Path, *,
                          timeout_s: float, detached: bool = False, first_shard: int = 0,
                          placement: PlacementConfig | None = None,
                          replication: ReplicationSettings | None = None,
                          snapshots: SnapshotSettings | None = None) -> list[Any]:
    """The sequencer actors of these shards, started (or found, by name) without waiting for them: an ingress
    starting up launches them beside the replica actors, so their processes start together, and
    `start_ray_sequencers` then finds them by name. A sequencer calls no replica until it is first asked (its
    view), so launching it early changes nothing but when its process starts."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    head = head_node()
    if head is not None:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=head, soft=False)
    return [SequencerActor.options(name=sequencer_name(config.name, first_shard + i), **opts).remote(
        config, first_shard + i, row, str(sequencer_dir(data_path, config.name, first_shard + i)), timeout_s,
        detached, placement, replication, snapshots, str(data_path)) for i, row in enumerate(specs)]


def _views(actors: list[Any], within_s: float = 120.0) -> list[Any]:
    """Each sequencer's view; one that is restarting (it crashed: it reloads its journal) is asked again until it
    answers, within `within_s`, as `_create_all` does for replicas: an ingress starting meanwhile must not fail."""
    deadline, views = time.monotonic() + within_s, {}
    while len(views) < len(actors):
        for i, a in enumerate(actors):
            if i in views:
                continue
            try:
                views[i] = ray.get(a.view.remote())
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
        if len(views) < len(actors):
            time.sleep(0.2)  # polling a restarting actor, with a deadline
    return [views[i] for i in range(len(actors))]


def stop_ray_sequencers(sequencers: list[RaySequencerClient], drop: bool = False) -> None:
    for sq in sequencers:
        try:
            ray.get(sq.actor.close.remote(drop), timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass
        ray.kill(sq.actor, no_restart=True)
