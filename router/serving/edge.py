"""The HTTP edge of an ingress replica: a pure ASGI middleware that runs before any endpoint.

In order: the Host header against the allow-list (router.schema.bodies: DNS rebinding), the body's declared length
against max_upload_bytes, the guard (names, keys, roles, scopes, rate), then the endpoint with a `receive` that
counts the body as it arrives and stops at the limit (chunked bodies and multipart uploads declare no length).
Every request is counted and timed. An exception outside prism's error tree answers a 500 naming a reference in
the log, never its text. (Starlette's BaseHTTPMiddleware, which this replaced, costs a task group and a stream
per request.)
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from cluster.errors import PayloadTooLarge, PrismError, describe
from router.serving.access import Refusal, rate_key
from router.schema.bodies import host_allowed
from router.serving.metrics import process_state
from router.serving.qdrant.errors import body as qdrant_error
from router.serving.qdrant.policy import PREFIX as QDRANT

log = logging.getLogger("prism.ingress")


def refusal_response(r: Refusal, path: str = "") -> JSONResponse:
    """The guard's answer, in prism's Error shape, or in Qdrant's on the Qdrant-compatible API (/qdrant)."""
    content = qdrant_error(r.message) if path == QDRANT or path.startswith(QDRANT + "/") else r.body()
    resp = JSONResponse(status_code=r.status, content=content)
    for k, v in r.headers():
        resp.headers[k.decode()] = v.decode()
    return resp


def internal_error(exc: BaseException, where: str) -> JSONResponse:
    """A 500 that says where to look, not what failed (the text may quote files, paths, backend addresses)."""
    ref = secrets.token_hex(4)
    log.error("%s failed (ref %s): %s", where, ref, describe(exc), exc_info=exc)
    return JSONResponse(status_code=500, content={"error": "internal",
                                                  "message": f"internal error (ref {ref}; the ingress log has it)"})


def _endpoint(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def _prism_error(request: Request, exc: PrismError):
    process_state().metrics.errors.labels(_endpoint(request), exc.code).inc()
    return JSONResponse(status_code=exc.status, content=exc.to_dict())


async def _http_error(request: Request, exc: StarletteHTTPException):
    """Framework refusals (a malformed multipart body, an unknown path or method) in prism's Error shape; a body
    the framework could not parse is bad input like any other: 422. (FastAPI turns any error while it parses a
    form into a 400: one of prism's, such as a body past the limit, answers as itself.)"""
    if isinstance(exc.__cause__, PrismError):
        return await _prism_error(request, exc.__cause__)
    status = 422 if exc.status_code == 400 else exc.status_code
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    process_state().metrics.errors.labels(_endpoint(request), code).inc()
    body = {"error": code, "message": str(exc.detail)}
    if status == 422:
        body["field"] = "body"
    return JSONResponse(status_code=status, content=body, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError):
    process_state().metrics.errors.labels(_endpoint(request), "invalid_request").inc()
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in errors[:5]
    )
    return JSONResponse(status_code=422, content={"error": "invalid_request", "message": message, "field": field})


ERROR_HANDLERS = {PrismError: _prism_error, StarletteHTTPException: _http_error,
                  RequestValidationError: _validation_error}


class BodyLimit:
    """A `receive` that counts body bytes and raises PayloadTooLarge once they pass `limit`."""

    def __init__(self, receive: Any, limit: int):
        self.receive, self.limit, self.seen = receive, limit, 0

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.limit} bytes (max_upload_bytes)")
        return message


class Observe:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, state, status, started = time.perf_counter(), process_state(), 500, False

        async def observed(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        headers = scope["headers"]
        try:
            host = next((v.decode("latin-1") for k, v in headers if k == b"host"), None)
            if not host_allowed(host, state.allowed_hosts):
                await refusal_response(Refusal(400, "invalid_host", f"this server does not answer for host {host!r} "
                                               "(allowed_hosts)"), scope["path"])(scope, receive, observed)
                return
            length = next((v for k, v in headers if k == b"content-length"), b"")
            if length.isdigit() and int(length) > state.max_upload_bytes:
                await refusal_response(Refusal(413, "payload_too_large", f"request body of {int(length)} bytes "
                                               f"exceeds the limit of {state.max_upload_bytes} bytes"),
                                       scope["path"])(scope, receive, observed)
                return
            if state.guard is not None:
                client = scope.get("client")
                verdict = state.guard.check(scope["method"], scope["path"], headers, client[0] if client else None)
                if isinstance(verdict, Refusal):
                    state.metrics.errors.labels("unmatched", verdict.error).inc()
                    await refusal_response(verdict, scope["path"])(scope, receive, observed)
                    return
                scope.setdefault("state", {}).update(principal=verdict,
                                                     rate_key=rate_key(verdict, client[0] if client else None))
            await self.app(scope, BodyLimit(receive, state.max_upload_bytes), observed)
        except Exception as exc:  # noqa: BLE001 - the last line: nothing escapes with its text
            if started:
                raise
            if isinstance(exc, PayloadTooLarge):
                await JSONResponse(status_code=413, content=exc.to_dict())(scope, receive, observed)
            else:
                await internal_error(exc, f"{scope['method']} {scope['path'][:200]}")(scope, receive, observed)
        finally:
            endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
            state.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            state.metrics.latency.labels(endpoint, scope["method"]).observe(time.perf_counter() - t0)
