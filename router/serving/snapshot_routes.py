"""The snapshot routes (admin; the guard, router.serving.access, sends every route it does not list to admin):
create, list, describe and delete a collection's snapshots, and restore one into a new collection. Each calls
the PrismService of this ingress replica (router.collection.snapshots)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request

from cluster.errors import ShardUnavailable
from router.schema.bodies import read_json
from router.schema.snapshots import DeletedSnapshot, RestoreRequest, RestoreResponse, SnapshotDetail, SnapshotList, \
    SnapshotRequest, SnapshotSummary
from router.serving.openapi import ACCESS, WRITES, body_doc, documented

router = APIRouter(prefix="/v1/collections/{name}")


def _snapshots() -> Any:
    from router.serving.metrics import process_state

    service = process_state().service
    if service is None:
        raise ShardUnavailable("the ingress is starting", shards=[])
    return service.snapshots


async def _body(request: Request) -> Any:
    from router.serving.metrics import process_state

    return await read_json(request, process_state().max_upload_bytes)


@router.post("/snapshots", response_model=SnapshotSummary, **body_doc(SnapshotRequest, WRITES))
async def create_snapshot(name: str, request: Request):
    """Snapshot the collection while reads and writes go on: one cut across its shards (each shard's sequence
    number), Parquet files and a manifest written last (admin; `prism snapshot create`). The body may be empty."""
    raw = await request.body()
    return await _snapshots().create(name, await _body(request) if raw.strip() else {})


@router.get("/snapshots", response_model=SnapshotList, responses=documented(ACCESS + (404,)))
async def list_snapshots(name: str):
    """The collection's snapshots (also after the collection was deleted: 404 only when there is neither);
    incomplete ones say so (admin)."""
    return await _snapshots().list(name)


@router.get("/snapshots/{snapshot}", response_model=SnapshotDetail, responses=documented(ACCESS + (404, 422)))
async def describe_snapshot(name: str, snapshot: str):
    """One snapshot with its manifest: the cut, counts, every file's sha256 (admin)."""
    return await _snapshots().describe(name, snapshot)


@router.delete("/snapshots/{snapshot}", response_model=DeletedSnapshot, responses=documented(ACCESS + (404,)))
async def delete_snapshot(name: str, snapshot: str):
    """Delete a snapshot's files (admin)."""
    return await _snapshots().delete(name, snapshot)


@router.post("/restore", response_model=RestoreResponse, **body_doc(RestoreRequest, WRITES + (409,)))
async def restore(name: str, request: Request):
    """Build the NEW collection `name` from a snapshot: `{"snapshot": ID, "shards"?, "replicas"?, "routing"?}`.
    Checksums are verified first; a corrupted file is refused naming it; the source collection is not touched
    (admin; `prism snapshot restore`)."""
    return await _snapshots().restore(name, await _body(request), request.scope.get("state", {}).get("principal"))


def mount(api: FastAPI) -> None:
    api.include_router(router)
