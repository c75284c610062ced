"""Point requests and answers of the HTTP API v1: upsert, vector updates, delete, retrieve, scroll, count."""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from cluster.names import id_problem
from router.filters.dsl import INT64_MAX, INT64_MIN
from router.schema.common import PayloadExclude, Strict, returns
from shards.api import MAX_ID_LENGTH

MAX_BATCH_POINTS = 2_000


def _ids_rule(value: Any) -> Any:
    """cluster.names' id rule, for pydantic validators (a ValueError names the id)."""
    if isinstance(value, str):
        problem = id_problem(value)
        if problem:
            raise ValueError(problem)
    return value


# Elasticsearch refuses documents whose objects nest deeper than its mapping depth limit (20 by default), so a
# payload is held to it before anything is written to Milvus or Elasticsearch.
MAX_PAYLOAD_DEPTH = 20


def object_depth(value: Any) -> tuple[int, str]:
    """(how deep objects nest in `value`, the path to the deepest), counting only objects as Elasticsearch does.
    A number that is not finite (possible over gRPC, whose Struct numbers are doubles) or an integer beyond 64 bits
    (Elasticsearch maps it as a long, or cannot parse it nested) is a ValueError."""
    best, path = 0, ""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        v, d, p = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{v!r} at {p!r} is not a finite number")
        if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
            raise ValueError(f"the integer at {p!r} ({len(str(abs(v)))} digits) is beyond 64-bit: payload integers "
                             "are -2**63 .. 2**63-1, as Elasticsearch's long")
        if isinstance(v, dict):
            d += 1
            if d > best:
                best, path = d, p
            stack.extend((x, d, f"{p}.{k}" if p else str(k)) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, d, p) for x in v)
    return best, path


class Point(Strict):
    """A point: an id, a payload, and optionally vectors per named space (else embedded from `source`)."""

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    payload: dict[str, Any] = Field(default_factory=dict)
    vectors: dict[str, list[float]] | None = None

    @field_validator("payload")
    @classmethod
    def _payload_depth(cls, value: dict[str, Any]) -> dict[str, Any]:
        depth, path = object_depth(value)
        if depth > MAX_PAYLOAD_DEPTH:
            raise ValueError(f"objects nest {depth} deep (at {path!r}); at most {MAX_PAYLOAD_DEPTH} are allowed, "
                             "as Elasticsearch indexes no deeper")
        return value

    @field_validator("id", mode="before")
    @classmethod
    def _id_str(cls, value: Any) -> Any:
        # Integer ids are accepted and stored as their decimal string, as ids are Milvus VARCHAR keys.
        if isinstance(value, bool):
            raise ValueError("id must be a string or an integer")
        return _ids_rule(str(value) if isinstance(value, int) else value)


class UpsertRequest(Strict):
    points: list[Point] = Field(min_length=1, max_length=MAX_BATCH_POINTS)
    # true (default): answer once every acknowledging replica serves the points to searches and filters;
    # false: answer at acknowledgement; visible within the staleness bound (5 s on a Milvus server, 1 s refresh in
    # Elasticsearch; at once on milvus-lite), and at once to `consistency: "strong"` queries.
    wait: bool = True

    @model_validator(mode="after")
    def _unique_ids(self) -> "UpsertRequest":
        seen: set[str] = set()
        for i, p in enumerate(self.points):
            if p.id in seen:
                raise ValueError(f"points[{i}].id {p.id!r} appears twice in one request")
            seen.add(p.id)
        return self


class PointError(BaseModel):
    id: str
    reason: str


class UpsertResponse(BaseModel):
    upserted: int
    failed: list[PointError] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    visible: bool = True  # false: sent with wait=false; searches see it within the staleness bound


class VectorUpdate(Strict):
    """New vectors for some spaces of an existing point, given directly or as new source values to embed."""

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    vectors: dict[str, list[float]] | None = None
    sources: dict[str, Any] | None = None

    @field_validator("id")
    @classmethod
    def _id_rule(cls, value: str) -> str:
        return _ids_rule(value)

    @model_validator(mode="after")
    def _something(self) -> "VectorUpdate":
        if not self.vectors and not self.sources:
            raise ValueError(f"point {self.id!r}: give vectors or sources to update")
        return self


class UpdateVectorsRequest(Strict):
    points: list[VectorUpdate] = Field(min_length=1, max_length=MAX_BATCH_POINTS)
    wait: bool = True


class DeleteRequest(Strict):
    ids: list[str] | None = Field(default=None, max_length=MAX_BATCH_POINTS)
    filter: dict[str, Any] | None = None
    wait: bool = True  # as for upserts; a delete by filter always waits (it pages through Elasticsearch)

    @field_validator("ids")
    @classmethod
    def _id_rule(cls, value: list[str] | None) -> list[str] | None:
        return [_ids_rule(i) for i in value] if value else value

    @model_validator(mode="after")
    def _one(self) -> "DeleteRequest":
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give exactly one of ids or filter")
        return self


class RetrieveRequest(Strict):
    """Points by id (`POST .../points/get`), as Qdrant's retrieve and Milvus's get."""

    ids: list[str] = Field(min_length=1, max_length=MAX_BATCH_POINTS)
    with_payload: bool | list[str] | PayloadExclude = True
    with_vectors: bool | list[str] = False

    @field_validator("ids", mode="before")
    @classmethod
    def _ids_str(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_ids_rule(str(v) if isinstance(v, int) and not isinstance(v, bool) else v) for v in value]
        return value

    def returns(self) -> tuple[bool, list[str] | bool]:
        return returns(self.with_payload, self.with_vectors)


class Record(BaseModel):
    """A stored point: its payload (as `with_payload` selects) and the vectors `with_vectors` names."""

    id: str
    payload: dict[str, Any] | None = None
    vectors: dict[str, list[float]] | None = None


class RetrieveResponse(BaseModel):
    points: list[Record]  # in the order asked; ids that no shard holds are in `missing`
    missing: list[str] = Field(default_factory=list)


MAX_SCROLL_LIMIT = 1_000


class ScrollRequest(Strict):
    """`POST .../points/scroll`: every point (matching `filter`) in id order, a page at a time. Pass the answer's
    `next_cursor` back as `cursor`; no point comes twice in one scroll, and every point that exists throughout
    it comes once, whatever is written meanwhile."""

    filter: dict[str, Any] | None = None
    limit: int = Field(default=100, ge=1, le=MAX_SCROLL_LIMIT)
    cursor: str | None = Field(default=None, max_length=2 * MAX_ID_LENGTH)
    with_payload: bool | list[str] | PayloadExclude = True
    with_vectors: bool | list[str] = False

    def returns(self) -> tuple[bool, list[str] | bool]:
        return returns(self.with_payload, self.with_vectors)


class ScrollResponse(BaseModel):
    points: list[Record]
    next_cursor: str | None = None  # null: the scroll is complete
    # e.g. a page cut short by limits.max_scroll_examined (its cursor goes on from where the work stopped)
    notes: list[str] = Field(default_factory=list)



class CountRequest(Strict):
    """`POST .../points/count`: how many points (match `filter`)."""

    filter: dict[str, Any] | None = None


class CountResponse(BaseModel):
    count: int


class DeleteResponse(BaseModel):
    deleted: int
    visible: bool = True
