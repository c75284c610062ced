"""Collections through the Qdrant API: create (vectors, hnsw_config, shard_number, replication_factor,
write_consistency_factor), collection info, list, exists, delete, payload indexes; and the vector-space lookups points and
queries share. Everything goes through PrismService.

A Qdrant collection is a prism collection: each named vector a space (size -> dim; Cosine / Dot / Euclid ->
cosine / ip / l2; hnsw m, ef_construct -> HNSW M, efConstruction; m = 0, which turns Qdrant's graph off, -> FLAT,
an exact scan), shard_number -> shards, replication_factor -> replicas, write_consistency_factor -> write_quorum.
The unnamed vector is the space `default` (a named vector may not take that name); a collection whose only space
is `default` shows its vector unnamed. A collection made through prism's own API shows its vector spaces.
"""
from __future__ import annotations

from typing import Any

from cluster.collection_spec import CollectionConfig, SpaceConfig
from cluster.errors import InvalidRequest
from router.serving.qdrant.errors import Unsupported
from router.serving.qdrant.models import CreateCollection, CreateFieldIndex, HnswConfigDiff, VectorParams, parse

UNNAMED = "default"
DISTANCE = {"Cosine": "cosine", "Dot": "ip", "Euclid": "l2"}
METRIC = {v: k for k, v in DISTANCE.items()}
HNSW_M, HNSW_EF_CONSTRUCT, FULL_SCAN_THRESHOLD = 16, 100, 10_000  # Qdrant's defaults
# Qdrant payload index types -> prism mapping types (router.filters.mapping); uuid values are strings matched exactly.
SCHEMA = {"keyword": "keyword", "integer": "integer", "float": "float", "bool": "boolean", "datetime": "date",
          "text": "text", "uuid": "keyword"}
SCHEMA_OUT = {"keyword": "keyword", "integer": "integer", "float": "float", "boolean": "bool", "date": "datetime",
              "text": "text"}


def unnamed(cfg: CollectionConfig) -> bool:
    return list(cfg.spaces) == [UNNAMED]


def space_of(cfg: CollectionConfig, using: str | None, field: str = "using") -> tuple[str, SpaceConfig]:
    """The prism space a Qdrant vector name stands for (None or "": the unnamed vector)."""
    name = UNNAMED if not using else using
    space = cfg.spaces.get(name)
    if space is None:
        known = ", ".join(repr("" if unnamed(cfg) else s) for s in cfg.spaces)
        raise InvalidRequest(f"{field}: Not existing vector name error: {using or ''!r} (this collection has {known})")
    return name, space


def _index(hnsw: HnswConfigDiff) -> dict[str, Any]:
    m = HNSW_M if hnsw.m is None else hnsw.m
    if m == 0:
        return {"type": "FLAT"}
    return {"type": "HNSW", "params": {"M": m, "efConstruction": hnsw.ef_construct or HNSW_EF_CONSTRUCT}}


def collection_spec(req: CreateCollection) -> dict[str, Any]:
    """prism's collection spec (PUT /v1/collections/{name}) for a Qdrant create request."""
    for field in ("sparse_vectors", "quantization_config", "init_from", "strict_mode_config", "metadata"):
        if getattr(req, field):
            raise Unsupported(f"{field} is not supported by prism's Qdrant API yet")
    if req.sharding_method == "custom":
        raise Unsupported("sharding_method custom is not supported by prism's Qdrant API yet (prism places points "
                          "by its own ring)")
    if not req.vectors:
        raise Unsupported("prism needs at least one dense vector in a collection: give `vectors`")
    named = not isinstance(req.vectors, VectorParams)
    vectors = req.vectors if named else {UNNAMED: req.vectors}
    spaces = {}
    for name, vp in vectors.items():
        where = f"vectors.{name}" if named else "vectors"
        if named and name == UNNAMED:
            raise Unsupported(f"{where}: the vector name {UNNAMED!r} is reserved for the unnamed vector")
        if vp.distance not in DISTANCE:
            raise Unsupported(f"{where}: distance {vp.distance} is not supported by prism (Cosine, Dot, Euclid are)")
        for field in ("quantization_config", "multivector_config"):
            if getattr(vp, field):
                raise Unsupported(f"{where}.{field} is not supported by prism's Qdrant API yet")
        if vp.datatype not in (None, "float32"):
            raise Unsupported(f"{where}.datatype {vp.datatype} is not supported: prism stores float32")
        hnsw = (req.hnsw_config or HnswConfigDiff()).model_copy(
            update=(vp.hnsw_config.model_dump(exclude_none=True) if vp.hnsw_config else {}))
        spaces[name] = {"dim": vp.size, "metric": DISTANCE[vp.distance], "index": _index(hnsw)}
    spec: dict[str, Any] = {"spaces": spaces, "shards": req.shard_number or 1,
                            "replicas": req.replication_factor or 1}
    if req.write_consistency_factor is not None:
        spec["write_quorum"] = req.write_consistency_factor
    return spec


async def create(service: Any, name: str, body: Any) -> bool:
    await service.create_collection(name, collection_spec(parse(CreateCollection, body, "create collection")))
    return True


def _hnsw(space: SpaceConfig) -> dict[str, Any]:
    if space.index.type == "FLAT":
        return {"m": 0, "ef_construct": HNSW_EF_CONSTRUCT, "full_scan_threshold": FULL_SCAN_THRESHOLD}
    params = space.index.params
    return {"m": int(params.get("M", HNSW_M)), "ef_construct": int(params.get("efConstruction", 200)),
            "full_scan_threshold": FULL_SCAN_THRESHOLD}


def vectors_config(cfg: CollectionConfig) -> dict[str, Any]:
    def one(space: SpaceConfig) -> dict[str, Any]:
        return {"size": space.dim, "distance": METRIC[space.metric], "hnsw_config": _hnsw(space),
                "datatype": "float32"}

    if unnamed(cfg):
        return one(cfg.spaces[UNNAMED])
    return {name: one(space) for name, space in cfg.spaces.items()}


def _quorum(cfg: CollectionConfig) -> int:
    q = cfg.write_quorum
    return q if isinstance(q, int) else cfg.replicas if q == "all" else cfg.replicas // 2 + 1


async def collection_info(service: Any, name: str) -> dict[str, Any]:
    """Qdrant's CollectionInfo: status from replica health (green: all live; yellow: some replica is not; red:
    some shard has none live), exact points_count, the config, and the payload schema (prism's mapping)."""
    info = await service.info(name)
    count = (await service.count(name, {})).count
    cfg = service.collection_config(name)
    shards: dict[int, list[str]] = {}
    for sh in info.shards:
        shards.setdefault(sh.shard, []).append(sh.state)
    status = ("red" if any("live" not in states for states in shards.values())
              else "green" if all(s == "live" for states in shards.values() for s in states) else "yellow")
    first = next(iter(cfg.spaces.values()))
    return {
        "status": status, "optimizer_status": "ok", "points_count": count,
        "indexed_vectors_count": sum(info.counts.values()), "segments_count": len(info.shards),
        "config": {
            "params": {"vectors": vectors_config(cfg), "shard_number": cfg.shards,
                       "replication_factor": cfg.replicas, "write_consistency_factor": _quorum(cfg),
                       "on_disk_payload": False},
            "hnsw_config": _hnsw(first),
            "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                                 "default_segment_number": 0, "indexing_threshold": 0, "flush_interval_sec": 5},
            "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
        },
        "payload_schema": {f: {"data_type": SCHEMA_OUT[t], "points": 0} for f, t in sorted(cfg.metadata.items())},
    }


def visible(names: list[str], principal: Any) -> list[dict[str, str]]:
    """Qdrant's collection list: those a scoped key may see."""
    scope = getattr(principal, "collections", None)
    return [{"name": n} for n in names if scope is None or n in scope]


async def create_index(service: Any, name: str, body: Any) -> None:
    """A payload index is a mapped field in prism: declared ahead of the points, with its type."""
    req = parse(CreateFieldIndex, body, "create field index")
    schema = req.field_schema if not isinstance(req.field_schema, dict) else req.field_schema.get("type")
    if schema not in SCHEMA:
        raise Unsupported(f"field_schema {schema!r} is not supported by prism's Qdrant API (supported: "
                          f"{', '.join(SCHEMA)})")
    if any(ch in req.field_name for ch in '.[]"'):
        raise Unsupported(f"field_name {req.field_name!r}: nested payload keys are not supported yet")
    got = (await service.map_fields(name, {req.field_name: SCHEMA[schema]}))[req.field_name]
    if got != SCHEMA[schema]:
        raise InvalidRequest(f"field_name {req.field_name!r} is mapped as {SCHEMA_OUT[got]} already (prism types a "
                        "payload field when it first sees it, and keeps that type)")
