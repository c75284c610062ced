"""Restore a snapshot into a NEW collection (`POST /v1/collections/{new}/restore`).

Refused before anything is made: a name in use (409), a snapshot that is missing or incomplete (404), a manifest of
a format this prism does not read (422, saying why), any file whose sha256 or size differs from the manifest (422
naming the file). Then the collection is created with the snapshot's config (its shard count, replicas or routing
replaced where the request gives them) and the points go in through the ordinary write path with their vectors
given (no encoder runs), so each lands where the new collection's placement puts it and Elasticsearch gets its
document. Each file is checked again as it is read; any failure from here drops the new collection: a restore
leaves a whole collection or none. The source collection is never read or touched: only the snapshot's files are.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import asyncio
import pyarrow.parquet as pq

from cluster.config import parse_model
from cluster.errors import CollectionExists, InvalidRequest
from cluster.names import check_name
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
    """One shard's points as upsert bodies' points: id, payload, vectors of the spaces that hold them."""
    files = plan.shard_files(shard, m.spaces)
    table = pq.read_table(io.BytesIO(_load(store, m, files[0])))
    points = {pid: {"id": pid, "payload": json.loads(p), "vectors": {}}
              for pid, p in zip(table.column("id").to_pylist(), table.column("payload").to_pylist())}
    for space, path in zip(m.spaces, files[1:]):
        t = pq.read_table(io.BytesIO(_load(store, m, path)))
        ids = t.column("id").to_pylist()
        vecs = t.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1) if ids else []
        for pid, v in zip(ids, vecs):
            points[pid]["vectors"][space] = v.tolist()
    for p in points.values():
        if not p["vectors"]:
            del p["vectors"]
    return list(points.values())


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
    await svc.create_collection(new, plan.restored_config(config, new, req))
    n = 0
    try:
        batch = max(1, min(BATCH, svc.config.limits.max_upsert_points))
        for c in m.cut:
            points = await asyncio.to_thread(shard_points, store, m, c.shard)
            for i in range(0, len(points), batch):
                await svc.upsert(new, {"points": points[i:i + batch]})
            n += len(points)
    except BaseException:
        await svc.delete_collection(new)
        raise
    return {"collection": new, "snapshot": m.id, "points": n, "seconds": round(time.perf_counter() - t0, 3)}
