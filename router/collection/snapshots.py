"""Online snapshots of a collection: create, list, describe, delete (restore: router.collection.restore).

A snapshot is one cut across the shards, each shard's sequence number, and the points as they stand at it
(router.replication.cut: copied while writes go on, then the ids written meanwhile read again, outside the write
lock; the write pause, each shard's longest hold of its lock, is measured per shard in the manifest). Files and
manifest: router.schema.snapshots; the store (a directory or an S3 bucket): cluster.snapshot_store.

Elasticsearch's documents are written as the write path makes them from the payloads at the cut (a document is its
point's payload), not read from Elasticsearch: Elasticsearch has no cut, and `prism verify` is what compares the two.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
import secrets
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.config import parse_model
from cluster.errors import CollectionNotFound, ShardUnavailable, SnapshotNotFound
from cluster.names import check_name
from cluster.snapshot_store import SnapshotStore
from router.collection.aliases import check_scope
from router.collection.coordinator import Coordinator
from router.metadata.store import index_mapping
from router.collection.restore import restore
from router.replication import cut as cutting
from router.replication.archive import archive_for
from router.replication.replicas import ReplicatedShard
from router.schema import snapshots as plan
from router.schema.snapshots import Manifest, RestoreRequest, ShardCut, SnapshotRequest
from shards.api import EXPORT_PAGE

MARK_TRIES = 3  # marks of a shard whose replicas are all behind, each after a heal

Columns = dict[str, Any]  # id -> (payload, {space: float32 vector})


def prism_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prism-search")
    except PackageNotFoundError:
        return ""


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    return buf.getvalue()


# A vector file's floats neither repeat nor compress (measured, 20,000 x 384: snappy and dictionary pages made the
# file 1.5% larger and took 0.19 s against 0.05 s written plain).
VECTOR_PARQUET = {"use_dictionary": ["id"], "compression": "none"}


def payload_json(payload: dict) -> str:
    """A payload as JSON text: orjson (a fifth of json.dumps' time), json for what orjson refuses (integers
    beyond 64 bits)."""
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        return json.dumps(payload, ensure_ascii=False)


def points_table(points: dict[str, tuple[dict, dict]]) -> pa.Table:
    ids = sorted(points)
    return pa.table({"id": pa.array(ids, pa.string()),
                     "payload": pa.array([payload_json(points[i][0]) for i in ids], pa.string())})


def space_table(points: dict[str, tuple[dict, dict]], space: str, dim: int) -> pa.Table:
    ids = sorted(i for i, (_, vecs) in points.items() if space in vecs)
    flat = np.concatenate([points[i][1][space] for i in ids]) if ids else np.zeros(0, np.float32)
    return pa.table({"id": pa.array(ids, pa.string()),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)})


def _columns(rows) -> dict[str, tuple[dict, dict]]:
    return {r.id: (r.payload, {s: np.asarray(v, np.float32) for s, v in r.vectors.items()}) for r in rows}


async def mark_shard(sh: ReplicatedShard, tries: int = MARK_TRIES) -> cutting.Mark:
    """Step 1 (router.replication.cut.mark), on the shard's sequencer where it has one. When no replica has applied
    every write (a write that timed out on each leaves them behind: the 200k bench's snapshot under its writer was
    refused so on shard 0, whose only replica was behind), the shard is healed (the missed writes replayed, as the
    heal loop would on its next pass) and marked again, up to `tries` times."""
    healed = 0
    for _ in range(tries):
        mark = await (sh.sequencer.mark() if sh.sequencer is not None else cutting.mark(sh))
        if mark.replicas:
            return mark
        healed += (await sh.heal(probe_now=True))[0]  # a dead replica is probed now, not at its backoff's end
    errors = "; ".join(st.last_error if st.last_error.startswith(f"replica {st.replica}") else
                       f"replica {st.replica}: {st.last_error}" for st in sh.state.states if st.last_error)
    raise ShardUnavailable(f"shard {sh.shard}: no replica has applied its writes after {tries} heals "
                           f"({healed} replicas healed; {errors or 'no error recorded'}); retry the snapshot",
                           shards=[sh.shard])


async def copy_shard(sh: ReplicatedShard, mark: cutting.Mark) -> dict[str, tuple[dict, dict]]:
    """Step 2: every point of one of the replicas that had the mark's writes, while writes go on: a keyset scan
    of whole points (no id list, no `id in [...]` queries: those were 72% of a snapshot's time)."""
    points: dict[str, tuple[dict, dict]] = {}
    after = ""
    while True:
        page = await cutting.export_page(sh, mark.replicas, after, EXPORT_PAGE)
        points.update(_columns(page))
        if len(page) < EXPORT_PAGE:
            return points
        after = page[-1].id


async def cut_shard(sh: ReplicatedShard, mark: cutting.Mark, points: dict[str, tuple[dict, dict]]) -> cutting.Cut:
    """Step 3: the cut; `points` (step 2's copy) brought to it in place."""
    c = await (sh.sequencer.cut(mark.seq) if sh.sequencer is not None else cutting.cut(sh, mark.seq))
    for pid in c.gone:
        points.pop(pid, None)
    points.update(_columns(c.rows.values()))
    return c


async def shard_at_cut(sh: ReplicatedShard) -> tuple[cutting.Cut, dict[str, tuple[dict, dict]]]:
    """One shard's points at its cut (router.replication.cut: mark, copy, cut)."""
    mark = await mark_shard(sh)
    points = await copy_shard(sh, mark)
    return await cut_shard(sh, mark, points), points


class Snapshots:
    """The snapshots of the service's collections (router.collection.service.PrismService.snapshots)."""

    def __init__(self, svc: Any):
        self.svc = svc
        self._store: SnapshotStore | None = None

    @property
    def store(self) -> SnapshotStore:
        if self._store is None:
            s = self.svc.config.snapshots
            self._store = SnapshotStore(s.url or self.svc.config.data_path / "snapshots", s.options)
        return self._store

    def attach(self, coord: Coordinator) -> None:
        """Archive the journal of each shard whose writes this process orders (router.replication.archive); a
        shard's sequencer archives its own."""
        settings = self.svc.config.snapshots.archive
        for sh in coord.shards:
            if sh.sequencer is None and settings.enabled and sh.archive is None:
                fresh = not sh.epoch  # numbered from 1 again each time this process opens it: an epoch of its own
                sh.epoch = sh.epoch or uuid.uuid4().hex
                sh.start_archive(archive_for(self.store, coord.config.name, sh.shard, sh.epoch, settings, fresh=fresh))

    async def create(self, name: str, body: Any = None) -> dict[str, Any]:
        """Snapshot `name` while reads and writes go on; the answer is the manifest's summary."""
        parse_model(SnapshotRequest, {} if body is None else body, "snapshot request")
        coord: Coordinator = self.svc.coordinator(name)
        name = coord.config.name  # through an alias: its target's snapshot, listed and deleted by that name
        if coord.paused or coord.moving:
            raise ShardUnavailable(f"collection {name!r} is moving points ({coord.paused or 'a rebalance'}): a "
                                   "snapshot waits for that to end; retry", shards=[])
        t0, now = time.perf_counter(), datetime.now(timezone.utc)
        sid = plan.make_id(name, now.strftime("%Y%m%dT%H%M%SZ"), secrets.token_hex(3))
        cfg = coord.config.model_copy(deep=True)
        taken = await asyncio.gather(*(shard_at_cut(sh) for sh in coord.shards))
        if self.svc.coordinators.get(name) is not coord:
            raise ShardUnavailable(f"collection {name!r} was resharded or deleted during the snapshot; retry", shards=[])
        spaces = list(cfg.spaces)
        cuts = [ShardCut(shard=s, seq=c.seq, epoch=c.epoch, points=len(pts), write_pause_ms=c.pause_ms, at=c.at)
                for s, (c, pts) in enumerate(taken)]
        counts = {"points": sum(len(pts) for _, pts in taken)}
        for space in spaces:
            counts[space] = sum(1 for _, pts in taken for _, vecs in pts.values() if space in vecs)
        manifest = await asyncio.to_thread(self._write, sid, cfg, spaces, taken, cuts, counts, now, t0)
        return summary(manifest)

    def _write(self, sid, cfg, spaces, taken, cuts, counts, now, t0) -> Manifest:
        store, files = self.store, {}
        files[plan.CONFIG] = store.write(f"{sid}/{plan.CONFIG}", cfg.model_dump_json(indent=2).encode())
        files[plan.MAPPING] = store.write(f"{sid}/{plan.MAPPING}", json.dumps(index_mapping(cfg), indent=2).encode())
        every = {pid: p for _, pts in taken for pid, p in pts.items()}
        files[plan.DOCUMENTS] = store.write(f"{sid}/{plan.DOCUMENTS}", parquet_bytes(
            points_table(every).rename_columns(["id", "source"])))
        for s, (_, pts) in enumerate(taken):
            names = plan.shard_files(s, spaces)
            files[names[0]] = store.write(f"{sid}/{names[0]}", parquet_bytes(points_table(pts)))
            for space, path in zip(spaces, names[1:]):
                files[path] = store.write(f"{sid}/{path}", parquet_bytes(
                    space_table(pts, space, cfg.spaces[space].dim), **VECTOR_PARQUET))
        manifest = plan.build(snapshot_id=sid, collection=cfg.name, created=now.isoformat().replace("+00:00", "Z"),
                              prism=prism_version(), cut=cuts, spaces=spaces, files=files, counts=counts,
                              seconds=round(time.perf_counter() - t0, 3))
        store.write(f"{sid}/{plan.MANIFEST}", manifest.model_dump_json(indent=2).encode())  # last: complete now
        return manifest

    def manifest(self, sid: str, name: str | None = None) -> Manifest:
        """A complete snapshot's manifest (of collection `name`, if given); 404 otherwise, 422 if unreadable."""
        plan.check_id(sid)
        try:
            raw = json.loads(self.store.read(f"{sid}/{plan.MANIFEST}"))
        except FileNotFoundError:
            raise SnapshotNotFound(f"no complete snapshot {sid!r}", field="snapshot") from None
        except ValueError:
            raw = None
        m = plan.check_format(raw, sid)
        if name is not None and m.collection != name:
            raise SnapshotNotFound(f"snapshot {sid!r} is not a snapshot of collection {name!r}", field="snapshot")
        return m

    async def list(self, name: str) -> dict[str, Any]:
        """The collection's snapshots, complete ones with their summary; a collection deleted since may be named."""
        check_name(name)
        name = self.svc.catalog.resolve(name)
        own = re.compile(rf"^{re.escape(name)}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}$")

        def scan() -> list[dict[str, Any]]:
            out = []
            for sid in self.store.ids():
                if not own.match(sid):
                    continue
                try:
                    out.append(summary(self.manifest(sid, name)))
                except SnapshotNotFound:
                    out.append({"id": sid, "collection": name, "complete": False})
            return out
        found = await asyncio.to_thread(scan)
        if not found and name not in self.svc.list_collections():
            raise CollectionNotFound(f"no collection {name!r} and no snapshot of one")
        return {"collection": name, "snapshots": found}

    async def describe(self, name: str, sid: str) -> dict[str, Any]:
        check_name(name)
        name = self.svc.catalog.resolve(name)
        m = await asyncio.to_thread(self.manifest, sid, name)
        return {**summary(m), "manifest": m.model_dump()}

    async def delete(self, name: str, sid: str) -> dict[str, Any]:
        check_name(name)
        name = self.svc.catalog.resolve(name)
        plan.check_id(sid)
        if not sid.startswith(f"{name}-") or not await asyncio.to_thread(self.store.exists, sid):
            raise SnapshotNotFound(f"no snapshot {sid!r} of collection {name!r}", field="snapshot")
        await asyncio.to_thread(self.store.delete, sid)
        return {"deleted": sid}

    async def restore(self, new: str, body: Any, principal: Any = None) -> dict[str, Any]:
        """A new collection from one of these snapshots (router.collection.restore). A key scoped to some
        collections must hold the snapshot's collection too: the path names only the new one."""
        if getattr(principal, "collections", None) is not None:
            req = parse_model(RestoreRequest, body, "restore request")
            check_scope(principal, (await asyncio.to_thread(self.manifest, req.snapshot)).collection)
        return await restore(self.svc, self, new, body)


def summary(m: Manifest) -> dict[str, Any]:
    return {"id": m.id, "collection": m.collection, "created": m.created, "complete": True, "counts": m.counts,
            "cut": {str(c.shard): c.seq for c in m.cut}, "seconds": m.seconds,
            "write_pause_ms": max((c.write_pause_ms for c in m.cut), default=0.0),
            "bytes": sum(f.bytes for f in m.files.values())}
