"""The checks of what users write: a collection's `routing` setting and a query's `probe`. Pure functions that
return the normalised value or raise InvalidRequest (422) naming the field and the bad value.

    routing: {"method": "hash"}                                        (the default: the ring over point ids)
             {"method": "vector", "space": "<space>", "centroids": 256}  (centroids optional, default 256)
             {"method": "key", "field": "<payload field>"}
    probe:   an integer >= 1, or "all"
"""
from __future__ import annotations

from typing import Any, Collection, Mapping

from cluster.errors import InvalidRequest
from router.routing.keys import KEY_TYPES

METHODS = ("hash", "vector", "key")
KEYS = {"hash": {"method"}, "vector": {"method", "space", "centroids"}, "key": {"method", "field"}}
DEFAULT_CENTROIDS = 256
MAX_CENTROIDS = 2_000  # the 100k-point training sample holds 50 points a centroid at this count, no fewer
TRAIN_PER_CENTROID = 50  # training starts on its own once a collection holds this many points per centroid


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_routing(value: Any, *, dense: Mapping[str, str] | None = None, lexical: Collection[str] = (),
                  mapping: Mapping[str, str] | None = None, shards: int | None = None,
                  path: str = "routing") -> dict[str, Any]:
    """The routing setting, normalised (defaults filled in). Given the collection's dense spaces (name -> metric),
    its lexical spaces, its metadata mapping (field -> type) and shard count, also checks what they decide: a vector
    space that exists and is dense, a key field that is mapped as keyword or integer, at least one centroid a shard."""
    if value is None:
        return {"method": "hash"}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{path}: expected an object like {{'method': 'hash'}}, got {_show(value)}", field=path)
    method = value.get("method")
    if method not in METHODS:
        raise InvalidRequest(f"{path}.method: must be one of {list(METHODS)}, got {_show(method)}",
                             field=f"{path}.method")
    extra = sorted(set(value) - KEYS[method], key=str)
    if extra:
        raise InvalidRequest(f"{path}: {method} routing takes only {sorted(KEYS[method])}, got also {_show(extra)}",
                             field=f"{path}.{extra[0]}")
    if method == "hash":
        return {"method": "hash"}
    if method == "vector":
        return {"method": "vector", "space": _space(value.get("space"), dense, lexical, f"{path}.space"),
                "centroids": _centroids(value.get("centroids", DEFAULT_CENTROIDS), shards, f"{path}.centroids")}
    return {"method": "key", "field": _field(value.get("field"), mapping, f"{path}.field")}


def _space(space: Any, dense: Mapping[str, str] | None, lexical: Collection[str], path: str) -> str:
    if not isinstance(space, str) or not space:
        raise InvalidRequest(f"{path}: vector routing names the space to route by, got {_show(space)}", field=path)
    if space in lexical:
        raise InvalidRequest(f"{path}: {space!r} is a bm25 space; vector routing needs a dense vector space",
                             field=path)
    if dense is not None and space not in dense:
        known = ", ".join(sorted(dense)) or "none"
        raise InvalidRequest(f"{path}: no vector space {space!r} in this collection (its spaces: {known})",
                             field=path)
    return space


def _centroids(n: Any, shards: int | None, path: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CENTROIDS:
        raise InvalidRequest(f"{path}: an integer from 1 to {MAX_CENTROIDS}, got {_show(n)}", field=path)
    if shards is not None and n < shards:
        raise InvalidRequest(f"{path}: {n} centroids cannot spread points over {shards} shards (need >= {shards})",
                             field=path)
    return n


def _field(name: Any, mapping: Mapping[str, str] | None, path: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{path}: key routing names a payload field, got {_show(name)}", field=path)
    if mapping is not None:
        if name not in mapping:
            known = ", ".join(sorted(mapping)) or "none: the collection has no metadata mapping"
            raise InvalidRequest(f"{path}: field {name!r} is not in the metadata mapping (known: {known})",
                                 field=path)
        if mapping[name] not in KEY_TYPES:
            raise InvalidRequest(f"{path}: field {name!r} is {mapping[name]}; a routing key is a "
                                 f"{' or '.join(KEY_TYPES)} field (one exact value a point)", field=path)
    return name


def check_probe(value: Any, path: str = "probe") -> int | str:
    """A query's probe: an integer >= 1 (shards to visit) or "all"."""
    if value == "all" and isinstance(value, str):
        return "all"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{path}: an integer >= 1 or \"all\", got {_show(value)}", field=path)
    return value


def training_due(routing: Mapping[str, Any], points: int, trained: bool) -> bool:
    """Whether a vector-routed collection that was never trained holds enough points to train on its own."""
    return (not trained and routing.get("method") == "vector" and
            points >= TRAIN_PER_CENTROID * int(routing.get("centroids", DEFAULT_CENTROIDS)))
