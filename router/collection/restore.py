"""Restore a snapshot into a NEW collection (`POST /v1/collections/{new}/restore`).

Refused before anything is made: a name in use (409), a snapshot that is missing or incomplete (404), a manifest of
a format this prism does not read (422, saying why), any file whose sha256 or size differs from the manifest (422
naming the file). Then the collection is created with the snapshot's config (its shard count, replicas or routing
replaced where the request gives them) and the points go in through the ordinary write path with their vectors
given (no encoder runs), so each lands where the new collection's placement puts it and Elasticsearch gets its
document. Each file is checked again as it is read; any failure from here drops the new collection: a restore
leaves a whole collection or none. The source collection is never read or touched: only the snapshot's files are.

With `at` (a time, or a sequence number per shard: router.schema.archive), each shard's archived journal
(router.replication.archive) from its cut to the target is read first, every segment's sha256 checked, and a target
before the cut, past the archive or across a gap refused (422) before anything is made; a source collection still
served here ships what it holds first. Each shard's writes are then applied to its points from the snapshot, in
order, and the result goes in through the write path as above. Folding per shard, not replaying write by write
into the new collection: a point moved between shards is an upsert on one and a delete on the other, and the new
collection (its own placement) holds one copy, which the delete replayed after the upsert would remove.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import asyncio
import numpy as np
import pyarrow.parquet as pq

from cluster.config import parse_model
from cluster.errors import CollectionExists, InvalidRequest
from cluster.names import check_name
from router.replication.archive import read_index, read_segment
from router.replication.oplog import LoggedOp
from router.schema import archive as history
from router.schema import snapshots as plan
from router.schema.snapshots import Manifest, RestoreRequest

BATCH = 1000  # as ingest (deploy/bench_snapshots INGEST_BATCH): a write costs mostly its fixed visibility wait


def _load(store: Any, m: Manifest, path: str) -> bytes:
    """A file's bytes, checked against the manifest again (it may have changed since it was verified)."""
    data = store.read(f"{m.id}/{path}")
    want = m.files[path]
    if (hashlib.sha256(data).hexdigest(), len(data)) != (want.sha256, want.bytes):
        raise InvalidRequest(f"snapshot {m.id}: file {path} is corrupted (it changed while it was restored)",
                             field="snapshot")
    return data


def shard_points(store: Any, m: Manifest, shard: int) -> list[dict[str, Any]]:
    """One shard's points as upsert bodies' points: id, payload, vectors of the spaces that hold them (float32
    rows of one array per space: lists only a batch at a time, in `body`, as a shard's points as lists of floats
    took 12 KB a 384-d vector)."""
    files = plan.shard_files(shard, m.spaces)
    table = pq.read_table(io.BytesIO(_load(store, m, files[0])))
    points = {pid: {"id": pid, "payload": json.loads(p), "vectors": {}}
              for pid, p in zip(table.column("id").to_pylist(), table.column("payload").to_pylist())}
    for space, path in zip(m.spaces, files[1:]):
        t = pq.read_table(io.BytesIO(_load(store, m, path)))
        ids = t.column("id").to_pylist()
        vecs = t.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1) if ids else []
        for pid, v in zip(ids, vecs):
            points[pid]["vectors"][space] = v
    for p in points.values():
        if not p["vectors"]:
            del p["vectors"]
    return list(points.values())


async def ship_source(svc: Any, m: Manifest) -> None:
    """The source collection's shards ship what their archives hold, where it is served here (it may be gone)."""
    coord = svc.coordinators.get(m.collection)
    epochs = {c.shard: c.epoch for c in m.cut}
    for sh in coord.shards if coord is not None else ():
        if sh.epoch and epochs.get(sh.shard) == sh.epoch:
            await sh.ship_archive()


def shard_history(store: Any, m: Manifest, shard: int, since: int, cut_at: float, epoch: str,
                  at: float | None, seq: int | None) -> list[LoggedOp]:
    """The archived writes of one shard to replay after its cut, checked (router.schema.archive.target)."""
    where = f"snapshot {m.id}, shard {shard}"
    if at is not None and not cut_at:
        raise InvalidRequest(f"{where}: the snapshot records no time of its cut (an older prism wrote it): give "
                             "`at` as {\"<shard>\": seq}", field="at")
    index = read_index(store, m.collection, shard, epoch)
    if index is None:
        raise InvalidRequest(f"{where}: no archived journal ({history.prefix(m.collection, shard, epoch)}/"
                             f"{history.INDEX} is missing)", field="at")
    history.check_index(index, where)
    ops: list[LoggedOp] = []
    for seg in history.segments_after(index, since, seq):
        try:
            ops += [op for op in read_segment(store, index, seg) if op.seq > since]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{where}: {exc}", field="at") from None
        if at is not None and seg.first_at > at:
            break  # its first write is past the target: nothing later is replayed
    last = history.target([(op.seq, op.at) for op in ops], since=since, cut_at=cut_at, index=index, where=where,
                          at=at, seq=seq)
    return [op for op in ops if op.seq <= last]


async def histories(svc: Any, store: Any, m: Manifest, raw_at: Any) -> dict[int, list[LoggedOp]]:
    """Each shard's writes to replay for `at`, all checked before anything is built."""
    at = history.parse_at(raw_at, [c.shard for c in m.cut])
    await ship_source(svc, m)
    return {c.shard: await asyncio.to_thread(shard_history, store, m, c.shard, c.seq, c.at, c.epoch,
                                             at if isinstance(at, float) else None,
                                             at[c.shard] if isinstance(at, dict) else None) for c in m.cut}


def upsert_body(points: list[dict[str, Any]]) -> dict[str, Any]:
    """An upsert body of `points`, their vectors as lists of floats."""
    return {"points": [{**p, "vectors": {s: v.tolist() if isinstance(v, np.ndarray) else v
                                         for s, v in p["vectors"].items()}} if "vectors" in p else p
                       for p in points]}


async def restore_shard(svc: Any, store: Any, m: Manifest, new: str, shard: int,
                        replay: dict[int, list[LoggedOp]] | None, batch: int) -> int:
    """One shard's points (its archived writes applied, with `at`) written into `new`; how many."""
    points = await asyncio.to_thread(shard_points, store, m, shard)
    if replay is not None:
        points = list(history.fold({p["id"]: p for p in points},
                                   [(op.kind, op.args) for op in replay[shard]]).values())
    for i in range(0, len(points), batch):
        await svc.upsert(new, upsert_body(points[i:i + batch]))
    return len(points)


async def restore(svc: Any, snapshots: Any, new: str, body: Any) -> dict[str, Any]:
    """Build collection `new` from the snapshot `body["snapshot"]` (see the module docstring)."""
    t0 = time.perf_counter()
    check_name(new)
    req = parse_model(RestoreRequest, body, "restore request")
    plan.check_id(req.snapshot)
    if new in svc.coordinators or svc.catalog.stamp(new) is not None:
        raise CollectionExists(f"collection {new!r} already exists: a restore builds a new collection", field="name")
    store = snapshots.store
    m = await asyncio.to_thread(snapshots.manifest, req.snapshot)
    await asyncio.to_thread(plan.verify, m, lambda path: store.digest(f"{m.id}/{path}"))
    config = json.loads(await asyncio.to_thread(_load, store, m, plan.CONFIG))
    replay = await histories(svc, store, m, req.at) if req.at is not None else None
    await svc.create_collection(new, plan.restored_config(config, new, req))
    try:
        batch = max(1, min(BATCH, svc.config.limits.max_upsert_points))
        # Shards in turn: written all at once (concurrent tasks), one 20,000-point pair measured 22.7 -> 19.0 s on
        # the Milvus server but 20.0 -> 30.4 s on milvus-lite (in process: its writes share this process's GIL).
        n = 0
        for c in m.cut:
            n += await restore_shard(svc, store, m, new, c.shard, replay, batch)
    except BaseException:
        await svc.delete_collection(new)
        raise
    out = {"collection": new, "snapshot": m.id, "points": n, "seconds": round(time.perf_counter() - t0, 3)}
    if replay is not None:
        out["replayed"] = {str(s): [ops[0].seq, ops[-1].seq] if ops else [] for s, ops in replay.items()}
    return out
