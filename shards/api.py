"""The shard contract: what a shard replica answers, as typed records. Pure: no Ray, no Milvus.

`ShardApi` is the asynchronous seam the router talks to; the in-process client (`shards.local`) and the Ray
client (`shards.actor`) implement it over the same plain `shards.shard.Shard`, so both answer identically.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from cluster.names import MAX_ID_LENGTH  # noqa: F401 - the id rule lives with the name rule

# A whole-shard copy's page (`ShardApi.export_page`): Milvus's largest query window. Measured on milvus-lite (a
# digest's scan), 20,000 rows took 8.1 s in pages of 1,000 and 3.2 s in pages of 16,384.
EXPORT_PAGE = 16_384


class ScoredId(NamedTuple):
    """One search hit: higher score is always better (L2 distances are negated). `payload` is the stored payload
    when the search asked for it (`SearchSpec.with_payload`), else None."""

    id: str
    score: float
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class SearchSpec:
    """One single-vector search in one space: `expr` is a Milvus boolean expression built by `shards.expr`."""

    space: str
    vector: list[float]
    limit: int
    expr: str | None = None
    params: dict[str, Any] | None = None
    # bounded (the default: never waits for writes; sees every write acknowledged with wait=true), strong (waits
    # until every write acknowledged before it is visible), eventual (no guarantee)
    consistency: str = "bounded"
    # Return each hit's payload with the search itself (saves the router a second round trip to the owning
    # shards when the page is small; see router.filters.plan.inline_payload).
    with_payload: bool = False


@dataclass
class PointRow:
    """A point as shards store it: payload, its normalised filterable projection (`meta`), vectors per space."""

    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, Sequence[float]] = field(default_factory=dict)  # encoders' vectors: float32 numpy arrays


@dataclass
class StoredPoint:
    """What `get` returns per id: the payload and the vectors of the spaces asked for."""

    payload: dict[str, Any]
    vectors: dict[str, list[float]] = field(default_factory=dict)


@runtime_checkable
class ShardApi(Protocol):
    """One shard replica, as the router calls it."""

    shard: int
    replica: int

    async def search_many(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        """Several searches in one call (one round trip per shard per query); one hit list per spec."""

    async def get(self, ids: Sequence[str], with_vectors: Sequence[str] = ()) -> dict[str, StoredPoint]:
        """Payloads (and the named spaces' vectors) of the ids held here."""

    async def upsert(self, points: Sequence[PointRow], wait: bool = True) -> int:
        """Insert or replace; each space stores the points carrying its vector. Returns how many were written.
        `wait`: return only once the change is visible to every search on this replica (bounded ones too)."""

    async def delete(self, ids: Sequence[str], wait: bool = True) -> int:
        """Delete from every space; returns how many of `ids` existed here. `wait` as for upsert."""

    async def export(self, ids: Sequence[str]) -> list[PointRow]:
        """Whole stored points, for copying to another shard."""

    async def export_page(self, after: str, limit: int = EXPORT_PAGE) -> list[PointRow]:
        """The first `limit` whole stored points above `after` (in id order), vectors as float32 numpy arrays: one
        page of a keyset copy of the replica (a snapshot's), no id list and no `id in [...]` filter. Fewer than
        `limit` only when none is left above the last."""

    async def ids(self) -> list[str]:
        """Every id held here, sorted."""

    async def scan(self, after: str, limit: int, expr: str | None = None) -> list[str]:
        """The first `limit` ids above `after` (in id order) held here in any space, matching `expr` if given:
        one page of a keyset scroll, which no concurrent write can make repeat an id."""

    async def count(self) -> dict[str, int]:
        """Points per space."""

    async def ping(self) -> dict[str, Any]:
        """Alive and serving ({shard, replica, incarnation}: new per process start); on a Milvus server, its
        collections reloaded if it restarted."""

    async def digest(self, rescan_after_s: float | None = None) -> dict[str, Any]:
        """Bucket digests of what this replica holds (shards.digest): {incarnation, age_s, ids, buckets};
        rebuilt by a full scan once older than `rescan_after_s`."""

    async def bucket_hashes(self, buckets: Sequence[int]) -> dict[str, int]:
        """Per-id content hashes of the ids in `buckets`."""

    async def node(self) -> str | None:
        """The Ray node this replica runs on (None: in this process). Asks nothing of Milvus."""
