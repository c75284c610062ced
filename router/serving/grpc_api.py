"""gRPC API v1 (cluster/proto/prism/v1/prism.proto): each method mapped to its HTTP endpoint, the same service call
and the same access rule. No Ray and no Serve here: the Serve ingress (router/serving/app.py) hands each call to `handle`
with Serve's gRPC context, and tests call it with any object that has the same five methods.

- Requests: proto -> the HTTP body (a dict), then the very parsing and validation HTTP uses. Unset `optional`
  scalars take the HTTP defaults; Struct numbers that are integral become integers, as JSON `2` would.
- Answers: the service's pydantic model -> its JSON form -> the proto message (unknown fields are an error, so
  the proto and the models cannot drift apart silently: tests exercise every method).
- Errors: prism's error tree -> a gRPC status (ERROR_CODES), the message as details, and in trailing metadata
  `prism-error` (the code HTTP answers), `prism-field`, `retry-after`, plus the standard `grpc-status-details-bin`
  (google.rpc.Status with ErrorInfo, and BadRequest naming the field).
- Names: the collection a request names is held to the name rule (cluster.names) before the guard builds the
  HTTP path it rules on, so a name is never read as a path (`../catalog/x`) nor escapes a key's scope.
- Failures outside prism's error tree answer INTERNAL with a reference to the ingress log, never their text (it
  may quote files, paths or backend addresses).
- Deadlines: Ray Serve does not hand a client's deadline to the replica, so clients send the time they give a
  call as `prism-budget-ms` metadata (PrismClient does it from its timeout); it becomes the query's `budget_ms`
  unless the request sets one. A client deadline still ends the call on the client's side.
"""
from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from pydantic import BaseModel

from cluster.client import struct_numbers
from cluster.errors import CollectionExists, InvalidRequest, PayloadTooLarge, PrismError, describe
from cluster.names import check_name
from router.serving.access import Refusal
from cluster.proto.prism.v1 import prism_pb2 as pb

SERVICES = ("prism.v1.Search", "prism.v1.Collections", "grpc.health.v1.Health")
SERVICER_FUNCTIONS = [
    "cluster.proto.prism.v1.prism_pb2_grpc.add_SearchServicer_to_server",
    "cluster.proto.prism.v1.prism_pb2_grpc.add_CollectionsServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
BUDGET_METADATA = "prism-budget-ms"
log = logging.getLogger("prism.grpc")

# HTTP status -> gRPC status. 409 is ALREADY_EXISTS for an existing collection, ABORTED for other conflicts.
ERROR_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Context(Protocol):
    """What `handle` needs of a gRPC servicer context (Serve's RayServegRPCContext has these)."""

    def invocation_metadata(self) -> Any: ...
    def peer(self) -> str: ...
    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, metadata: list[tuple[str, Any]]) -> None: ...


# ---- requests: proto -> HTTP body ----

def _plain(msg: Message) -> dict[str, Any]:
    """The message in proto's JSON mapping, with the proto field names; unset fields left out. A Struct number that
    is NaN or infinite has no JSON form (the HTTP body could not carry it either): a 422 naming the field."""
    try:
        return json_format.MessageToDict(msg, preserving_proto_field_name=True)
    except json_format.SerializeToJsonError as exc:
        named = re.findall(r"serialize (\w+) field", str(exc))  # proto's own field names, innermost last
        field = named[-1] if named else None
        raise InvalidRequest(f"{field or 'request'}: holds a number that is NaN or infinite; numbers must be finite",
                             field=field) from None


def _vectors(d: dict[str, Any], key: str = "vectors") -> None:
    if key in d:
        d[key] = {space: v.get("values", []) for space, v in d[key].items()}


def _selector(d: dict[str, Any], key: str) -> None:
    """PayloadSelector / VectorSelector -> true | false | [fields] | {"exclude": [fields]}."""
    sel = d.get(key)
    if sel is None:
        return
    if "enable" in sel:
        d[key] = sel["enable"]
    elif "include" in sel:
        d[key] = sel["include"].get("fields", [])
    elif "spaces" in sel:
        d[key] = sel["spaces"].get("fields", [])
    elif "exclude" in sel:
        d[key] = {"exclude": sel["exclude"].get("fields", [])}
    else:
        raise InvalidRequest(f"{key}: set one of its fields", field=key)


def query_body(msg: pb.QueryRequest, collection: str | None = None) -> dict[str, Any]:
    """A QueryRequest as the HTTP body of POST .../query (the collection taken out)."""
    d = _plain(msg)
    name = d.pop("collection", "")
    if collection is not None and name and name != collection:
        raise InvalidRequest(f"collection: a batch query names {name!r}, the batch {collection!r}",
                             field="queries.collection")
    for p in d.get("prefetch", []):
        if "filter" in p:
            p["filter"] = struct_numbers(p["filter"])
        if "params" in p:
            p["params"] = struct_numbers(p["params"])
    if "filter" in d:
        d["filter"] = struct_numbers(d["filter"])
    for stage in d.get("stages", []):
        for boost in stage.get("formula", {}).get("boost", []):
            boost.update({k: struct_numbers(boost[k]) for k in ("equals", "origin", "scale", "offset") if k in boost})
    _selector(d, "with_payload")
    _selector(d, "with_vectors")
    _probe(d)
    return d


def _probe(d: dict[str, Any]) -> None:
    """`probe` (int32) and `probe_all` (bool) as the HTTP body's one `probe` field: an integer, or "all"."""
    if d.pop("probe_all", False):
        if "probe" in d:
            raise InvalidRequest(f"probe: {d['probe']!r} with probe_all: set one of them", field="probe")
        d["probe"] = "all"


def batch_body(msg: pb.QueryBatchRequest) -> dict[str, Any]:
    return {"queries": [query_body(q, msg.collection) for q in msg.queries]}


def upsert_body(msg: pb.UpsertRequest) -> dict[str, Any]:
    d = _plain(msg)
    d.pop("collection", None)
    for p in d.get("points", []):
        p.setdefault("id", "")
        if "payload" in p:
            p["payload"] = struct_numbers(p["payload"])
        _vectors(p)
    return d


def update_vectors_body(msg: pb.UpdateVectorsRequest) -> dict[str, Any]:
    d = _plain(msg)
    d.pop("collection", None)
    for p in d.get("points", []):
        p.setdefault("id", "")
        _vectors(p)
    return d


def delete_body(msg: pb.DeleteRequest) -> dict[str, Any]:
    d = _plain(msg)
    d.pop("collection", None)
    if "filter" in d:
        d["filter"] = struct_numbers(d["filter"])
    return d


def spec_body(msg: pb.CreateCollectionRequest) -> dict[str, Any]:
    return struct_numbers(_plain(msg).get("spec", {}))


# ---- answers: model -> proto ----

def _hit(h: dict[str, Any]) -> dict[str, Any]:
    if h.get("vectors") is not None:
        h["vectors"] = {space: {"values": v} for space, v in h["vectors"].items()}
    return h


def query_message(answer: Any) -> dict[str, Any]:
    d = _json(answer)
    d["hits"] = [_hit(h) for h in d.get("hits", [])]
    for g in d.get("groups") or []:
        g["hits"] = [_hit(h) for h in g["hits"]]
    return d


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return {k: v for k, v in value.items() if v is not None}


def to_message(value: dict[str, Any], cls: type[Message]) -> Message:
    """The answer's JSON form as `cls`; a field the proto lacks is an error, never dropped."""
    return json_format.ParseDict(value, cls())


# ---- the method table ----

def _path(collection: str, rest: str = "") -> str:
    return f"/v1/collections/{collection}{rest}"


@dataclass(frozen=True)
class Rpc:
    """One gRPC method: the HTTP route whose access rule it follows, and how it calls the service. `named`: the
    request field holding the collection name ("" for none)."""

    http_method: str
    path: Callable[[Any], str]
    call: Callable[[Any, Any, Any, int | None], Awaitable[dict[str, Any]]]
    response: type[Message]
    named: str = "collection"


def _budget(body: dict[str, Any], budget_ms: int | None) -> dict[str, Any]:
    if budget_ms is not None and "budget_ms" not in body:
        body["budget_ms"] = budget_ms
    return body


async def _query(svc: Any, req: pb.QueryRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return query_message(await svc.query(req.collection, _budget(query_body(req), budget_ms)))


async def _query_batch(svc: Any, req: pb.QueryBatchRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    body = batch_body(req)
    for q in body["queries"]:
        _budget(q, budget_ms)
    answer = await svc.query_batch(req.collection, body)
    return {"results": [query_message(r) for r in answer.results]}


async def _upsert(svc: Any, req: pb.UpsertRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.upsert(req.collection, upsert_body(req)))


async def _delete(svc: Any, req: pb.DeleteRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.delete_points(req.collection, delete_body(req)))


async def _update_vectors(svc: Any, req: pb.UpdateVectorsRequest, principal: Any,
                          budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.update_vectors(req.collection, update_vectors_body(req)))


async def _create(svc: Any, req: pb.CreateCollectionRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.create_collection(req.name, spec_body(req)))


async def _get(svc: Any, req: pb.GetCollectionRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.info(req.name))


async def _list(svc: Any, req: pb.ListCollectionsRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    names = svc.list_collections()
    if principal is not None and principal.collections is not None:
        names = [n for n in names if n in principal.collections]
    return {"collections": names}


async def _drop(svc: Any, req: pb.DropCollectionRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.delete_collection(req.name))


async def _set_alias(svc: Any, req: pb.SetAliasRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.set_alias(req.alias, {"collection": req.collection}, principal))


async def _list_aliases(svc: Any, req: pb.ListAliasesRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(svc.list_aliases(principal))


async def _drop_alias(svc: Any, req: pb.DropAliasRequest, principal: Any, budget_ms: int | None) -> dict[str, Any]:
    return _json(await svc.delete_alias(req.alias, principal))


RPCS: dict[str, Rpc] = {
    "Query": Rpc("POST", lambda r: _path(r.collection, "/query"), _query, pb.QueryResponse),
    "QueryBatch": Rpc("POST", lambda r: _path(r.collection, "/query/batch"), _query_batch, pb.QueryBatchResponse),
    "Upsert": Rpc("POST", lambda r: _path(r.collection, "/points"), _upsert, pb.UpsertResponse),
    "Delete": Rpc("POST", lambda r: _path(r.collection, "/points/delete"), _delete, pb.DeleteResponse),
    "UpdateVectors": Rpc("POST", lambda r: _path(r.collection, "/points/vectors"), _update_vectors,
                         pb.UpsertResponse),
    "Create": Rpc("PUT", lambda r: _path(r.name), _create, pb.CollectionInfo, "name"),
    "Get": Rpc("GET", lambda r: _path(r.name), _get, pb.CollectionInfo, "name"),
    "List": Rpc("GET", lambda r: "/v1/collections", _list, pb.CollectionList, ""),
    "Drop": Rpc("DELETE", lambda r: _path(r.name), _drop, pb.DroppedCollection, "name"),
    "SetAlias": Rpc("PUT", lambda r: f"/v1/aliases/{r.alias}", _set_alias, pb.AliasChange, "alias"),
    "ListAliases": Rpc("GET", lambda r: "/v1/aliases", _list_aliases, pb.AliasList, ""),
    "DropAlias": Rpc("DELETE", lambda r: f"/v1/aliases/{r.alias}", _drop_alias, pb.AliasChange, "alias"),
}


# ---- errors ----

def grpc_code(status: int, code: str) -> grpc.StatusCode:
    if status == 409 and code == CollectionExists.code:
        return grpc.StatusCode.ALREADY_EXISTS
    return ERROR_CODES.get(status, grpc.StatusCode.INTERNAL)


def refuse(context: Context, status: int, code: str, message: str, field: str | None = None,
           retry_after_s: float | None = None) -> None:
    """Set the gRPC status, details and trailing metadata for an HTTP-style refusal."""
    gcode = grpc_code(status, code)
    rich = status_pb2.Status(code=getattr(code_pb2, gcode.name), message=message)
    info = AnyProto()
    info.Pack(error_details_pb2.ErrorInfo(reason=code, domain="prism", metadata={"http_status": str(status)}))
    rich.details.append(info)
    trailing: list[tuple[str, Any]] = [("prism-error", code)]
    if field:
        trailing.append(("prism-field", field))
        bad = AnyProto()
        bad.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
        rich.details.append(bad)
    if retry_after_s is not None:
        trailing.append(("retry-after", str(max(1, math.ceil(retry_after_s)))))
    trailing.append(("grpc-status-details-bin", rich.SerializeToString()))
    context.set_code(gcode)
    context.set_details(message)
    context.set_trailing_metadata(trailing)


def _headers(metadata: Any) -> list[tuple[bytes, bytes]]:
    out = []
    for key, value in metadata or ():
        if isinstance(value, str):
            out.append((key.lower().encode("latin-1"), value.encode("latin-1", "replace")))
    return out


def _peer_host(peer: str) -> str | None:
    """'ipv4:127.0.0.1:5000' / 'ipv6:[::1]:5000' -> the address without the port."""
    kind, _, rest = (peer or "").partition(":")
    if not rest:
        return None
    host = rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else rest
    return host.strip("[]")


def budget_from(metadata: Any) -> int | None:
    """`prism-budget-ms` metadata (what a client gives the call) as a budget in ms; bad values are a 422."""
    for key, value in metadata or ():
        if key.lower() == BUDGET_METADATA:
            try:
                ms = int(float(value))
            except (TypeError, ValueError, OverflowError):  # OverflowError: "inf"
                raise InvalidRequest(f"{BUDGET_METADATA}: not a number of milliseconds: {value!r}",
                                     field=BUDGET_METADATA) from None
            if ms < 1:
                raise InvalidRequest(f"{BUDGET_METADATA}: must be >= 1 ms, got {ms}", field=BUDGET_METADATA)
            return min(ms, 600_000)
    return None


async def handle(method: str, request: Message, context: Context, *, service: Any, guard: Any,
                 max_message_bytes: int | None = None) -> Message:
    """Run one gRPC call the way its HTTP endpoint runs: the name rule, the guard, the service, the error tree."""
    rpc = RPCS[method]
    metadata = context.invocation_metadata()
    try:
        if max_message_bytes is not None and request.ByteSize() > max_message_bytes:
            raise PayloadTooLarge(f"request message of {request.ByteSize()} bytes exceeds the limit of "
                                  f"{max_message_bytes} bytes (grpc_max_message_bytes)")
        if rpc.named:
            check_name(getattr(request, rpc.named), field=rpc.named)
    except PrismError as exc:
        refuse(context, exc.status, exc.code, exc.message, exc.field)
        return rpc.response()
    principal = None
    try:
        if guard is not None:  # inside the try: whatever the guard raises is answered without its text too
            cost = len(request.queries) if method == "QueryBatch" else 1
            verdict = guard.check(rpc.http_method, rpc.path(request), _headers(metadata),
                                  _peer_host(context.peer()), cost=max(1, cost))
            if isinstance(verdict, Refusal):
                refuse(context, verdict.status, verdict.error, verdict.message, verdict.field,
                       retry_after_s=verdict.retry_after_s)
                return rpc.response()
            principal = verdict
        return to_message(await rpc.call(service, request, principal, budget_from(metadata)), rpc.response)
    except PrismError as exc:
        refuse(context, exc.status, exc.code, exc.message, exc.field)
    except Exception as exc:  # noqa: BLE001 - outside the error tree: logged here, never quoted to the client
        ref = secrets.token_hex(4)
        log.error("gRPC %s failed (ref %s): %s", method, ref, describe(exc), exc_info=exc)
        refuse(context, 500, "internal", f"internal error (ref {ref}; the ingress log has the details)")
    return rpc.response()


def health_status(service: str) -> tuple[int | None, str]:
    """grpc.health.v1 Check: (HealthCheckResponse.ServingStatus value, '') for this server or a service it serves,
    (None, why) for another name (answered NOT_FOUND, as the health protocol asks)."""
    from grpc_health.v1 import health_pb2

    if service in ("", *SERVICES):
        return health_pb2.HealthCheckResponse.SERVING, ""
    return None, f"unknown service {service!r}; this server has {', '.join(SERVICES)}"
