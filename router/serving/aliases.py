"""The /v1/aliases HTTP routes: create or switch an alias (admin), list them, delete one (admin). Each calls the
PrismService of this ingress replica, which keeps aliases in the shared catalog (router.collection.catalog) and
resolves them wherever a collection is looked up; the guard (access.route_access) has run before any of this."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request

from cluster.errors import ShardUnavailable
from router.schema.bodies import read_json
from router.schema.collections import AliasChange, AliasList, AliasRequest
from router.serving.metrics import process_state
from router.serving.openapi import ACCESS, BODY, body_doc, documented

router = APIRouter(prefix="/v1/aliases", tags=["aliases"])


def _service() -> Any:
    service = process_state().service
    if service is None:
        raise ShardUnavailable("the ingress is starting; retry")
    return service


def _principal(request: Request) -> Any:
    """The caller's key (None when auth is off), as the guard found it."""
    return request.scope.get("state", {}).get("principal")


@router.get("", response_model=AliasList, responses=documented(ACCESS))
async def list_aliases(request: Request):
    """Every alias and the collection it stands for (read role); a key scoped to some collections sees the aliases
    named in its scope."""
    return _service().list_aliases(_principal(request))


@router.put("/{alias}", response_model=AliasChange, **body_doc(AliasRequest, ACCESS + BODY + (404, 409)))
async def set_alias(alias: str, request: Request):
    """Point an alias at a collection, creating it or switching it in one step: every read and write naming the
    alias goes to the new collection from then on, on every ingress replica (admin)."""
    return await _service().set_alias(alias, await read_json(request, process_state().max_upload_bytes),
                                      _principal(request))


@router.delete("/{alias}", response_model=AliasChange, responses=documented(ACCESS + (404,)))
async def delete_alias(alias: str, request: Request):
    """Remove an alias; its collection stays (admin)."""
    return await _service().delete_alias(alias, _principal(request))


def mount(api: FastAPI) -> None:
    api.include_router(router)
