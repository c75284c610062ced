"""Points through the Qdrant API: upsert (points or a batch), retrieve, delete (ids or filter), scroll (in id
order, `next_page_offset`), count (exact), set / overwrite / delete / clear payload, update vectors; and the
payload and vector selectors answers share. Everything goes through PrismService.

- Ids: router.serving.qdrant.ids (integers and UUIDs, stored as strings that order as Qdrant orders them).
- Vectors of a Cosine vector are normalised on upsert (float32, as Qdrant stores them), so what comes back and
  what is scored are what Qdrant would have; a zero vector is refused (prism cannot rank it by angle; Qdrant
  stores it).
- A batch naming an id twice keeps its last point (Qdrant applies a batch in order).
- Payload updates read the points and write them back whole (prism has no partial payload write): not atomic with
  writes to the same points made meanwhile. A missing point named by id is a 404 before anything is written.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from cluster.collection_spec import CollectionConfig
from cluster.errors import InvalidRequest, PointNotFound
from router.serving.qdrant.collections import UNNAMED, space_of, unnamed
from router.serving.qdrant.errors import BadFormat, Unsupported
from router.serving.qdrant.filters import translate
from router.serving.qdrant.ids import MAX_UINT, from_prism, to_prism
from router.serving.qdrant.models import (
    DeletePayload, PayloadExclude, PayloadInclude, PointRequest, PointsBatch, PointsList, ScrollRequest, Selector,
    SetPayload, UpdateVectors, CountRequest, parse,
)
from router.collection.cursor import encode_cursor
from router.schema.query import FLOAT32_MAX

SCROLL_PAGE = 1000  # prism's largest scroll page
_operations = itertools.count(1)  # Qdrant numbers update operations; this ingress replica numbers its own


def update_result(wait: bool) -> dict[str, Any]:
    return {"operation_id": next(_operations), "status": "completed" if wait else "acknowledged"}


# -- selectors -------------------------------------------------------------------------------------------------
def _keys(keys: list[str], field: str) -> set[str]:
    nested = [k for k in keys if any(ch in k for ch in '.[]"')]
    if nested:
        raise Unsupported(f"{field}: nested payload keys ({nested[0]!r}) are not supported by prism's Qdrant API "
                          "yet; select top-level keys")
    return set(keys)


def select_payload(payload: dict[str, Any] | None, selector: Any, field: str = "with_payload") -> dict | None:
    """The part of a payload Qdrant's `with_payload` asks for (None: no payload)."""
    if selector is None or selector is False:
        return None
    payload = payload or {}
    if selector is True:
        return payload
    if isinstance(selector, PayloadExclude):
        drop = _keys(selector.exclude, field)
        return {k: v for k, v in payload.items() if k not in drop}
    keep = _keys(selector.include if isinstance(selector, PayloadInclude) else selector, field)
    return {k: v for k, v in payload.items() if k in keep}


def check_selector(selector: Any, field: str = "with_payload") -> None:
    select_payload({}, selector, field)  # refused before any work, as Qdrant's server does


def vector_spaces(cfg: CollectionConfig, with_vector: Any) -> list[str]:
    """The prism spaces whose vectors an answer carries (names this collection lacks are skipped, as Qdrant's
    local mode skips them)."""
    if not with_vector:
        return []
    if with_vector is True:
        return list(cfg.spaces)
    return [UNNAMED if not n else n for n in with_vector if (UNNAMED if not n else n) in cfg.spaces]


def vector_out(cfg: CollectionConfig, vectors: dict[str, list[float]] | None, with_vector: Any) -> Any:
    if not with_vector:
        return None
    vectors = vectors or {}
    if unnamed(cfg) and UNNAMED in vectors:
        return vectors[UNNAMED]
    return {name: vectors[name] for name in vector_spaces(cfg, with_vector) if name in vectors}


def record(cfg: CollectionConfig, rid: str, payload: Any, vectors: Any, with_payload: Any, with_vector: Any,
           score: float | None = None) -> dict[str, Any]:
    out = {"id": from_prism(rid), "payload": select_payload(payload, with_payload),
           "vector": vector_out(cfg, vectors, with_vector), "shard_key": None, "order_value": None}
    if score is not None:
        out.update(version=0, score=score)
    return out


# -- vectors in ------------------------------------------------------------------------------------------------
def _dense(value: Any, field: str) -> list[float]:
    if not isinstance(value, list) or not value or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                        for x in value):
        if isinstance(value, dict) or isinstance(value, list) and value and isinstance(value[0], list):
            raise Unsupported(f"{field}: sparse and multi-vectors are not supported by prism's Qdrant API yet")
        raise BadFormat(f"{field}: expected a list of numbers")
    return value


def vectors_in(cfg: CollectionConfig, vector: Any, field: str) -> dict[str, list[float]]:
    """A point's Qdrant vector struct as prism vectors by space; Cosine ones normalised as Qdrant does."""
    given = {space_of(cfg, None, field)[0]: vector} if isinstance(vector, list) else \
        {space_of(cfg, n, f"{field}.{n}")[0]: v for n, v in vector.items()}
    out = {}
    for name, value in given.items():
        where = f"{field}.{name}" if not isinstance(vector, list) else field
        vec, space = _dense(value, where), cfg.spaces[name]
        # Checked here, before prism sees the batch: prism maps new payload fields before it embeds and checks
        # vectors, and a refused batch must leave no mapping behind either.
        if len(vec) != space.dim:
            raise InvalidRequest(f"{where}: Vector dimension error: expected dim: {space.dim}, got {len(vec)}")
        if not all(math.isfinite(x) and abs(x) <= FLOAT32_MAX for x in vec):
            raise InvalidRequest(f"{where}: vector components must be finite float32 numbers")
        if space.metric == "cosine":
            arr = np.asarray(vec, dtype=np.float32)
            norm = np.linalg.norm(arr)
            if not norm > 0:
                raise InvalidRequest(f"{where}: a zero vector has no direction; prism cannot rank it by cosine")
            vec = (arr / norm).tolist()
        out[name] = vec
    return out


# -- writes ----------------------------------------------------------------------------------------------------
async def upsert(service: Any, name: str, body: Any, wait: bool) -> dict[str, Any]:
    cfg = service.collection_config(name)
    batch = isinstance(body, dict) and "batch" in body
    req = parse(PointsBatch if batch else PointsList, body, "upsert points")
    for field in ("update_filter", "update_mode", "shard_key"):
        if getattr(req, field) is not None:
            raise Unsupported(f"{field} is not supported by prism's Qdrant API yet")
    if batch:
        b = req.batch
        n = len(b.ids)
        columns = {None: b.vectors} if isinstance(b.vectors, list) else b.vectors
        if any(len(vs) != n for vs in columns.values()) or b.payloads is not None and len(b.payloads) != n:
            raise BadFormat("batch: ids, vectors and payloads must have the same length")
        items = [(b.ids[i], columns[None][i] if None in columns else {k: vs[i] for k, vs in columns.items()},
                  b.payloads[i] if b.payloads else None) for i in range(n)]
    else:
        items = [(p.id, p.vector, p.payload) for p in req.points]
    points: dict[str, dict[str, Any]] = {}
    for i, (pid, vector, payload) in enumerate(items):
        key = to_prism(pid, f"points[{i}].id")
        points.pop(key, None)  # the last point with an id wins
        points[key] = {"id": key, "payload": payload or {}, "vectors": vectors_in(cfg, vector, f"points[{i}].vector")}
    if points:
        await service.upsert(name, {"points": list(points.values()), "wait": wait})
    return update_result(wait)


async def _existing(service: Any, name: str, ids: list[str]) -> None:
    """A 404 naming the first id no shard holds (before anything is written)."""
    for start in range(0, len(ids), SCROLL_PAGE):
        got = await service.retrieve(name, {"ids": ids[start:start + SCROLL_PAGE], "with_payload": False})
        if got.missing:
            raise PointNotFound(f"No point with id {from_prism(got.missing[0])} found")


async def _selected(service: Any, name: str, cfg: CollectionConfig, sel: Selector) -> list[str]:
    """The prism ids a points selector names: its ids (all must exist), or every point matching its filter."""
    if sel.shard_key is not None:
        raise Unsupported("shard_key is not supported by prism's Qdrant API yet")
    if (sel.points is None) == (sel.filter is None):
        raise BadFormat("give exactly one of points or filter")
    if sel.points is not None:
        ids = list(dict.fromkeys(to_prism(v, f"points[{i}]") for i, v in enumerate(sel.points)))
        await _existing(service, name, ids)
        return ids
    dsl, ids, cursor = translate(sel.filter, cfg.metadata), [], None
    while True:
        page = await service.scroll(name, {"filter": dsl, "limit": SCROLL_PAGE, "cursor": cursor,
                                           "with_payload": False})
        ids += [p.id for p in page.points]
        cursor = page.next_cursor
        if cursor is None:
            return ids


async def _rewrite(service: Any, name: str, ids: list[str], change: Any, wait: bool) -> None:
    """Each point's payload replaced by `change(payload)`, its vectors kept: read, then written back whole."""
    step = min(service.config.limits.max_upsert_points, SCROLL_PAGE)
    for start in range(0, len(ids), step):
        got = await service.retrieve(name, {"ids": ids[start:start + step], "with_payload": True,
                                            "with_vectors": True})
        points = [{"id": r.id, "payload": change(r.payload or {}), "vectors": r.vectors or {}} for r in got.points]
        if points:
            await service.upsert(name, {"points": points, "wait": wait})


async def set_payload(service: Any, name: str, body: Any, wait: bool, overwrite: bool) -> dict[str, Any]:
    req = parse(SetPayload, body, "overwrite payload" if overwrite else "set payload")
    if req.key is not None:
        raise Unsupported("key (setting a nested payload path) is not supported by prism's Qdrant API yet")
    cfg = service.collection_config(name)
    ids = await _selected(service, name, cfg, req)
    new = dict(req.payload)
    await _rewrite(service, name, ids, (lambda _old: dict(new)) if overwrite else (lambda old: {**old, **new}), wait)
    return update_result(wait)


async def delete_payload(service: Any, name: str, body: Any, wait: bool) -> dict[str, Any]:
    req = parse(DeletePayload, body, "delete payload")
    drop = _keys(req.keys, "keys")
    ids = await _selected(service, name, service.collection_config(name), req)
    await _rewrite(service, name, ids, lambda old: {k: v for k, v in old.items() if k not in drop}, wait)
    return update_result(wait)


async def clear_payload(service: Any, name: str, body: Any, wait: bool) -> dict[str, Any]:
    req = parse(Selector, body, "clear payload")
    ids = await _selected(service, name, service.collection_config(name), req)
    await _rewrite(service, name, ids, lambda _old: {}, wait)
    return update_result(wait)


async def update_vectors(service: Any, name: str, body: Any, wait: bool) -> dict[str, Any]:
    req = parse(UpdateVectors, body, "update vectors")
    if req.update_filter is not None or req.shard_key is not None:
        raise Unsupported("update_filter and shard_key are not supported by prism's Qdrant API yet")
    cfg = service.collection_config(name)
    points = {to_prism(p.id, f"points[{i}].id"): vectors_in(cfg, p.vector, f"points[{i}].vector")
              for i, p in enumerate(req.points)}
    await _existing(service, name, list(points))
    await service.update_vectors(name, {"points": [{"id": i, "vectors": v} for i, v in points.items()],
                                        "wait": wait})
    return update_result(wait)


async def delete(service: Any, name: str, body: Any, wait: bool) -> dict[str, Any]:
    sel = parse(Selector, body, "delete points")
    if sel.shard_key is not None:
        raise Unsupported("shard_key is not supported by prism's Qdrant API yet")
    if (sel.points is None) == (sel.filter is None):
        raise BadFormat("give exactly one of points or filter")
    if sel.points is not None:
        ids = list(dict.fromkeys(to_prism(v, f"points[{i}]") for i, v in enumerate(sel.points)))
        if ids:
            await service.delete_points(name, {"ids": ids, "wait": wait})
    else:
        dsl = translate(sel.filter, service.collection_config(name).metadata)
        await service.delete_points(name, {"filter": dsl if dsl is not None else {"bool": {}}})
    return update_result(wait)


# -- reads -----------------------------------------------------------------------------------------------------
async def retrieve(service: Any, name: str, body: Any) -> list[dict[str, Any]]:
    req = parse(PointRequest, body, "retrieve points")
    if req.shard_key is not None:
        raise Unsupported("shard_key is not supported by prism's Qdrant API yet")
    with_payload = True if req.with_payload is None else req.with_payload
    check_selector(with_payload)
    ids = [to_prism(v, f"ids[{i}]") for i, v in enumerate(req.ids)]
    if not ids:
        return []
    cfg = service.collection_config(name)
    got = await service.retrieve(name, {"ids": ids, "with_payload": True,
                                        "with_vectors": vector_spaces(cfg, req.with_vector) or False})
    found = {r.id: r for r in got.points}
    return [record(cfg, i, found[i].payload, found[i].vectors, with_payload, req.with_vector)
            for i in ids if i in found]  # in the order asked, as often as asked (Qdrant's local mode does so)


def path_id(point_id: str) -> int | str:
    """The Qdrant id a URL path segment spells: ASCII digits are an integer (str.isdigit also takes "²" and "١",
    which int() refuses or reads as 1); anything else is a UUID or refused by to_prism."""
    if point_id.isascii() and point_id.isdigit():
        if len(point_id) > len(str(MAX_UINT)):  # int() of 4300+ digits raises; no such id exists anyway
            raise InvalidRequest(f"point id {point_id[:30]}... is not an unsigned 64-bit integer")
        return int(point_id)
    return point_id


async def point(service: Any, name: str, point_id: str) -> dict[str, Any]:
    pid = path_id(point_id)
    got = await retrieve(service, name, {"ids": [pid], "with_payload": True, "with_vector": True})
    if not got:
        raise PointNotFound(f"No point with id {pid} found")
    return got[0]


async def scroll(service: Any, name: str, body: Any) -> dict[str, Any]:
    """A page in Qdrant's id order from `offset` (inclusive) and the id the next page starts at."""
    req = parse(ScrollRequest, body or {}, "scroll points")
    if req.order_by is not None or req.shard_key is not None:
        raise Unsupported("order_by and shard_key are not supported by prism's Qdrant API yet")
    with_payload = True if req.with_payload is None else req.with_payload
    check_selector(with_payload)
    cfg = service.collection_config(name)
    limit, dsl = req.limit or 10, translate(req.filter, cfg.metadata)
    start = to_prism(req.offset, "offset") if req.offset is not None else None
    # A scan after a proper prefix of `start` reaches it; the few ids between them are dropped below.
    cursor = encode_cursor(start[:-1]) if start else None
    rows: list[Any] = []
    while len(rows) <= limit:
        page = await service.scroll(name, {"filter": dsl, "cursor": cursor, "with_payload": True,
                                           "limit": min(SCROLL_PAGE, limit + 1 - len(rows) + (16 if start else 0)),
                                           "with_vectors": vector_spaces(cfg, req.with_vector) or False})
        rows += [p for p in page.points if start is None or p.id >= start]
        cursor = page.next_cursor
        if cursor is None:
            break
    return {"points": [record(cfg, r.id, r.payload, r.vectors, with_payload, req.with_vector) for r in rows[:limit]],
            "next_page_offset": from_prism(rows[limit].id) if len(rows) > limit else None}


async def count(service: Any, name: str, body: Any) -> dict[str, int]:
    req = parse(CountRequest, body or {}, "count points")
    if req.shard_key is not None:
        raise Unsupported("shard_key is not supported by prism's Qdrant API yet")
    dsl = translate(req.filter, service.collection_config(name).metadata)
    return {"count": (await service.count(name, {"filter": dsl})).count}
