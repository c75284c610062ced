"""Collection and service answers of the HTTP API v1: health, listing, shard status, verify, reshard, aliases."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from router.schema.common import Strict


class Health(BaseModel):
    status: str
    version: str
    collections: list[str]
    encoders: dict[str, dict[str, Any]]
    auth: bool  # whether API keys are required


class VerifyResponse(BaseModel):
    """`GET .../verify`: do the shards (Milvus) and Elasticsearch hold the same points?"""

    collection: str
    shard_points: int  # distinct ids the shards hold
    elasticsearch_documents: int
    missing_in_elasticsearch: int  # held by a shard, no document in Elasticsearch
    extra_in_elasticsearch: int  # documents whose id no shard holds
    sample_missing: list[str] = []  # up to 100 of each, in id order
    sample_extra: list[str] = []  # listed while the shards hold at most 10,000 points (counted always)
    replicas_equal: bool = True  # every shard's replicas hold the same ids and contents (digests compared)
    replica_differences: list["ReplicaDifference"] = []
    misplaced: int = Field(0, description="points held by a shard that is not their placement's shard (a stray "
                           "copy, a point on two shards): each such copy counts once; a point on two shards whose "
                           "copies each agree with their own key or vector counts each copy off its home (key "
                           "routing: the key Elasticsearch holds), or every copy when that is unknown")
    sample_misplaced: list["MisplacedPoint"] = Field([], description="up to 100 of them, by shard and id")
    drift: bool


class MisplacedPoint(BaseModel):
    """A point found on a shard its collection's placement does not put it on."""

    id: str
    shard: int = Field(description="the shard that holds it")
    placement: int | None = Field(description="the shard its placement puts it on (null: its routing key is "
                                  "missing or unreadable, or it is on several shards and which copy is current is "
                                  "unknown)")


class ReplicaDifference(BaseModel):
    """One replica that holds some ids differently from the other replicas of its shard (or did not answer)."""

    shard: int
    replica: int
    reference: int | None = Field(None, description="the replica it was compared with")
    differing: int = Field(0, description="ids held only here, missing here, or with other contents")
    ids: list[str] = Field([], description="up to 100 of them, in id order")
    error: str | None = Field(None, description="why it could not be compared")


class ReshardRequest(Strict):
    shards: int = Field(ge=1)


class ReshardResponse(BaseModel):
    collection: str
    shards: int
    moved: int
    seconds: float


class RebalanceRequest(Strict):
    """`POST .../rebalance`: no options yet (an empty object or no body)."""


class RebalanceResponse(BaseModel):
    collection: str
    state: str = Field(description="\"ready\": points live on their nearest centroid's shard")
    centroids: int
    trained: int = Field(description="the placement's version: trainings so far")
    moved: int = Field(description="points copied to another shard")
    seconds: float
    spread: float = Field(description="the largest relative distance of a shard's share of the training sample "
                          "from the mean (0.2: some shard 20% off)")


class CollectionList(BaseModel):
    collections: list[str]


class DeletedCollection(BaseModel):
    deleted: str



class ShardInfo(BaseModel):
    shard: int
    replica: int
    counts: dict[str, int]
    state: str = Field("live", description="live | stale (behind on writes) | behind (holds every acknowledged write "
                       "but lacks one another replica applied: a write below quorum, being replayed; read only when "
                       "no replica holding it answers) | verifying (restarted, not yet compared "
                       "with the other replicas) | diverged (known to differ, being repaired) | dead")
    applied_seq: int = 0
    committed_seq: int = Field(0, description="the shard's last write acknowledged at its write quorum; a replica "
                               "with applied_seq below it is stale")
    lag: int = Field(0, description="writes issued to this shard that the replica has not applied yet")
    last_error: str | None = Field(None, description="the current error (cleared when the replica answers again)")
    faults: int = Field(0, description="failures seen on this replica since the router started")
    last_fault: str | None = Field(None, description="the last failure seen, kept after recovery")
    last_fault_s_ago: float | None = None
    node: str | None = Field(None, description="the Ray node the replica runs on (none: in-process or not answering)")
    agreement: str = Field("agrees", description="anti-entropy's verdict: agrees | verifying | diverged")
    digest_s_ago: float | None = Field(None, description="seconds since anti-entropy last found this replica equal to "
                                       "the others (none: not compared yet)")


class CollectionInfo(BaseModel):
    name: str
    config: dict[str, Any]
    counts: dict[str, int]
    shards: list[ShardInfo]
    routing: dict[str, Any] = Field(default_factory=lambda: {"method": "hash", "state": "hash"}, description=(
        "where points live and which shards a query visits: the collection's routing setting and its state "
        "(hash: the ring over ids; key: ready; vector: hash until its centroids are trained, then ready)"))
    archive: list[dict[str, Any]] = Field(default_factory=list, description=(
        "per shard, its journal archive (point-in-time restore): archived_seq, held (writes not shipped yet), "
        "dropped (lost unarchived: a gap restore refuses to cross), gaps, complete_until, error ({}: not archived)"))


class AliasRequest(Strict):
    """`PUT /v1/aliases/{alias}`: the collection the alias is to stand for."""

    collection: str


class AliasChange(BaseModel):
    """What an alias change did: `collection` is its target now (null once deleted), `previous` the one before."""

    alias: str
    collection: str | None
    previous: str | None = None


class AliasList(BaseModel):
    """`GET /v1/aliases`: every alias and the collection it stands for."""

    aliases: dict[str, str]
