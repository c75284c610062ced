"""Qdrant's REST request shapes (qdrant-client 1.20.0's `http.models`), as far as prism's Qdrant API reads them.

Unknown fields are refused, as Qdrant's own models forbid them. Filters and the `query` of a query request are
kept as JSON here and checked where they are translated (filters.py, query.py), so that errors name the clause.
Fields Qdrant has that prism cannot honour are accepted here and refused with a 400 where they are read, naming
them (errors.Unsupported), unless they only tune storage (on_disk, wal_config, optimizers_config, ...): those are
documented as accepted without effect.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt, StrictStr, ValidationError

from router.schema.query import MAX_LIMIT
from router.serving.qdrant.errors import BadFormat, OutOfRange

PointId = Union[StrictInt, StrictStr]
# A vector component: a JSON number. Strict, as Qdrant's server is: lax pydantic reads "0.5" as 0.5 and true as 1.0.
Number = Annotated[float, Strict()]
Json = dict[str, Any]
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short",
                           "too_long"})
M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PayloadInclude(_Model):
    include: list[str]


class PayloadExclude(_Model):
    exclude: list[str]


WithPayload = Union[bool, list[str], PayloadInclude, PayloadExclude]
WithVector = Union[bool, list[str]]


# -- collections -----------------------------------------------------------------------------------------------
class HnswConfigDiff(_Model):
    m: int | None = Field(default=None, ge=0, le=2048)  # 0: no graph, every search a full scan (prism: FLAT)
    ef_construct: int | None = Field(default=None, ge=4, le=65_536)
    full_scan_threshold: int | None = Field(default=None, ge=0)
    max_indexing_threads: int | None = Field(default=None, ge=0)
    on_disk: bool | None = None
    payload_m: int | None = Field(default=None, ge=0)
    inline_storage: bool | None = None
    memory: Any = None


class VectorParams(_Model):
    size: int = Field(ge=1, le=65_536)
    distance: Literal["Cosine", "Euclid", "Dot", "Manhattan"]
    hnsw_config: HnswConfigDiff | None = None
    quantization_config: Any = None
    on_disk: bool | None = None
    memory: Any = None
    datatype: Literal["float32", "float16", "uint8"] | None = None
    multivector_config: Any = None


class CreateCollection(_Model):
    vectors: VectorParams | dict[str, VectorParams] | None = None
    shard_number: int | None = Field(default=None, ge=1)
    sharding_method: Literal["auto", "custom"] | None = None
    replication_factor: int | None = Field(default=None, ge=1)
    write_consistency_factor: int | None = Field(default=None, ge=1)
    on_disk_payload: bool | None = None
    payload: Any = None
    id_tracker: Any = None
    hnsw_config: HnswConfigDiff | None = None
    wal_config: Json | None = None
    optimizers_config: Json | None = None
    init_from: Any = None
    quantization_config: Any = None
    sparse_vectors: Json | None = None
    strict_mode_config: Any = None
    metadata: Json | None = None


class CreateFieldIndex(_Model):
    field_name: str = Field(min_length=1)
    field_schema: str | Json | None = None


# -- points ----------------------------------------------------------------------------------------------------
class PointStruct(_Model):
    id: PointId
    vector: list[Number] | Json  # the unnamed vector, or named ones: {name: [floats]}
    payload: Json | None = None


class Batch(_Model):
    ids: list[PointId]
    vectors: list[list[Number]] | dict[str, list[list[Number]]]
    payloads: list[Json | None] | None = None


class _Write(_Model):
    shard_key: Any = None
    update_filter: Json | None = None
    update_mode: Any = None


class PointsList(_Write):
    points: list[PointStruct]


class PointsBatch(_Write):
    batch: Batch


class PointVectors(_Model):
    id: PointId
    vector: list[Number] | Json


class UpdateVectors(_Write):
    points: list[PointVectors] = Field(min_length=1)


class PointRequest(_Model):
    ids: list[PointId]
    with_payload: WithPayload | None = None
    with_vector: WithVector | None = None
    shard_key: Any = None


class Selector(_Model):
    """A points selector (delete, clear payload): ids or a filter."""

    points: list[PointId] | None = None
    filter: Json | None = None
    shard_key: Any = None


class SetPayload(Selector):
    payload: Json
    key: str | None = None


class DeletePayload(Selector):
    keys: list[str]


class ScrollRequest(_Model):
    offset: PointId | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)  # Qdrant has no bound; prism's queries have this one
    filter: Json | None = None
    with_payload: WithPayload | None = None
    with_vector: WithVector | None = None
    order_by: Any = None
    shard_key: Any = None


class CountRequest(_Model):
    filter: Json | None = None
    exact: bool | None = None
    shard_key: Any = None


# -- queries ---------------------------------------------------------------------------------------------------
class SearchParams(_Model):
    hnsw_ef: int | None = Field(default=None, ge=1)
    exact: bool | None = None
    quantization: Any = None
    indexed_only: bool | None = None
    acorn: Any = None


class Prefetch(_Model):
    prefetch: Union["Prefetch", list["Prefetch"], None] = None
    query: Any = None
    using: str | None = None
    filter: Json | None = None
    params: SearchParams | None = None
    score_threshold: float | None = None
    limit: int | None = Field(default=None, ge=1)
    lookup_from: Any = None


class QueryRequest(Prefetch):
    offset: int | None = Field(default=None, ge=0)
    with_payload: WithPayload | None = None
    with_vector: WithVector | None = None
    shard_key: Any = None


class QueryRequestBatch(_Model):
    searches: list[QueryRequest]


def parse(model: type[M], data: Any, what: str) -> M:
    """`data` as `model`; a 400 for a wrong shape, a 422 for a value out of range (as Qdrant's server answers)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in errors[:5])
        if all(e["type"] in _RANGE_ERRORS for e in errors):
            raise OutOfRange(f"{what}: {text}") from None
        raise BadFormat(f"{what}: {text}") from None
