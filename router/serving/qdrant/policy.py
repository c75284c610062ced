"""Who may call which /qdrant route: the role each needs and the collection it names. Pure; router.serving.access asks it
for every path under /qdrant, so the guard (keys, roles, scopes, rate limits) is prism's own.

Reads need `read`, point writes (and payload indexes, which only map fields) `write`, creating or dropping a
collection `admin`; the root (title and version, which qdrant-client's compatibility check reads) is open, as
prism's /health is. Deny by default: anything not listed needs admin, then answers 404.
"""
from __future__ import annotations

PREFIX = "/qdrant"
_POINT_READS = frozenset({"scroll", "count", "query"})
_POINT_WRITES = frozenset({"delete", "payload", "batch"})
_NESTED = {("payload", "delete"): "write", ("payload", "clear"): "write", ("vectors", "delete"): "write",
           ("query", "batch"): "read", ("query", "groups"): "read"}


def qdrant_access(method: str, parts: list[str]) -> tuple[str | None, str | None]:
    """(role, collection) for the path segments after `qdrant` (a trailing slash already dropped)."""
    read = method in ("GET", "HEAD")
    if not parts:
        return (None, None) if read else ("admin", None)
    if parts[0] != "collections":
        return "admin", None
    if len(parts) == 1:
        return ("read" if read else "admin"), None
    name, rest = parts[1], parts[2:]
    if not rest:
        return ("read" if read else "admin"), name
    if rest == ["exists"] and read:
        return "read", name
    if rest[0] == "index" and method in ("PUT", "DELETE") and len(rest) <= 2:
        return "write", name
    if rest[0] != "points":
        return "admin", name
    if len(rest) == 1:
        return {"PUT": "write", "POST": "read"}.get(method, "admin"), name
    if len(rest) == 2:
        if read:
            return "read", name  # GET .../points/{id}
        if method == "POST" and rest[1] in _POINT_READS:
            return "read", name
        if method == "POST" and rest[1] in _POINT_WRITES or method == "PUT" and rest[1] in ("payload", "vectors"):
            return "write", name
        return "admin", name
    if len(rest) == 3 and method == "POST" and (rest[1], rest[2]) in _NESTED:
        return _NESTED[(rest[1], rest[2])], name
    return "admin", name
