"""Rebalancing a vector-routed collection: train coarse centroids over its routing space and move every point to
its nearest centroid's shard, with reads and writes on.

1. train: a sample of at most kmeans.MAX_SAMPLE points' routing-space vectors is read from the shards; k-means with
   a fixed seed (router.routing.kmeans.train), then the centroids' balanced assignment to shards (balance.assign);
2. switch writes: the trained placement takes every write from here on (a write to a point that exists deletes its
   copies elsewhere: router.collection.writes), and `moving` makes queries visit every shard and reads by id ask
   every shard; the writes that placed by the old placement are waited for;
3. copy: every point not on its new shard is copied there (every replica, quorum-acked), a page at a time under the
   points' locks, so no write to them lands between the read and the copy;
4. wait for the queries that chose their shards before the switch (by the placement before) to end, then delete
   the old copies, again under the locks, each checked again first (a write since may have put the point back on
   that shard); then queries route by the trained placement (`moving` off), which the catalog keeps.

Between 3 and 4 a moved point sits on two shards and the merge keeps one copy (queries see each point once); counts
come from Elasticsearch (one document a point) or a union of ids. A failure in 2-4 rolls back: the old placement
takes the writes again and the same move runs towards it (points written meanwhile included), so the collection
is as before, each point on its old shard once. One ingress never refuses a write: its per-point locks order writes
against the move. Several ingress replicas (sequencers): their writes are not ordered by this process's locks, so
writes pause through the catalog while points move, as a reshard's do, and they follow the placement there.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from cluster.config import parse_model
from cluster.errors import CollectionExists, InvalidRequest, ShardUnavailable, describe
from router.collection.catalog import Entry
from router.collection.coordinator import Coordinator
from router.routing import balance, kmeans
from router.routing.placement import Placement
from router.routing.settings import training_due
from router.schema.collections import RebalanceRequest

if TYPE_CHECKING:
    from router.collection.service import PrismService

COPY_BATCH = 1000
COPY_TRIES, COPY_RETRY_PAUSE_S = 3, 1.0  # a page's copy not acknowledged in time is sent again (`_copy`)
READ_BATCH = 2_000
SEED = 0  # k-means and the sample: the same points train the same centroids
log = logging.getLogger("prism.rebalance")


def adopt(coord: Coordinator, entry: Entry) -> Coordinator:
    """What a catalog entry records beyond the config, on its coordinator: a reshard's pause, a trained placement,
    a move under way (written by this or another ingress)."""
    coord.paused = entry.paused
    if entry.placement is not None and entry.placement.get("version") != coord.placement.version:
        coord.placement = Placement.from_dict(entry.placement)
        coord.placement_epoch += 1
    coord.moving = entry.moving
    return coord


def catalog_stamp(svc: PrismService, coord: Coordinator) -> Any:
    """Several ingress replicas: the catalog's stamp for the collection, read before `coord` is brought up to it
    (its placement, a move under way): a change after this read gives another stamp (Coordinator._routed)."""
    stamp = svc.catalog.stamp(coord.config.name)
    svc._sync(coord.config.name, coord)
    return stamp


def save_placement(svc: PrismService, coord: Coordinator, placement: Placement, *, moving: bool,
                   paused: str | None = None) -> None:
    """Record a trained placement (and whether points are moving to it) with the collection in the catalog."""
    name = coord.config.name
    svc._note(name, svc.catalog.update(name, lambda e: e.with_(placement=placement.to_dict(), moving=moving,
                                                               paused=paused)))


async def sample_vectors(coord: Coordinator, space: str, limit: int = kmeans.MAX_SAMPLE,
                         seed: int = SEED) -> np.ndarray:
    """At most `limit` points' vectors in `space` (rows), drawn evenly from every shard's ids (fixed seed)."""
    held = await asyncio.gather(*(sh.read(lambda c: c.ids(), scan=True) for sh in coord.shards))
    ids = sorted((pid, s) for s, shard_ids in enumerate(held) for pid in shard_ids)
    if len(ids) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), size=limit, replace=False))
        ids = [ids[i] for i in pick]
    by_shard: dict[int, list[str]] = defaultdict(list)
    for pid, s in ids:
        by_shard[s].append(pid)
    rows: list[list[float]] = []
    for s, pids in sorted(by_shard.items()):
        for i in range(0, len(pids), READ_BATCH):
            got = await coord.shards[s].read(lambda c, page=pids[i : i + READ_BATCH]: c.get(page, [space]),
                                           scan=True)
            rows += [p.vectors[space] for p in got.values() if p.vectors.get(space) is not None]
    return np.asarray(rows, dtype=np.float32)


async def train(coord: Coordinator, centroids: int) -> tuple[Placement, np.ndarray]:
    """The collection's placement trained on a sample of its points (k-means, then the balanced assignment), and
    how many of the sample each centroid holds."""
    placement = coord.placement
    x = await sample_vectors(coord, placement.space)
    if len(x) < centroids:
        raise InvalidRequest(f"collection {coord.config.name!r} holds {len(x)} points with a {placement.space!r} "
                             f"vector: training {centroids} centroids needs at least as many", field="routing")

    def fit() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = kmeans.train(x, centroids, metric=placement.metric, seed=SEED)
        labels = kmeans.nearest(kmeans.prepare(x, placement.metric), c, placement.metric)[0]
        sizes = np.bincount(labels, minlength=len(c))
        return c, balance.assign(c, sizes, coord.config.shards, metric=placement.metric), sizes

    c, owners, sizes = await asyncio.to_thread(fit)  # seconds of numpy: queries and writes go on meanwhile
    return placement.trained(c, owners), sizes


async def _switch(coord: Coordinator, placement: Placement) -> None:
    """Writes place by `placement` from here on, reads visit every shard; wait for the writes placed by the old."""
    coord.placement, coord.moving = placement, True
    coord.placement_epoch += 1
    coord.version += 1  # no cached answer spans the switch
    await coord.writes.settled(coord.placement_epoch)


async def _copy(shard: Any, rows: list) -> Any:
    """Upsert a page's copies on their new shard (see `_retried`): an upsert of the same rows applied twice is
    applied once, and the points' old copies stay where they are until every copy is acknowledged."""
    return await _retried(lambda: shard.upsert(rows), f"copying {len(rows)} points to shard {shard.shard}")


async def _retried(write: Any, what: str) -> Any:
    """A move's write (a copy, or deleting old copies: both idempotent), sent again when not acknowledged in time (a
    Milvus server slow under load), up to COPY_TRIES times with backoff."""
    for attempt in range(1, COPY_TRIES + 1):
        try:
            return await write()
        except ShardUnavailable as exc:
            if attempt == COPY_TRIES:
                raise
            log.warning("rebalance: %s again (%d of %d): %s", what, attempt + 1, COPY_TRIES, exc)
            await asyncio.sleep(COPY_RETRY_PAUSE_S * attempt)  # backoff: let a loaded server catch up


async def move_points(coord: Coordinator, placement: Placement, on_copy: Any = None) -> int:
    """Every point to its shard under `placement` (coord.placement, with writes following it already): copy the
    points off their shard, then delete the old copies; returns how many were copied."""
    copied: dict[int, list[str]] = {}
    n = 0
    for s, shard in enumerate(coord.shards):
        ids = sorted(await shard.read(lambda c: c.ids(), scan=True))
        for i in range(0, len(ids), COPY_BATCH):
            page = ids[i : i + COPY_BATCH]
            async with coord.writes.locked(page):
                rows = await shard.read(lambda c, page=page: c.export(page), scan=True)
                out: dict[int, list] = defaultdict(list)
                where: dict[str, list[int]] = {}
                for row in rows:
                    t = placement.shard_of(row.id, row.vectors, row.payload)
                    where[row.id] = [t]
                    if t != s:
                        out[t].append(row)
                # to every target at once (on a Milvus server each write waits out a time tick), all ended before
                # a failure is raised: a roll-back never races a copy still in flight
                done = await asyncio.gather(*(_copy(coord.shards[t], batch) for t, batch in out.items()),
                                            return_exceptions=True)
                for r in done:
                    if isinstance(r, BaseException):
                        raise r
                copied.setdefault(s, []).extend(r.id for batch in out.values() for r in batch)
                # every point's document names its shard now, still under the locks (no write of it in between);
                # those of the points that stay too (documents written before prism kept it)
                await coord.metadata.set_placed(where, wait=False)  # read back by id: real time
                n += sum(len(batch) for batch in out.values())
            if on_copy is not None:
                on_copy(n)
    coord.version += 1
    # A query that chose its shards before points began to move (by the placement before: a second training's
    # owners) may still be about to read a page's old copy: the old copies go once every such query has ended.
    await coord.reads.settled(coord.placement_epoch)
    space = [placement.space] if placement.space else []
    for s, ids in copied.items():
        for i in range(0, len(ids), COPY_BATCH):
            page = ids[i : i + COPY_BATCH]
            async with coord.writes.locked(page):
                # a write since the copy deleted the old copy, or put the point back here: check each again
                got = await coord.shards[s].read(lambda c, page=page: c.get(page, space), scan=True)
                gone = [pid for pid, p in got.items() if placement.shard_of(pid, p.vectors, p.payload) != s]
                if gone:
                    await _retried(lambda gone=gone: coord.shards[s].delete(gone),
                                   f"deleting {len(gone)} old copies on shard {s}")
    coord.version += 1
    return n


async def rebalance(svc: PrismService, name: str, body: Any = None, *, auto: bool = False) -> dict[str, Any]:
    """Train and move (the service holds no lock meanwhile: queries and writes go on). 409 while one runs."""
    parse_model(RebalanceRequest, {} if body is None else body, "rebalance request")
    t0 = time.perf_counter()
    coord = svc.coordinator(name)
    routing = coord.config.routing or {"method": "hash"}
    if routing.get("method") != "vector":
        raise InvalidRequest(f"collection {name!r} routes points by {routing.get('method', 'hash')}: only vector "
                             "routing trains centroids and rebalances", field="routing")
    progress = coord.progress
    if progress.state is not None:
        raise CollectionExists(f"collection {name!r} is being rebalanced already ({progress.state}); retry later",
                               field="name")
    old = coord.placement
    progress.state, progress.auto, progress.moved, progress.error = "training", auto, 0, None
    try:
        new, sizes = await train(coord, int(routing.get("centroids", 0)))
    except BaseException as exc:
        progress.state, progress.error = None, describe(exc) if isinstance(exc, Exception) else None
        raise
    progress.state = "moving"
    # Several ingress replicas: this process's point locks do not hold their writes back, so writes pause (through
    # the catalog, as a reshard's do) while points move; the one ingress of a single-ingress cluster never pauses.
    paused = f"rebalancing {name!r}" if svc.several_ingresses() else None
    save_placement(svc, coord, new, moving=True, paused=paused)  # a restart meanwhile knows points may sit anywhere
    coord.paused = paused
    await _switch(coord, new)
    try:
        if paused:
            await asyncio.sleep(svc.config.shard_timeout_s)  # writes other ingresses began before the pause end
        moved = await move_points(coord, new, on_copy=lambda n: setattr(progress, "moved", n))
    except BaseException as exc:
        progress.error = f"rolled back: {describe(exc) if isinstance(exc, Exception) else type(exc).__name__}"
        await _roll_back(svc, coord, old)
        raise
    coord.moving, coord.paused = False, None
    coord.placement_epoch += 1
    coord.version += 1
    save_placement(svc, coord, new, moving=False)
    progress.state, progress.moved, progress.seconds = None, moved, round(time.perf_counter() - t0, 2)
    return {"collection": name, "state": "ready", "centroids": len(new.centroids), "trained": new.version,
            "moved": moved, "seconds": progress.seconds,
            "spread": round(balance.spread(sizes, new.owners, new.shards), 3)}  # the sample's shard sizes


async def _roll_back(svc: PrismService, coord: Coordinator, old: Placement) -> None:
    """The old placement takes the writes again and every point goes back to its shard under it."""
    try:
        await _switch(coord, old)
        await move_points(coord, old)
        coord.moving = False
        coord.placement_epoch += 1
        save_placement(svc, coord, old, moving=False)
    except Exception as exc:  # noqa: BLE001 - the original failure is what the caller hears about
        log.error("rolling back the rebalance of %r failed (%s): queries visit every shard until it is rebalanced "
                  "again", coord.config.name, describe(exc))
        coord.progress.interrupted = True
    finally:
        coord.progress.state, coord.paused = None, None


def maybe_start(svc: PrismService, coord: Coordinator, added: int) -> None:
    """After an upsert of `added` points: start training in the background once a vector-routed collection that
    was never trained holds TRAIN_PER_CENTROID x centroids points (counted only when a running estimate says it
    may). Never blocks the write that triggers it."""
    routing = coord.config.routing or {}
    if routing.get("method") != "vector" or coord.placement.ready or coord.progress.state is not None:
        return
    name = coord.config.name
    running = svc.background.get(name)
    if running is not None and not running.done():
        return
    estimate = coord.progress.estimate  # an upper bound: updates count as new points
    coord.progress.estimate = (estimate or 0) + added
    if estimate is not None and not training_due(routing, coord.progress.estimate, False):
        return

    async def check_then_train() -> None:
        count = await coord.count()
        coord.progress.estimate = count
        if training_due(routing, count, coord.placement.ready) and coord.progress.state is None:
            await rebalance(svc, name, auto=True)

    task = asyncio.get_running_loop().create_task(check_then_train())
    svc.background[name] = task
    task.add_done_callback(lambda t: _ended(coord, t))


def _ended(coord: Coordinator, task: asyncio.Task) -> None:
    """A background training's end: its failure goes to the log and the collection's state, never lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        coord.progress.error = coord.progress.error or describe(exc)
        log.warning("background training of %r failed: %s", coord.config.name, describe(exc))

