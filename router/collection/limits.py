"""Strict limits (Qdrant's "strict mode"): request bounds from config, checked before any work. Pure.

Each violation is an InvalidRequest (422) naming the field and the limit, so a client knows what to change.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cluster.collection_spec import CollectionConfig
from cluster.config import StrictLimits
from cluster.errors import InvalidRequest
from router.filters.dsl import INT64_MAX, INT64_MIN
from router.schema.query import BatchQueryRequest, QueryRequest
from router.filters.plan import SEARCH_PARAM_BOUNDS

# A value no index accepts at all is reported by the index-bounds check (naming Milvus's range), not as a policy
# limit; strict limits bound the values that would otherwise run.
_HARD_MAX = {name: max(b[name][1] for b in SEARCH_PARAM_BOUNDS.values() if name in b) for name in ("ef", "nprobe")}

_BOOL_KEYS = ("must", "filter", "should", "must_not")


def filter_shape(dsl: Any) -> tuple[int, int]:
    """(how deep `bool` clauses nest, how many clauses there are) in an Elasticsearch DSL filter, without
    parsing it: a bound checked before the parser sees it."""
    depth, clauses = 0, 0
    stack: list[tuple[Any, int]] = [(dsl, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, list):
            stack.extend((x, d) for x in node)
            continue
        if not isinstance(node, dict):
            continue
        clauses += 1
        body = node.get("bool")
        if isinstance(body, dict):
            depth = max(depth, d + 1)
            for key in _BOOL_KEYS:
                if key in body:
                    stack.append((body[key], d + 1))
    return depth, clauses


def _over(field: str, value: int, limit: int, what: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {value} {what} exceeds this cluster's limit of {limit} (limits.{_KEY[what]})",
                          field=field)


_KEY = {"results": "max_limit", "prefetches": "max_prefetch", "candidates": "max_prefetch_limit", "ef": "max_ef",
        "nprobe": "max_nprobe", "queries": "max_batch_queries", "levels of bool nesting": "max_filter_depth",
        "filter clauses": "max_filter_clauses", "points": "max_upsert_points", "ids": "max_upsert_points",
        "shards": "max_shards", "replicas": "max_replicas", "characters": "max_document_chars",
        "characters of source text": "max_request_document_chars"}


def unusable_number(value: Any) -> Any:
    """The first number in `value` that no store can compare with (NaN, an infinity: a gRPC Struct can carry
    them; an integer beyond 64 bits), else None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v) or isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
            return v
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def check_filter(dsl: Any, limits: StrictLimits, field: str) -> None:
    if dsl is None:
        return
    bad = unusable_number(dsl)
    if bad is not None:
        raise InvalidRequest(f"{field}: {bad!r} is not a finite number a filter can compare with", field=field)
    depth, clauses = filter_shape(dsl)
    if depth > limits.max_filter_depth:
        raise _over(field, depth, limits.max_filter_depth, "levels of bool nesting")
    if clauses > limits.max_filter_clauses:
        raise _over(field, clauses, limits.max_filter_clauses, "filter clauses")


def check_query(req: QueryRequest, limits: StrictLimits, at: str = "") -> None:
    if req.limit + req.offset > limits.max_limit:
        raise _over(f"{at}limit", req.limit + req.offset, limits.max_limit, "results")
    if len(req.prefetch) > limits.max_prefetch:
        raise _over(f"{at}prefetch", len(req.prefetch), limits.max_prefetch, "prefetches")
    check_filter(req.filter, limits, f"{at}filter")
    if req.fusion.window is not None and req.fusion.window > limits.max_prefetch_limit:
        raise _over(f"{at}fusion.window", req.fusion.window, limits.max_prefetch_limit, "candidates")
    for i, p in enumerate(req.prefetch):
        where = f"{at}prefetch[{i}]"
        if p.limit is not None and p.limit > limits.max_prefetch_limit:
            raise _over(f"{where}.limit", p.limit, limits.max_prefetch_limit, "candidates")
        for name, bound in (("ef", limits.max_ef), ("nprobe", limits.max_nprobe)):
            value = (p.params or {}).get(name)
            if value is not None and bound < value <= _HARD_MAX[name]:
                raise _over(f"{where}.params.{name}", int(value), bound, name)
        check_filter(p.filter, limits, f"{where}.filter")


def check_batch(req: BatchQueryRequest, limits: StrictLimits) -> None:
    if len(req.queries) > limits.max_batch_queries:
        raise _over("queries", len(req.queries), limits.max_batch_queries, "queries")
    for i, q in enumerate(req.queries):
        check_query(q, limits, f"queries[{i}].")


def check_write(count: int, limits: StrictLimits, field: str = "points") -> None:
    if count > limits.max_upsert_points:
        raise _over(field, count, limits.max_upsert_points, "ids" if field == "ids" else "points")


def check_layout(cfg: CollectionConfig, limits: StrictLimits) -> None:
    if cfg.shards > limits.max_shards:
        raise _over("shards", cfg.shards, limits.max_shards, "shards")
    if cfg.replicas > limits.max_replicas:
        raise _over("replicas", cfg.replicas, limits.max_replicas, "replicas")


def check_documents(points: Sequence[Any], cfg: CollectionConfig, limits: StrictLimits, sources: bool = False) -> None:
    """The source texts a write brings to text encoders (each is chunked and every chunk embedded): per document
    and per request. `points`: Point (their payloads) or, with `sources`, VectorUpdate (their `sources`)."""
    fields = {s.source for s in cfg.spaces.values() if s.encoder and s.source and s.modality == "text"}
    if not fields:
        return
    total = 0
    for i, p in enumerate(points):
        given = (p.sources if sources else p.payload) or {}
        skip = set() if sources else set(p.vectors or {})  # a space whose vector is given embeds nothing
        for field in fields:
            value = given.get(field)
            if not isinstance(value, str) or all(s.source != field or name in skip
                                                 for name, s in cfg.spaces.items()):
                continue
            where = f"points[{i}].{'sources' if sources else 'payload'}.{field}"
            if len(value) > limits.max_document_chars:
                raise _over(where, len(value), limits.max_document_chars, "characters")
            total += len(value)
    if total > limits.max_request_document_chars:
        raise _over("points", total, limits.max_request_document_chars, "characters of source text")


def check_encoders(cfg: CollectionConfig, encoders: dict[str, dict]) -> None:
    """Encoder names, dimensions (as the loaded model reports them) and modalities must fit each space.

    An encoder that is unavailable (weights missing) does not block creation: its spaces answer 503 naming
    the model until it is installed, and the collection's other spaces work."""
    from router.encoding.embed import ENCODER_DIMS

    for space_name, space in cfg.spaces.items():
        if space.encoder is None:
            if space.modality == "image":
                raise InvalidRequest(f"spaces.{space_name}: an image space needs an encoder (clip)",
                                     field=f"spaces.{space_name}.encoder")
            continue
        if space.encoder not in ENCODER_DIMS:
            raise InvalidRequest(f"spaces.{space_name}.encoder: unknown encoder {space.encoder!r}; "
                                 f"known: {sorted(ENCODER_DIMS)}", field=f"spaces.{space_name}.encoder")
        live = encoders.get(space.encoder, {})
        dim = live.get("dim") if live.get("available") else ENCODER_DIMS[space.encoder]
        if dim != space.dim:
            raise InvalidRequest(f"spaces.{space_name}.dim: encoder {space.encoder!r} gives {dim} dimensions, "
                                 f"not {space.dim}", field=f"spaces.{space_name}.dim")
        modalities = live.get("modalities") or (["text", "image"] if space.encoder == "clip" else ["text"])
        if space.modality not in modalities:
            raise InvalidRequest(f"spaces.{space_name}.modality: encoder {space.encoder!r} cannot embed "
                                 f"{space.modality}", field=f"spaces.{space_name}.modality")
