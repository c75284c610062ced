"""A small Python client for prism, over HTTP or gRPC with the same methods and the same answers (plain dicts in
the HTTP API's JSON shape).

    from cluster.client import PrismClient
    with PrismClient("grpc://127.0.0.1:9000", api_key=key) as c:      # or "http://127.0.0.1:8000"
        hits = c.query("products", {"prefetch": [{"space": "text", "text": "red shoes"}], "limit": 5})["hits"]

`grpcs://host:port` speaks TLS: the server's certificate is checked against `tls_ca` (a PEM file's path or its
bytes), else the system's CAs; there is no fallback to plaintext. Collection names are held to the server's name
rule before any request is built from them (a 422 PrismClientError, nothing sent).

Errors raise PrismClientError with the HTTP-style `error` code, `message`, `field` and `status` (the HTTP status,
or the gRPC status code's name over gRPC). `timeout` on a call is its deadline; over gRPC the client also sends it
as `prism-budget-ms` metadata, so the server answers (partially, with coverage) before the deadline passes.
"""
from __future__ import annotations

import json
import math
from typing import Any

BUDGET_SHARE = 0.8  # of a call's timeout, given to the server as its budget (the rest: transport and encoding)


class PrismClientError(Exception):
    def __init__(self, status: int | str, error: str, message: str, field: str | None = None,
                 retry_after: str | None = None):
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message, self.field, self.retry_after = status, error, message, field, retry_after


def struct_numbers(value: Any) -> Any:
    """google.protobuf.Struct numbers are doubles: whole ones below 2^53 become ints again, as JSON `2` parses
    (recursively). The server applies it to what a client sends, the client to what the server answers."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and math.isfinite(value) and abs(value) < 2 ** 53 else value
    if isinstance(value, dict):
        return {k: struct_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [struct_numbers(v) for v in value]
    return value


def _selector(value: Any, list_key: str) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"enable": value}
    if isinstance(value, list):
        return {list_key: {"fields": value}}
    if isinstance(value, dict) and "exclude" in value:
        return {"exclude": {"fields": value["exclude"]}}
    raise PrismClientError(422, "invalid_request", f"not a selector: {value!r}")


def _image(ref: str) -> str:
    """base64 (or a data: URL of it), as proto's JSON mapping takes bytes."""
    return ref.split(",", 1)[1] if ref.startswith("data:") else ref


def query_proto_dict(body: dict[str, Any], collection: str = "") -> dict[str, Any]:
    """An HTTP query body in proto's JSON mapping of prism.v1.QueryRequest."""
    d = {**body}
    if collection:
        d["collection"] = collection
    d["prefetch"] = [{**p, **({"image": _image(p["image"])} if p.get("image") else {})} for p in d.get("prefetch", [])]
    if "with_payload" in d:
        d["with_payload"] = _selector(d["with_payload"], "include")
    if "with_vectors" in d:
        d["with_vectors"] = _selector(d["with_vectors"], "spaces")
    if d.get("probe") == "all":  # the proto's probe is an int32; "all" travels as probe_all
        d["probe"], d["probe_all"] = None, True
    return {k: v for k, v in d.items() if v is not None}


def _wrap_vectors(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**p, **({"vectors": {s: {"values": v} for s, v in p["vectors"].items()}} if p.get("vectors") else {})}
            for p in points]


def _unwrap_hit(h: dict[str, Any]) -> dict[str, Any]:
    if "payload" in h:
        h["payload"] = struct_numbers(h["payload"])
    h["vectors"] = {s: v.get("values", []) for s, v in h["vectors"].items()} if h.get("vectors") else None
    return h


def _answer(d: dict[str, Any]) -> dict[str, Any]:
    d["hits"] = [_unwrap_hit(h) for h in d.get("hits", [])]
    d["groups"] = [{**g, "hits": [_unwrap_hit(h) for h in g.get("hits", [])]} for g in d["groups"]] \
        if d.get("groups") else None
    for key in ("timings_ms", "search_params"):
        d[key] = struct_numbers(d[key]) if d.get(key) else None
    return d


def _named(name: str) -> str:
    from cluster.names import name_problem

    problem = name_problem(name)
    if problem:
        raise PrismClientError(422, "invalid_request", problem, "name")
    return name


class PrismClient:
    """`url`: http(s)://host:port for HTTP, grpc://host:port for gRPC, grpcs://host:port for gRPC over TLS
    (`tls_ca`: the CA's PEM, as a path or bytes; default: the system's CAs)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0,
                 tls_ca: str | bytes | None = None):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout
        self.protocol = "grpc" if self.url.startswith(("grpc://", "grpcs://")) else "http"
        if self.protocol == "grpc":
            import grpc

            from cluster.proto.prism.v1 import prism_pb2 as pb, prism_pb2_grpc as pbg

            self._pb = pb
            options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
            target = self.url.split("://", 1)[1]
            if self.url.startswith("grpcs://"):
                ca = tls_ca
                if isinstance(ca, str):
                    with open(ca, "rb") as f:
                        ca = f.read()
                self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca),
                                                    options=options)
            else:
                self._channel = grpc.insecure_channel(target, options=options)
            self._search, self._collections = pbg.SearchStub(self._channel), pbg.CollectionsStub(self._channel)
        else:
            import httpx

            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    # ---- transport ----

    def _rpc(self, stub: Any, method: str, request: dict[str, Any], cls: str, timeout: float | None,
             budget: bool = False) -> dict[str, Any]:
        import grpc
        from google.protobuf import json_format

        msg = json_format.ParseDict(request, getattr(self._pb, cls)())
        metadata = [("authorization", f"Bearer {self.api_key}")] if self.api_key else []
        if budget and timeout is not None:
            metadata.append(("prism-budget-ms", str(max(1, int(timeout * 1000 * BUDGET_SHARE)))))
        try:
            answer = getattr(stub, method)(msg, metadata=metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            trailing = dict(exc.trailing_metadata() or ())
            raise PrismClientError(exc.code().name, trailing.get("prism-error", exc.code().name.lower()),
                                   exc.details() or "", trailing.get("prism-field"),
                                   trailing.get("retry-after")) from None
        return json_format.MessageToDict(answer, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        r = self._http.request(method, path, json=body, timeout=timeout or self.timeout)
        if r.status_code != 200:
            try:
                e = r.json()
            except json.JSONDecodeError:
                e = {"error": "http_error", "message": r.text[:300]}
            raise PrismClientError(r.status_code, e.get("error", "http_error"), e.get("message", ""), e.get("field"),
                                   r.headers.get("retry-after"))
        return r.json()

    # ---- the API ----

    def health(self) -> dict[str, Any]:
        """HTTP: GET /health. gRPC: grpc.health.v1.Health/Check -> {"status": "SERVING"}."""
        if self.protocol == "http":
            return self._call("GET", "/health")
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(health_pb2.HealthCheckRequest(),
                                                                    timeout=self.timeout)
        except grpc.RpcError as exc:
            raise PrismClientError(exc.code().name, exc.code().name.lower(), exc.details() or "") from None
        return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}

    def query(self, collection: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        _named(collection)
        if self.protocol == "http":
            return self._call("POST", f"/v1/collections/{collection}/query", body, timeout)
        return _answer(self._rpc(self._search, "Query", query_proto_dict(body, collection), "QueryRequest", timeout,
                                 budget=True))

    def query_batch(self, collection: str, queries: list[dict[str, Any]],
                    timeout: float | None = None) -> dict[str, Any]:
        _named(collection)
        if self.protocol == "http":
            return self._call("POST", f"/v1/collections/{collection}/query/batch", {"queries": queries}, timeout)
        d = self._rpc(self._search, "QueryBatch", {"collection": collection,
                                                   "queries": [query_proto_dict(q) for q in queries]},
                      "QueryBatchRequest", timeout, budget=True)
        return {"results": [_answer(r) for r in d.get("results", [])]}

    def upsert(self, collection: str, points: list[dict[str, Any]], wait: bool = True) -> dict[str, Any]:
        _named(collection)
        if self.protocol == "http":
            return self._call("POST", f"/v1/collections/{collection}/points", {"points": points, "wait": wait})
        return self._rpc(self._search, "Upsert", {"collection": collection, "points": _wrap_vectors(points),
                                                  "wait": wait}, "UpsertRequest", None)

    def update_vectors(self, collection: str, points: list[dict[str, Any]], wait: bool = True) -> dict[str, Any]:
        _named(collection)
        if self.protocol == "http":
            return self._call("POST", f"/v1/collections/{collection}/points/vectors", {"points": points, "wait": wait})
        return self._rpc(self._search, "UpdateVectors", {"collection": collection, "points": _wrap_vectors(points),
                                                         "wait": wait}, "UpdateVectorsRequest", None)

    def delete(self, collection: str, ids: list[str] | None = None, filter: dict[str, Any] | None = None,
               wait: bool = True) -> dict[str, Any]:
        _named(collection)
        body = {k: v for k, v in (("ids", ids), ("filter", filter)) if v is not None}
        if self.protocol == "http":
            return self._call("POST", f"/v1/collections/{collection}/points/delete", {**body, "wait": wait})
        return self._rpc(self._search, "Delete", {"collection": collection, **body, "wait": wait}, "DeleteRequest",
                         None)

    def create_collection(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        _named(name)
        if self.protocol == "http":
            return self._call("PUT", f"/v1/collections/{name}", spec)
        return self._info(self._rpc(self._collections, "Create", {"name": name, "spec": spec},
                                    "CreateCollectionRequest", None))

    def get_collection(self, name: str) -> dict[str, Any]:
        _named(name)
        if self.protocol == "http":
            return self._call("GET", f"/v1/collections/{name}")
        return self._info(self._rpc(self._collections, "Get", {"name": name}, "GetCollectionRequest", None))

    def list_collections(self) -> list[str]:
        if self.protocol == "http":
            return self._call("GET", "/v1/collections")["collections"]
        return self._rpc(self._collections, "List", {}, "ListCollectionsRequest", None)["collections"]

    def drop_collection(self, name: str) -> dict[str, Any]:
        _named(name)
        if self.protocol == "http":
            return self._call("DELETE", f"/v1/collections/{name}")
        return self._rpc(self._collections, "Drop", {"name": name}, "DropCollectionRequest", None)

    @staticmethod
    def _info(d: dict[str, Any]) -> dict[str, Any]:
        d["config"] = struct_numbers(d.get("config", {}))
        d["counts"] = {k: int(v) for k, v in d.get("counts", {}).items()}
        for s in d.get("shards", []):
            s["counts"] = {k: int(v) for k, v in s.get("counts", {}).items()}
            for key in ("applied_seq", "committed_seq", "lag", "faults"):
                s[key] = int(s.get(key, 0))
        return d

    def close(self) -> None:
        if self.protocol == "grpc":
            self._channel.close()
        else:
            self._http.close()

    def __enter__(self) -> "PrismClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
