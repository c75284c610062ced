"""The OpenAPI description of the HTTP API: request bodies, error answers and security schemes.

Endpoints read their JSON bodies themselves (nesting is bounded before parsing, and errors name the field), so
FastAPI cannot see their request models; each route names its model here and `with_schemas` adds the schemas, so
`/openapi.json` documents every body, every answer and every error, and clients can be generated from it.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cluster.collection_spec import CollectionConfig
from cluster.names import MAX_NAME_LENGTH, NAME_PATTERN
from router.schema.common import Error

ERROR_TEXT = {
    400: "the Host header names a host this server does not answer for (allowed_hosts)",
    401: "no API key, or one that is not valid (WWW-Authenticate: Bearer)",
    403: "the key lacks the role this endpoint needs, or is scoped to other collections",
    404: "no such collection (or point)",
    409: "the collection exists already, or is being resharded",
    413: "the body is larger than max_upload_bytes",
    415: "a JSON body not sent as Content-Type: application/json",
    422: "bad input (a collection name or an id outside its rule too): `field` names what to change",
    429: "rate limit reached: retry after Retry-After seconds",
    502: "Milvus or Elasticsearch failed on a write or an admin call",
    503: "not enough shards answered (coverage), or an encoder or the metadata store is unavailable",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds until a request is admitted"}},
}
ACCESS = (400, 401, 403, 429)
BODY = (413, 415, 422)
READS = ACCESS + BODY + (404, 503)
WRITES = ACCESS + BODY + (404, 502, 503)
OPEN_ROUTES = ("/health", "/docs", "/redoc", "/openapi.json")

REQUEST_MODELS: dict[str, type[BaseModel]] = {}


def documented(codes: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for these error codes, each answered with the Error model."""
    json_error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {c: {"model": Error, "description": ERROR_TEXT[c], "content": json_error,
                **({"headers": _HEADERS[c]} if c in _HEADERS else {})} for c in sorted(set(codes))}


def body_doc(model: type[BaseModel] | str, codes: tuple[int, ...]) -> dict[str, Any]:
    """Route keywords documenting a JSON request body of `model` (its name, for models built in `schemas`)."""
    name = model if isinstance(model, str) else model.__name__
    if not isinstance(model, str):
        REQUEST_MODELS[name] = model
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
    return {"responses": documented(codes), "openapi_extra": {"requestBody": body}}


def _collection_spec() -> dict[str, Any]:
    """A collection's PUT body: its config without `name` (the path gives it)."""
    schema = CollectionConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["properties"].pop("name", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    schema["title"] = "CollectionSpec"
    return schema


def request_schemas() -> dict[str, dict[str, Any]]:
    """Component schemas of every request model (and what they refer to)."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in REQUEST_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    spec = _collection_spec()
    out.update(spec.pop("$defs", {}))
    out["CollectionSpec"] = spec
    return out


def with_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """Add request schemas and security to FastAPI's generated description (open routes need no key)."""
    comps = schema.setdefault("components", {})
    schemas = comps.setdefault("schemas", {})
    for name, s in request_schemas().items():
        schemas.setdefault(name, s)
    comps["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    schema["security"] = [{"bearer": []}, {"apiKey": []}]
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            if path in OPEN_ROUTES:
                op["security"] = []
            for param in op.get("parameters", []):
                if param.get("in") == "path" and param.get("name") in ("name", "alias"):  # the name rule
                    param["schema"] = {**param.get("schema", {}), "pattern": NAME_PATTERN,
                                       "maxLength": MAX_NAME_LENGTH}
            # FastAPI documents its own validation error body; prism's handler answers those in the Error shape.
            bad = op.get("responses", {}).get("422", {}).get("content", {}).get("application/json", {})
            if bad.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                op["responses"]["422"] = {"description": ERROR_TEXT[422], "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema
