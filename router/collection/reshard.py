"""Resharding: change a collection's shard count, moving only the points whose ring owner changes; reads go on.

1. start the added shards (growing), pause writes on the old layout;
2. plan: every id whose owner under the new ring differs from the shard holding it;
3. copy the moved points to their new shards (every replica, quorum-acked);
4. switch reads and writes to the new layout (a moved point still sits in its old shard too, and the heap merge
   keeps one copy, so queries see every point exactly once throughout);
5. delete the old copies and drop the shards a shrink removed.

A failure in 1-3 rolls back: writes resume on the old layout, copies already made onto shards the old layout
keeps are deleted again, and the started shards are stopped and dropped. A failure in 5 leaves the new layout
serving and says what is left over.

Several ingress replicas: the pause is written to the shared catalog (router/collection/catalog.py) first, so every ingress
refuses writes (each reads the catalog right before a write reaches the shards), and points are planned only after
the shard timeout, by when writes another ingress began before the pause have ended; the new layout is written to
the catalog at the switch, merged with fields other ingresses mapped meanwhile, and they follow it.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import time

from cluster.collection_spec import CollectionConfig
from cluster.config import parse_model
from cluster.errors import BackendError, InvalidRequest, ShardUnavailable, describe
from cluster.ring import HashRing
from router.collection import limits as strict
from router.collection.catalog import Entry
from router.collection.coordinator import Coordinator
from router.replication.replicas import replicate
from shards.api import ShardApi
from shards.local import replica_specs

COPY_BATCH = 500
DELETE_BATCH = 1000
Moves = dict[tuple[int, int], list[str]]


async def plan_moves(coord: Coordinator, new_shards: int) -> Moves:
    """(from shard, to shard) -> ids whose ring owner changes when the shard count becomes `new_shards`."""
    ring = HashRing(range(new_shards))
    moves: Moves = defaultdict(list)
    held = await asyncio.gather(*(sh.read(lambda c: c.ids(), scan=True) for sh in coord.shards))
    for s, ids in enumerate(held):
        for pid in ids:
            t = int(ring.get(pid))
            if t != s:
                moves[(s, t)].append(pid)
    return moves


async def copy_points(source: Coordinator, target: Coordinator, moves: Moves,
                      copied: dict[int, list[str]] | None = None, batch: int = COPY_BATCH) -> int:
    """Copy moved points from `source`'s shards into `target`'s; `copied` records {target shard: ids} as it goes."""
    n = 0
    for (s, t), ids in moves.items():
        for i in range(0, len(ids), batch):
            rows = await source.shards[s].read(lambda c, chunk=ids[i : i + batch]: c.export(chunk), scan=True)
            await target.shards[t].upsert(rows)
            if copied is not None:
                copied.setdefault(t, []).extend(r.id for r in rows)
            n += len(rows)
    return n


async def reshard(old: Coordinator, config: CollectionConfig, *,
                  start_added: Callable[[], Sequence[Sequence[ShardApi]]],
                  stop: Callable[[Sequence[Sequence[ShardApi]], bool], None],
                  switch: Callable[[Coordinator], None],
                  start_sequencers: Callable[[], Sequence[Any] | None] | None = None,
                  stop_sequencers: Callable[[Sequence[Any], bool], None] | None = None) -> int:
    """Move `old`'s collection to `config.shards` shards; returns how many points moved.

    `start_added()` starts the shards beyond the old count (growing only), `stop(clients, drop)` stops shards,
    `switch(new)` makes the new coordinator the one that serves; `start_sequencers()` starts the added shards'
    sequencers (None: this process orders their writes), `stop_sequencers` stops removed shards' ones."""
    n_old, n_new = old.config.shards, config.shards
    added_clients = list(await asyncio.to_thread(start_added)) if n_new > n_old else []
    added_seqs = await asyncio.to_thread(start_sequencers) if n_new > n_old and start_sequencers else None
    tmpl = old.shards[0]
    added = replicate(config, added_clients, first_shard=n_old, timeout_s=tmpl.timeout_s, clock=tmpl.state.clock,
                      observe=tmpl.observe, batching=tmpl.batching, hedge=tmpl.hedge, sequencers=added_seqs,
                      poll_sequencer=tmpl.poll_sequencer, read_replicas=tmpl.state.read_replicas)
    new = old.resized(config, old.shards[:n_new] + added)
    old.paused = f"resharding to {n_new} shards"
    copied: dict[int, list[str]] = {}
    try:
        # This process's writes that passed the pause check before it was set land before the moves are planned
        # (another ingress's writes: reshard_collection waits them out before calling this)
        await old.writes.settled(old.placement_epoch + 1)
        moves = await plan_moves(old, n_new)
        moved = await copy_points(old, new, moves, copied)
    except BaseException:
        if added_seqs and stop_sequencers is not None:
            await asyncio.to_thread(stop_sequencers, added_seqs, True)
        await _roll_back(old, copied, added_clients, stop)
        raise
    switch(new)
    try:
        for (s, _), ids in moves.items():
            if s < n_new:
                for i in range(0, len(ids), DELETE_BATCH):
                    await new.shards[s].delete(ids[i : i + DELETE_BATCH])
        if n_new < n_old:
            removed = [sh.sequencer for sh in old.shards[n_new:] if sh.sequencer is not None]
            if removed and stop_sequencers is not None:
                await asyncio.to_thread(stop_sequencers, removed, True)
            await asyncio.to_thread(stop, [sh.clients for sh in old.shards[n_new:]], True)
    except Exception as exc:  # noqa: BLE001 - the new layout serves; say what is left over
        raise BackendError(f"resharded to {n_new} shards, but removing the moved points' old copies failed "
                           f"({describe(exc)}): queries are exact (the merge keeps one copy), counts over-report "
                           "until the copies are deleted") from exc
    return moved


async def _roll_back(old: Coordinator, copied: dict[int, list[str]], added_clients: list,
                     stop: Callable[[Sequence[Sequence[ShardApi]], bool], None]) -> None:
    """Undo steps 1-3: the old layout serves and takes writes again, exactly as before."""
    try:
        for t, ids in copied.items():
            if t < old.config.shards:  # a shard both layouts share: the copies there are strays now
                for i in range(0, len(ids), DELETE_BATCH):
                    await old.shards[t].delete(ids[i : i + DELETE_BATCH])
        if added_clients:
            await asyncio.to_thread(stop, added_clients, True)
    finally:
        old.paused = None


async def reshard_collection(svc: Any, name: str, shards: int) -> dict[str, Any]:
    """The service's reshard (router.collection.service.PrismService, which holds its lock): pause writes in the catalog,
    let other ingresses' writes drain, move the points, switch the layout in the catalog."""
    t0 = time.perf_counter()
    old = svc.coordinator(name)
    method = old.config.routing.get("method", "hash")
    if method != "hash":  # plan_moves moves points by the ring over ids, which is not where these points live
        what = f"key {old.config.routing.get('field')!r}" if method == "key" else "vector centroids"
        raise InvalidRequest(f"collection {name!r} routes points by {what}: resharding moves points by the ring over "
                             "their ids, so only hash-routed collections can be resharded (make a collection with the "
                             "shard count you want and ingest into it)", field="shards")
    cfg = parse_model(CollectionConfig, {**old.config.model_dump(), "shards": shards}, "reshard")
    strict.check_layout(cfg, svc.config.limits)
    if cfg.shards == old.config.shards:
        return {"collection": name, "shards": cfg.shards, "moved": 0, "seconds": 0.0}
    n_old = old.config.shards
    specs = replica_specs(cfg, svc.config.milvus, svc.config.data_path, svc.server_uri)
    reason = f"resharding to {cfg.shards} shards"

    def pause(e: Entry) -> Entry:
        if e.paused or e.config.shards != n_old:
            raise ShardUnavailable(f"collection {name!r} is being resharded through another ingress "
                                   f"({e.paused or 'its layout changed'}); retry later", shards=[])
        return e.with_(paused=reason)

    svc._note(name, svc.catalog.update(name, pause))
    old.paused = reason

    def start_added() -> list:
        return svc.start_shards(cfg, specs[n_old:], create=True, first_shard=n_old)

    def start_added_sequencers() -> list | None:
        if svc.start_sequencers is None:
            return None
        return svc.start_sequencers(cfg, specs[n_old:], first_shard=n_old)

    def switch(new: Coordinator) -> None:
        svc._attach(new)
        entry = svc.catalog.update(name, lambda e: e.with_(paused=None, config=cfg.model_copy(
            update={"metadata": {**cfg.metadata, **e.config.metadata}})))
        new.config.metadata.update(entry.config.metadata)
        svc.coordinators[name] = new
        svc._note(name, entry)

    try:
        if svc.several_ingresses():  # other ingress replicas: their writes begun before the pause end
            await asyncio.sleep(svc.config.shard_timeout_s)
        moved = await reshard(old, cfg, start_added=start_added, stop=svc.stop_shards, switch=switch,
                              start_sequencers=start_added_sequencers, stop_sequencers=svc.stop_sequencers)
    except BaseException:
        if svc.coordinators.get(name) is old:  # rolled back: the old layout takes writes again
            old.paused = None
            svc._note(name, svc.catalog.update(name, lambda e: e.with_(paused=None)))
        raise
    return {"collection": name, "shards": cfg.shards, "moved": moved, "seconds": round(time.perf_counter() - t0, 2)}
