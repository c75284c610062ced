"""One collection's writes: upsert, partial vector updates, delete (by id and by filter), and dynamic mapping.

Each write: refused while the collection is paused (a reshard) or its layout is stale (another ingress), the whole
batch validated before anything is written (a key-routed collection's key field too), embedded, written through
Elasticsearch first (router.metadata.steps), then to the owning shards by the collection's placement. A point whose
owner changed (its key or its routing-space vector did) moves: the new copy is written, and once acknowledged the old
one is deleted; a point Elasticsearch holds no document for is new (no old copy), one whose document names its
shards has its old copy there, any other (a document without them; a rebalance moving points; no Elasticsearch) is
deleted from every other shard. Each write notes the placement it placed by, so that a rebalance
can wait for the writes that placed by the previous one (settled()). Per-point
locks keep a read-modify-write (a vector update) from undoing another write of this process to the same point; with
several ingress replicas, a routed point's move (read its record, write, delete the old copy) also holds its lock on
its ring shard's sequencer (router.collection.locks.shared), so two moves at once cannot leave two copies; so does
a routed point's delete (a move's new copy written after it would have no document).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from cluster.collection_spec import METADATA_TYPES, SHARD_FIELD, reserved_field
from cluster.errors import InvalidRequest, ShardUnavailable
from router.collection import placing
from router.collection.locks import InFlight, KeyedLocks, shared
from router.encoding.vectors import merge_updates
from router.filters.dsl import normalise_meta
from router.filters.mapping import FIELD_RE, infer_fields
from router.routing.keys import key_of
from router.routing.placement import Placement
from router.schema.points import DeleteResponse, Point, UpsertResponse

if TYPE_CHECKING:
    from router.collection.coordinator import Coordinator


class Writes:
    """The write paths of one coordinator (its shards, ring, encoders and metadata steps)."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self._mapping_lock = asyncio.Lock()
        # A partial vector update reads a point and writes it back: no other write of this process to that point
        # may land in between (it would be undone). Several ingress replicas: see docs/operations.md.
        self._points = KeyedLocks()
        self._inflight = InFlight()  # writes in flight, by the placement epoch they placed by

    def _writable(self) -> None:
        coord = self.coord
        if coord.before_write is not None:
            coord.before_write()
        if coord.paused:
            raise ShardUnavailable(f"writes to {coord.config.name!r} are paused: {coord.paused}; retry shortly",
                                   shards=list(range(coord.config.shards)))

    async def upsert(self, points: Sequence[Point], wait: bool = True) -> UpsertResponse:
        """Validate the whole batch (nothing is written on bad input), embed, index in Elasticsearch, write the
        shards by ring. `wait`: return once every acknowledging replica serves the points to searches (and
        Elasticsearch to filters); else at acknowledgement, visible within the backend's staleness bound."""
        seen: set[str] = set()
        for i, p in enumerate(points):  # one id twice would land on two shards when its two copies' keys differ
            if p.id in seen:
                raise InvalidRequest(f"points[{i}].id {p.id!r} appears twice in one request", field=f"points[{i}].id")
            seen.add(p.id)
        async with self._points.hold(p.id for p in points):
            return await self._upsert(points, wait)

    @contextlib.asynccontextmanager
    async def _placing(self) -> AsyncIterator[Placement]:
        """The placement this write places by, counted as in flight under it until the write ends (a rebalance
        waits for writes that placed by an older one: settled())."""
        coord = self.coord
        async with self._inflight.hold(coord.placement_epoch):
            yield coord.placement

    async def settled(self, epoch: int) -> None:
        """Wait until no write that began before placement epoch `epoch` is in flight."""
        await self._inflight.settled(epoch)

    def locked(self, ids: Iterable[str]) -> Any:
        """Hold these points' locks: no write of this process to them runs meanwhile (a rebalance's move)."""
        return self._points.hold(ids)

    async def _upsert(self, points: Sequence[Point], wait: bool) -> UpsertResponse:
        async with self._placing() as placement:
            return await self._upsert_by(points, wait, placement)

    async def _upsert_by(self, points: Sequence[Point], wait: bool, placement: Placement) -> UpsertResponse:
        coord = self.coord
        self._writable()
        for i, p in enumerate(points):  # before anything is mapped or written: a 422 naming the point's field
            if SHARD_FIELD in p.payload:
                raise InvalidRequest(f"points[{i}].payload.{SHARD_FIELD}: {reserved_field(SHARD_FIELD)}; rename "
                                     "the field", field=f"points[{i}].payload.{SHARD_FIELD}")
            if placement.method == "key":
                key_of(p.payload, placement.field, placement.key_type, f"points[{i}].payload")
        if infer_fields((p.payload for p in points), coord.config.metadata):
            await self._map_new_fields(points)
        rows, notes, failed = await coord.vectors.prepare_points(points)
        self._writable()  # again: embedding takes time, and another ingress may have paused writes meanwhile
        homes: dict[int, list] = {}
        for row in rows:
            homes.setdefault(placement.shard_of(row.id, row.vectors, row.payload), []).append(row)
        home = {r.id: s for s, batch in homes.items() for r in batch}
        scattered = coord.moving or not placing.by_ring(placement)  # a copy may sit off this point's new home
        # Read where each point lives, write it, delete its old copy: alone among every ingress's moves of it (a
        # point new to Elasticsearch too: another ingress may be placing it elsewhere at this moment).
        async with self._moves_held(home if scattered else ()):
            stale, after = await self._old_copies(home, placement) if scattered else ({}, {})
            # Where each point lives, in its Elasticsearch document (not under hash routing: the ring says, and a
            # reshard moves points without rewriting documents)
            where = None if placement.method == "hash" else {pid: [s, *after.get(pid, [])] for pid, s in home.items()}
            await coord.metadata.write_through(rows, wait, lambda: self._place(homes, stale, wait), coord.fetch, where)
        return UpsertResponse(upserted=len(rows), notes=notes, failed=failed, visible=wait)

    def _moves_held(self, ids: Iterable[str]) -> Any:
        """These points' move locks across ingress replicas (router.collection.locks.shared). The only ingress (its
        shards poll no sequencer) has its per-point locks for that."""
        coord = self.coord
        return shared([sh.sequencer if sh.poll_sequencer else None for sh in coord.shards], coord.shard_of, ids)

    async def _old_copies(self, home: dict[str, int], placement: Placement
                          ) -> tuple[dict[int, list[str]], dict[str, list[int]]]:
        """Where copies of these points may sit other than their new home (`home`: id -> shard), by shard; and, by
        point, the shards its document keeps naming after its home (where an old copy may sit until this write has
        deleted it: a write cut short between Elasticsearch and the shards leaves the next one a way to it).

        A point Elasticsearch has no document for is new: no copy anywhere. Otherwise the shards its document
        names (SHARD_FIELD: its home, and where an old copy may still sit); without them (a document written
        before prism kept them, or put back after a failed write: a move cut off after its new copy landed leaves
        copies on its old and its new key's shards, whichever payload was put back), while a rebalance moves points
        (the documents may lag the move) or without Elasticsearch, every other shard (a broadcast)."""
        coord = self.coord
        known = await coord.metadata.placed(list(home))  # None: no Elasticsearch here
        every = list(range(coord.config.shards))
        stale: dict[int, list[str]] = {}
        after: dict[str, list[int]] = {}
        for pid, new in home.items():
            if known is not None and pid not in known:
                continue
            recorded = known[pid][0] if known is not None else None
            where: list[int] = every
            if known is not None and not coord.moving and recorded is not None:
                where = recorded
            where = [s for s in dict.fromkeys(where) if s != new]
            for s in where:
                stale.setdefault(s, []).append(pid)
            # the document keeps the old home until the next write (a broadcast's: every other shard; while points
            # move, nothing: a rebalance cut short leaves the collection moving, so writes broadcast until the next
            # one has rewritten every document)
            if coord.moving:
                continue
            if recorded is not None:
                after[pid] = [recorded[0]] if recorded[0] != new else []
            else:
                after[pid] = where
        return stale, after

    async def _place(self, homes: dict[int, list], stale: dict[int, list[str]], wait: bool) -> None:
        """The rows to their shards; then, once every copy is acknowledged, the moved points' old copies deleted
        (a query between the two sees both copies, and the merge keeps one).

        When some of the shards fail, the old copies go exactly for the points whose new shard took them, or
        missed its quorum (logged, they roll forward: no later write would know where the old copies sit); a
        point whose new shard refused it (or failed otherwise) keeps its old copy. Then the first failure is
        raised, a refusal before a quorum miss (Elasticsearch is put back in step with the shards)."""
        if not stale:
            await self._write(self.coord.shards[s].upsert(batch, wait) for s, batch in homes.items())
            return
        shards = list(homes)
        results = await self._write((self.coord.shards[s].upsert(homes[s], wait) for s in shards), raises=False)
        failures = [r for r in results if isinstance(r, BaseException)]
        landed = {r.id for s, res in zip(shards, results) if not isinstance(res, BaseException)
                  or isinstance(res, ShardUnavailable) for r in homes[s]}
        gone = {s: ids for s, ids in ((s, [i for i in ids if i in landed]) for s, ids in stale.items()) if ids}
        try:
            await self._write(self.coord.shards[s].delete(ids, wait) for s, ids in gone.items())
        finally:
            if failures:
                raise next((f for f in failures if not isinstance(f, ShardUnavailable)), failures[0])

    async def _map_new_fields(self, points: Sequence[Point]) -> None:
        """Dynamic mapping: map the fields these points bring first, once every payload of the batch fits the
        extended mapping; else a 422 naming the field, and nothing is mapped or written."""
        async with self._mapping_lock:  # two batches showing the same new field map it once
            new = infer_fields((p.payload for p in points), self.coord.config.metadata)
            if not new:
                return
            extended = {**self.coord.config.metadata, **new}
            for i, p in enumerate(points):
                normalise_meta(p.payload, extended, f"points[{i}].payload")
            await self._extend_mapping(new)

    async def map_fields(self, fields: dict[str, str]) -> dict[str, str]:
        """Map payload fields before any point brings them (a Qdrant payload index); a field mapped already keeps
        its type. Returns these fields' types as they stand."""
        for field, kind in fields.items():
            if not FIELD_RE.match(field) or kind not in METADATA_TYPES:
                raise InvalidRequest(f"field {field!r} ({kind!r}): names are letters, digits, '_' and '-' (at most "
                                     f"64), types one of {sorted(METADATA_TYPES)}", field="field_name")
            if reserved_field(field):
                raise InvalidRequest(f"field {reserved_field(field)}", field="field_name")
        async with self._mapping_lock:
            new = {f: k for f, k in fields.items() if f not in self.coord.config.metadata}
            if new:
                await self._extend_mapping(new)
        return {f: self.coord.config.metadata[f] for f in fields}

    async def _extend_mapping(self, new: dict[str, str]) -> None:
        """Elasticsearch first (it may refuse), then the config everyone here reads, then the catalog."""
        await self.coord.metadata.extend_mapping(new)
        self.coord.config.metadata.update(new)
        if self.coord.on_mapping is not None:
            self.coord.on_mapping(new)

    async def update_vectors(self, updates: Sequence[Any], wait: bool = True) -> UpsertResponse:
        """Replace some spaces' vectors of existing points (a re-shot photo); the others are kept as stored. The
        read and the write back hold the points' locks: a concurrent update of another space is not undone."""
        coord = self.coord
        async with self._points.hold(u.id for u in updates):
            stored = {row.id: row for shard, ids in coord.by_id([u.id for u in updates]).items()
                      for row in await coord.shards[shard].read(lambda c, ids=ids: c.export(ids))}
            points, missing = merge_updates(coord.config, updates, stored)
            if not points:
                return UpsertResponse(upserted=0, failed=missing)
            res = await self._upsert(points, wait)
        return res.model_copy(update={"failed": missing + res.failed})

    async def delete(self, ids: Sequence[str], wait: bool = True) -> DeleteResponse:
        unique = list(dict.fromkeys(ids))
        async with self._points.hold(unique):  # a vector update in flight must not write a deleted point back
            return await self._delete(unique, wait)

    async def _delete(self, unique: list[str], wait: bool) -> DeleteResponse:
        # by_id below follows the placement (and a move) as it stands now. A routed point's delete holds its move
        # lock: run between another ingress's Elasticsearch write and shard write of a move, it would leave the new
        # copy without a document.
        async with self._placing(), self._moves_held(unique if self.coord.scattered else ()):
            return await self._delete_now(unique, wait)

    async def _delete_now(self, unique: list[str], wait: bool) -> DeleteResponse:
        coord = self.coord
        self._writable()
        results = await coord.metadata.delete_through(unique, wait, lambda: self._write(  # Elasticsearch first
            coord.shards[s].delete(batch, wait) for s, batch in coord.by_id(unique).items()), coord.fetch)
        return DeleteResponse(deleted=sum(max(r) for r in results), visible=wait)

    async def _write(self, calls: Any, raises: bool = True) -> list:
        """One request's shard writes, the coordinator's version bumped around them (no answer cached meanwhile is
        kept); all have ended before the first failure is raised (`raises`; else each call's result or error)."""
        self.coord.version += 1
        try:
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            self.coord.version += 1
        for r in results:
            if raises and isinstance(r, BaseException):
                raise r
        return results

    async def delete_by_filter(self, dsl: dict[str, Any]) -> DeleteResponse:
        """Delete every point matching an ES DSL filter (ids from Elasticsearch, in pages; always waited for)."""
        deleted = await self.coord.metadata.delete_matching(dsl, lambda ids: self.delete(ids, True))
        return DeleteResponse(deleted=deleted, visible=True)
