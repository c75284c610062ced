"""Errors in Qdrant's shape: `{"status": {"error": "..."}, "time": seconds}`, with the status classes Qdrant's
server uses (its REST layer, actix + validator):

    400  a body that is not the shape asked for (Qdrant: "Format error in JSON body"), and wrong input the
         request shape allows (a vector of the wrong size, an unknown vector name, a filter prism cannot run)
    401 / 403 / 429   the guard (router.serving.access): no or a bad key / a key without the role or scope / rate limit
    404  no such collection or point; a path this API does not serve
    409  the collection exists already
    413 / 415   body larger than max_upload_bytes / a JSON body not sent as application/json (prism's rules)
    422  a value outside its range (limit 0, a collection name outside prism's rule): Qdrant's "Validation error"
    502 / 503   a backend failed on a write / not enough shards, or the metadata store, could answer

Every error a /qdrant route raises is answered here (QdrantRoute), never by prism's own handlers; an exception
outside prism's error tree is a 500 naming a log reference, never its text.
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from cluster.errors import (
    CollectionExists, CollectionNotFound, InvalidRequest, PayloadTooLarge, PointNotFound, PrismError,
    UnsupportedMediaType, describe,
)

log = logging.getLogger("prism.qdrant")


class OutOfRange(InvalidRequest):
    """A value the request shape allows but its range does not (Qdrant's 422 "Validation error")."""

    status = 422


class BadFormat(InvalidRequest):
    """A body that is not the shape asked for: a wrong type, an unknown or missing field (Qdrant's 400)."""


class Unsupported(InvalidRequest):
    """Something Qdrant has and prism's Qdrant API does not (yet): a 400 saying so."""

    code = "unsupported"


def body(message: str, started: float | None = None) -> dict[str, Any]:
    return {"status": {"error": message}, "time": round(time.perf_counter() - started, 6) if started else 0.0}


def status_and_message(exc: BaseException, collection: str | None = None) -> tuple[int, str]:
    """What a Qdrant server would answer for a prism error."""
    if isinstance(exc, CollectionNotFound):
        return 404, f"Not found: Collection `{collection}` doesn't exist!" if collection else f"Not found: {exc}"
    if isinstance(exc, PointNotFound):
        return 404, f"Not found: {exc.message}"
    if isinstance(exc, CollectionExists):
        return 409, f"Wrong input: {exc.message}"
    if isinstance(exc, (PayloadTooLarge, UnsupportedMediaType)):
        return exc.status, exc.message
    if isinstance(exc, BadFormat):
        return 400, f"Format error in JSON body: {exc.message}"
    if isinstance(exc, OutOfRange):
        return 422, f"Validation error in JSON body: {exc.message}"
    if isinstance(exc, PrismError):
        if exc.status < 500:  # prism's 422s and 404s (an unknown vector name) are Qdrant's "Wrong input"
            return 400, f"Wrong input: {exc.message}"
        return exc.status, f"Service internal error: {exc.message}" if exc.status == 502 else \
            f"Service unavailable: {exc.message}"
    if isinstance(exc, RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return 400, f"Format error in query parameters: {where}: {first.get('msg')}"
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    raise TypeError(exc)


def error_response(exc: BaseException, request: Request, started: float | None = None) -> JSONResponse:
    from router.serving.metrics import process_state

    route = request.scope.get("route")
    endpoint = getattr(route, "path", None) or "unmatched"
    try:
        status, message = status_and_message(exc, request.path_params.get("name"))
    except TypeError:
        ref = secrets.token_hex(4)
        log.error("%s %s failed (ref %s): %s", request.method, request.url.path[:200], ref, describe(exc),
                  exc_info=exc)
        status, message = 500, f"Service internal error: internal error (ref {ref}; the ingress log has it)"
    code = exc.code if isinstance(exc, PrismError) else "invalid_request" if status < 500 else "internal"
    process_state().metrics.errors.labels(endpoint, code).inc()
    return JSONResponse(status_code=status, content=body(message, started))


class QdrantRoute(APIRoute):
    """A route whose errors are answered in Qdrant's shape (prism's exception handlers never see them)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def answer(request: Request):
            started = time.perf_counter()
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every error is answered in Qdrant's shape
                return error_response(exc, request, started)

        return answer
