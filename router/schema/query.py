"""Query requests and answers of the HTTP API v1: prefetches, fusion, post-fusion stages, hits, coverage, explain."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster.errors import ShardUnavailable
from cluster.names import MAX_NAME_LENGTH
from router.filters.values import distance, number
from router.schema.common import PayloadExclude, Strict, returns
from shards.api import ScoredId  # noqa: F401 - ScoredId is part of the router's vocabulary too

MAX_LIMIT = 10_000
MAX_PREFETCH = 16
MAX_BATCH_QUERIES = 64
MAX_TEXT_CHARS = 20_000


# Milvus keeps vectors as float32: a query component beyond it (1e39) would become inf there and score NaN.
FLOAT32_MAX = 3.4028234663852886e38


class _Query(Strict):
    # NaN and Infinity (a JSON 1e400 parses as one; a gRPC double can be one) are refused in every number of a
    # query (vectors, weights, params, bounds): nothing downstream can rank with them, and they used to be 500s.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Prefetch(_Query):
    """One retrieval in one named space: a vector given as is, or text/image to embed."""

    space: str = Field(max_length=MAX_NAME_LENGTH)
    vector: list[float] | None = None
    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    image: str | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    filter: dict[str, Any] | None = None
    params: dict[str, int | float] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> "Prefetch":
        given = [k for k in ("vector", "text", "image") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a prefetch needs exactly one of vector, text, image (got {given or 'none'})")
        if self.vector is not None and not self.vector:
            raise ValueError("vector must not be empty")
        bad = next((x for x in self.vector or () if abs(x) > FLOAT32_MAX), None)
        if bad is not None:
            raise ValueError(f"vector component {bad!r} is beyond float32 (|x| <= {FLOAT32_MAX:.4g}), which Milvus "
                             "stores")
        return self


class Fusion(_Query):
    """How per-space lists become one: reciprocal rank fusion, distribution-based score fusion, or none."""

    method: Literal["rrf", "dbsf", "none"] = "rrf"
    k: int = Field(default=60, ge=1, le=100_000)
    weights: list[float] | None = None
    # The fused list pages are cut from: each prefetch without its own limit contributes this many candidates.
    # Every page of one query asked with the same window is a slice of the same list (default: see
    # QueryRequest.window). offset + limit above an explicit window is a 422.
    window: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description=(
        "Candidates per prefetch without its own limit, and the ranked list pages are cut from (default 50 for a "
        "fused query, offset + limit for one prefetch); offset + limit above it is a 422."))

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return value
        if any(w < 0 for w in value):
            raise ValueError(f"weights must be >= 0, got {value!r}")
        if value and not any(w > 0 for w in value):
            raise ValueError("at least one weight must be > 0")
        return value


MAX_CANDIDATES = 1_000
# A fused query (several prefetches, or stages) without fusion.window ranks and pages over this many candidates
# per prefetch, so that pages within it never repeat or skip a hit whatever offset and limit each page asks.
DEFAULT_WINDOW = 50


class BoostSpec(_Query):
    """One boost of a formula stage: `equals` + `add`, or a decay (`gauss` | `exp` | `linear`) around `origin` with
    `scale` (numbers; dates as ISO strings with durations such as "7d"), added (times `add`, default 1) or, with
    `multiply: true`, multiplied into the score."""

    field: str
    equals: str | int | float | bool | None = None
    add: float | None = Field(default=None, ge=-1e6, le=1e6)
    decay: Literal["gauss", "exp", "linear"] | None = None
    origin: float | str | None = None
    scale: float | str | None = None
    offset: float | str = 0
    decay_at: float = Field(default=0.5, gt=0, lt=1)  # the factor at offset + scale
    multiply: bool = False

    @model_validator(mode="after")
    def _shape(self) -> "BoostSpec":
        if self.decay is None:
            if self.equals is None or self.add is None or self.multiply:
                raise ValueError("a boost is either {field, equals, add} or {field, decay, origin, scale[, multiply]}")
            return self
        if self.equals is not None:
            raise ValueError("a decay boost takes no `equals`")
        if self.origin is None or number(self.origin) is None:
            raise ValueError(f"decay origin must be a number or an ISO date, got {self.origin!r}")
        if abs(number(self.origin)) > 1e15:
            raise ValueError(f"decay origin {self.origin!r} is out of range")
        if self.scale is None or not 0 < (distance(self.scale) or 0) <= 1e15:
            raise ValueError(f"decay scale must be a positive number or duration like '7d', got {self.scale!r}")
        if distance(self.offset) is None or distance(self.offset) < 0:
            raise ValueError(f"decay offset must be >= 0, got {self.offset!r}")
        return self


class FormulaStage(_Query):
    score: Literal["fused"] = "fused"
    boost: list[BoostSpec] = Field(min_length=1, max_length=32)


class MMRStage(_Query):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    space: str
    lambda_: float = Field(default=0.7, ge=0, le=1, alias="lambda")


class GroupByStage(_Query):
    field: str
    size: int = Field(default=1, ge=1, le=100)
    groups: int = Field(default=10, ge=1, le=1000)


class Stage(_Query):
    """One post-fusion stage (exactly one of formula, mmr, group_by) and how many fused candidates it sees
    (`candidates`, default the query's window, see QueryRequest.window; at most 1000)."""

    formula: FormulaStage | None = None
    mmr: MMRStage | None = None
    group_by: GroupByStage | None = None
    candidates: int | None = Field(default=None, ge=1, le=MAX_CANDIDATES)

    @model_validator(mode="after")
    def _one(self) -> "Stage":
        given = [k for k in ("formula", "mmr", "group_by") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a stage is exactly one of formula, mmr, group_by (got {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("formula", "mmr", "group_by") if getattr(self, k) is not None)


class QueryRequest(_Query):
    """`POST /v1/collections/{name}/query`."""

    prefetch: list[Prefetch] = Field(min_length=1, max_length=MAX_PREFETCH)
    fusion: Fusion = Field(default_factory=Fusion)
    filter: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=MAX_LIMIT)
    with_payload: bool | list[str] | PayloadExclude = True
    with_vectors: bool | list[str] = False
    require_complete: bool = False
    # bounded (default): never waits for writes, sees every write acknowledged with wait=true; strong: also sees
    # writes made with wait=false, and waits for the backend's time tick (~200-400 ms on a Milvus server);
    # eventual: no guarantee, never waits.
    consistency: Literal["bounded", "strong", "eventual"] = "bounded"
    cache: bool = True    # false: neither answered from nor stored in the result cache
    # Time the shards get, in ms (default: the config's query_budget_ms, else shard_timeout_s): a shard that has
    # not answered by then is left out (coverage.failed[].reason "timeout"), never waited for.
    budget_ms: int | None = Field(default=None, ge=1, le=600_000)
    # Fewer answering shards than this share of all is a 503 instead of a partial answer.
    min_coverage: float | None = Field(default=None, ge=0, le=1)
    debug: bool = False   # true: the answer carries `timings_ms`, where the time went
    # Applied in order after fusion, on the global candidates; a group_by stage, if any, comes last.
    stages: list[Stage] = Field(default_factory=list, max_length=8)
    explain: bool = False  # true: each hit says how its score came about (Hit.explain)
    # Checked (router.routing.settings.check_probe) where the query is routed, so that its 422 says what a probe is.
    probe: Any = Field(default=None, json_schema_extra={"anyOf": [{"type": "integer", "minimum": 1},
                                                                  {"const": "all"}, {"type": "null"}]}, description=(
        "Vector routing: how many shards a prefetch in the routing space visits (those owning its nearest "
        "centroids), an integer >= 1 or \"all\"; default: the cluster's query_probe (2). Collections routed by "
        "hash or key, and vector-routed ones not trained yet, visit every shard (key routing: only the shards of "
        "the keys a top-level term/terms filter pins). coverage.routed lists the shards visited."))

    @model_validator(mode="after")
    def _consistent(self) -> "QueryRequest":
        if self.limit + self.offset > MAX_LIMIT:
            raise ValueError(f"limit + offset must be <= {MAX_LIMIT}, got {self.limit + self.offset}")
        if self.fusion.window is not None and self.offset + self.limit > self.fusion.window:
            raise ValueError(f"fusion.window: offset + limit ({self.offset + self.limit}) exceeds the window "
                             f"({self.fusion.window}); set fusion.window to at least {self.offset + self.limit}, "
                             "the same on every page")
        if self.fusion.weights is not None and len(self.fusion.weights) != len(self.prefetch):
            raise ValueError(
                f"fusion.weights has {len(self.fusion.weights)} entries for {len(self.prefetch)} prefetches"
            )
        if self.fusion.method == "none" and len(self.prefetch) != 1:
            raise ValueError("fusion 'none' needs exactly one prefetch; use 'rrf' or 'dbsf' to combine several")
        if any(s.group_by is not None for s in self.stages[:-1]):
            raise ValueError("group_by must be the last stage (it turns the answer into groups)")
        return self

    def fused(self) -> bool:
        """Whether the answer is a ranking of its own (several prefetches, or stages), not one space's."""
        return len(self.prefetch) > 1 or bool(self.stages)

    def window(self) -> int:
        """The length of the ranked list pages are cut from. fusion.window when given; else, for a fused query,
        DEFAULT_WINDOW (widened to offset + limit past it, and the answer says so: pages asked with a narrower
        window may then overlap); else offset + limit (one space's own ranking)."""
        need = self.offset + self.limit
        if self.fusion.window is not None:
            return self.fusion.window
        return max(need, DEFAULT_WINDOW) if self.fused() else need

    def window_note(self) -> str | None:
        need = self.offset + self.limit
        if self.fusion.window is None and self.fused() and need > DEFAULT_WINDOW:
            return (f"paging: offset + limit ({need}) is past the default fusion window ({DEFAULT_WINDOW}), which "
                    f"was widened to {need}; pages asked with a narrower window can overlap this one: set "
                    f"fusion.window to at least the deepest offset + limit you page to, on every page")
        return None

    def candidates(self) -> int:
        """How many fused candidates the stages see (0 without stages): each stage's own `candidates`, else the
        window (never fewer than offset + limit), so that every page of a query sees the same candidates."""
        if not self.stages:
            return 0
        default = min(self.window(), MAX_CANDIDATES)
        return max(self.offset + self.limit, *(s.candidates or default for s in self.stages))

    def returns(self) -> tuple[bool, list[str] | bool]:
        return returns(self.with_payload, self.with_vectors)

    def check_coverage(self, total: int, failures: list["ShardFailure"]) -> int:
        """How many of the `total` shards visited answered; ShardUnavailable when that is too few for this request
        (a query routed to no shard, whose filter no point can match, answers empty)."""
        answered = total - len(failures)
        why = ("no shard answered" if total and not answered else "require_complete" if failures and self.require_complete
               else "min_coverage" if answered < (self.min_coverage or 0) * total else None)
        if why:
            raise ShardUnavailable(f"{why} ({answered} of {total} shards answered): "
                                   + "; ".join(f.message for f in failures), shards=[f.shard for f in failures])
        return answered

    def prefetch_limit(self, prefetch: Prefetch) -> int:
        """A prefetch's own limit, else the query's window (or the stages' candidates, when more)."""
        return prefetch.limit if prefetch.limit is not None else max(self.window(), self.candidates())


class PrefetchExplanation(BaseModel):
    space: str
    rank: int | None = None     # 1-based rank in that prefetch's global top-k; null: not in it
    score: float | None = None  # its raw score there
    contribution: float         # what it added to the fused score


class StageExplanation(BaseModel):
    stage: str
    before: float
    after: float


class Explanation(BaseModel):
    """fused = the sum of the contributions; score = fused + the sum of every stage's (after - before)."""

    prefetch: list[PrefetchExplanation]
    fused: float
    stages: list[StageExplanation] = Field(default_factory=list)
    score: float


class Hit(BaseModel):
    id: str
    score: float
    payload: dict[str, Any] | None = None
    vectors: dict[str, list[float]] | None = None
    explain: Explanation | None = None  # with "explain": true


class ShardFailure(BaseModel):
    shard: int
    reason: Literal["timeout", "error", "unavailable"]  # no answer in time | it failed | no replica could serve
    message: str


class Coverage(BaseModel):
    shards_total: int = Field(description="the collection's shard count")
    shards_answered: int = Field(description="how many of the shards visited (routed) answered")
    failed: list[ShardFailure] = Field(default_factory=list)
    routed: list[int] = Field(default_factory=list, description=(
        "the shard ids the query visited, ascending: every shard under hash routing; fewer when the collection's "
        "routing lets the query skip shards that cannot hold a match (key pinned by the filter, vector probe)"))


class HitGroup(BaseModel):
    value: Any
    hits: list[Hit]


class QueryResponse(BaseModel):
    hits: list[Hit]
    # with a group_by stage: the groups (hits then lists their hits in group order)
    groups: list[HitGroup] | None = None
    coverage: Coverage
    partial: bool
    took_ms: float
    filter_rounds: int = 0
    filter_plans: list[str] = Field(default_factory=list)  # per prefetch: none | pushdown | prefilter | postfilter
    notes: list[str] = Field(default_factory=list)
    cached: bool = False  # answered from the result cache
    # with debug: milliseconds per stage (embed, plan, fan_out, merge_fuse, hydrate) and in total
    timings_ms: dict[str, float] | None = None
    # with a budget: the ef / nprobe each shard ran per space, chosen from the budget and the shard's latency
    search_params: dict[str, dict[str, Any]] | None = None


class BatchQueryRequest(_Query):
    queries: list[QueryRequest] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


class BatchQueryResponse(BaseModel):
    results: list[QueryResponse]

