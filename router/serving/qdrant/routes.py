"""The /qdrant HTTP routes (FastAPI). Each reads its body with prism's body rules (router.schema.bodies: JSON content
type, bounded nesting, finite numbers, max_upload_bytes), calls collections / points / query with the
PrismService of this ingress replica, and answers in Qdrant's envelope `{"result": ..., "status": "ok", "time":
seconds}`; errors in Qdrant's shape (errors.QdrantRoute). The guard has run before any of this (policy.py).

Not in prism's OpenAPI description (/docs documents prism's own API): Qdrant publishes its own.
"""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse

from cluster.errors import CollectionNotFound, ShardUnavailable
from router.schema.bodies import read_json
from router.serving.qdrant import collections, points, query
from router.serving.qdrant.errors import QdrantRoute, Unsupported, body as error_body
from router.serving.qdrant.policy import PREFIX

# The Qdrant REST API version whose shapes this implements (qdrant-client 1.20.0's models): what the client's
# compatibility check compares its own version with.
QDRANT_API_VERSION = "1.20.0"
router = APIRouter(prefix=PREFIX, route_class=QdrantRoute, include_in_schema=False)


def _service() -> Any:
    from router.serving.metrics import process_state

    service = process_state().service
    if service is None:
        raise ShardUnavailable("prism's Qdrant API is not ready yet (the ingress is starting)")
    return service


async def _json(request: Request) -> Any:
    from router.serving.metrics import process_state

    return await read_json(request, process_state().max_upload_bytes)


def ok(result: Any, started: float) -> JSONResponse:
    return JSONResponse({"result": result, "status": "ok", "time": round(time.perf_counter() - started, 6)})


@router.get("")
@router.get("/")
async def root():
    return JSONResponse({"title": "prism - Qdrant-compatible REST API", "version": QDRANT_API_VERSION})


# -- collections -----------------------------------------------------------------------------------------------
@router.get("/collections")
async def list_collections(request: Request):
    t0, principal = time.perf_counter(), request.scope.get("state", {}).get("principal")
    return ok({"collections": collections.visible(_service().list_collections(), principal)}, t0)


@router.get("/collections/{name}")
async def get_collection(name: str):
    t0 = time.perf_counter()
    return ok(await collections.collection_info(_service(), name), t0)


@router.get("/collections/{name}/exists")
async def collection_exists(name: str):
    t0 = time.perf_counter()
    try:
        _service().collection_config(name)
        return ok({"exists": True}, t0)
    except CollectionNotFound:
        return ok({"exists": False}, t0)


@router.put("/collections/{name}")
async def create_collection(name: str, request: Request):
    t0 = time.perf_counter()
    return ok(await collections.create(_service(), name, await _json(request)), t0)


@router.delete("/collections/{name}")
async def delete_collection(name: str):
    t0 = time.perf_counter()
    try:
        await _service().delete_collection(name)
        return ok(True, t0)
    except CollectionNotFound:
        return ok(False, t0)  # Qdrant answers false for a collection that was not there


@router.patch("/collections/{name}")
async def update_collection(name: str):
    raise Unsupported("updating a collection's parameters is not supported by prism's Qdrant API yet")


@router.put("/collections/{name}/index")
async def create_index(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    await collections.create_index(_service(), name, await _json(request))
    return ok(points.update_result(True), t0)


@router.delete("/collections/{name}/index/{field_name}")
async def delete_index(name: str, field_name: str):
    raise Unsupported("dropping a payload index is not supported: prism keeps a field's mapping once it has one")


# -- points ----------------------------------------------------------------------------------------------------
@router.put("/collections/{name}/points")
async def upsert(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    return ok(await points.upsert(_service(), name, await _json(request), wait), t0)


@router.post("/collections/{name}/points")
async def retrieve(name: str, request: Request):
    t0 = time.perf_counter()
    return ok(await points.retrieve(_service(), name, await _json(request)), t0)


@router.post("/collections/{name}/points/delete")
async def delete_points(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    return ok(await points.delete(_service(), name, await _json(request), wait), t0)


@router.post("/collections/{name}/points/scroll")
async def scroll(name: str, request: Request):
    t0 = time.perf_counter()
    return ok(await points.scroll(_service(), name, await _json(request)), t0)


@router.post("/collections/{name}/points/count")
async def count(name: str, request: Request):
    t0 = time.perf_counter()
    return ok(await points.count(_service(), name, await _json(request)), t0)


@router.post("/collections/{name}/points/query")
async def query_points(name: str, request: Request):
    t0 = time.perf_counter()
    return ok(await query.query(_service(), name, await _json(request)), t0)


@router.post("/collections/{name}/points/query/batch")
async def query_batch(name: str, request: Request):
    """Each search takes a token from the key's read rate (the guard took the first), as prism's batch does."""
    t0 = time.perf_counter()
    body = await _json(request)
    searches = body.get("searches") if isinstance(body, dict) else None
    if isinstance(searches, list):
        query.check_batch_size(_service(), len(searches))
    extra = len(searches) - 1 if isinstance(searches, list) else 0
    rate = request.scope.get("state", {}).get("rate_key")
    if extra > 0 and rate is not None:
        from router.serving.metrics import process_state

        refused = process_state().guard.charge(rate, "read", extra)
        if refused is not None:
            return JSONResponse(status_code=refused.status, content=error_body(refused.message, t0),
                                headers={k.decode(): v.decode() for k, v in refused.headers()})
    return ok(await query.query_batch(_service(), name, body), t0)


@router.post("/collections/{name}/points/payload")
async def set_payload(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    return ok(await points.set_payload(_service(), name, await _json(request), wait, overwrite=False), t0)


@router.put("/collections/{name}/points/payload")
async def overwrite_payload(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    return ok(await points.set_payload(_service(), name, await _json(request), wait, overwrite=True), t0)


@router.post("/collections/{name}/points/payload/delete")
async def delete_payload(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    return ok(await points.delete_payload(_service(), name, await _json(request), wait), t0)


@router.post("/collections/{name}/points/payload/clear")
async def clear_payload(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    return ok(await points.clear_payload(_service(), name, await _json(request), wait), t0)


@router.put("/collections/{name}/points/vectors")
async def update_vectors(name: str, request: Request, wait: bool = False):
    t0 = time.perf_counter()
    return ok(await points.update_vectors(_service(), name, await _json(request), wait), t0)


@router.get("/collections/{name}/points/{point_id}")
async def get_point(name: str, point_id: str):
    t0 = time.perf_counter()
    return ok(await points.point(_service(), name, point_id), t0)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def not_served(rest: str, request: Request):
    from starlette.exceptions import HTTPException

    raise HTTPException(404, f"Not found: prism's Qdrant API does not serve {request.method} {PREFIX}/{rest[:100]}")


def mount(api: FastAPI) -> None:
    """Serve the Qdrant-compatible API under /qdrant on `api`."""
    api.include_router(router)
