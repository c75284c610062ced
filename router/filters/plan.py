"""Pure planning: where each prefetch's filter runs, and which search params a latency budget affords. No I/O.

- pushdown:   the whole filter translates to a Milvus expression; shards filter while they search.
- prefilter:  Elasticsearch returns the matching ids (few enough: at most `prefilter_max_ids`), which go down as
              an id allow-list beside the translatable part.
- postfilter: shards search with the translatable part only, over-fetching; Elasticsearch confirms candidates;
              the fetch grows until `limit` confirmed hits or the candidates are exhausted (bounded rounds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.errors import InvalidRequest
from router.filters.dsl import Node, split_conjuncts

PlanKind = Literal["none", "pushdown", "prefilter", "postfilter"]
Mode = Literal["auto", "pushdown", "prefilter", "postfilter"]
MILVUS_MAX_TOPK = 16_384
# Payloads ride with the search while the candidates all shards return (shards x the prefetch limits) stay at or
# under this; above it the router hydrates the final page in a second call. Measured in docs/bench/notes.md.
INLINE_PAYLOAD_MAX = 256
SCAN_PAGE = 1000  # ids per shard per page when counting or verifying by walking the shards


@dataclass(frozen=True)
class FilterPlan:
    kind: PlanKind
    expr: str | None = None          # pushed into every shard search
    residual: Node | None = None     # decided by Elasticsearch
    node: Node | None = None         # the whole filter (Elasticsearch counts and pre-filters on all of it)

    @property
    def needs_es(self) -> bool:
        return self.residual is not None


def plan_filter(node: Node | None, mapping: dict[str, str], mode: Mode = "auto") -> FilterPlan:
    """First decision, before asking Elasticsearch anything. An ES plan is 'prefilter' until `choose_es_path`."""
    if node is None:
        return FilterPlan("none")
    if mode in ("prefilter", "postfilter"):
        return FilterPlan(mode, None, node, node)  # forced: the whole filter goes through Elasticsearch
    expr, residual = split_conjuncts(node, mapping)
    if residual is None:
        return FilterPlan("pushdown", expr, None, node)
    return FilterPlan("prefilter", expr, residual, node)


def choose_es_path(plan: FilterPlan, es_count: int | None, max_ids: int, mode: Mode = "auto") -> FilterPlan:
    """Pre-filter by id set when Elasticsearch says the whole filter is selective, else post-filter."""
    if not plan.needs_es or mode in ("prefilter", "postfilter"):
        return plan
    if es_count is not None and es_count <= max_ids:
        return FilterPlan("prefilter", plan.expr, plan.residual, plan.node)
    return FilterPlan("postfilter", plan.expr, plan.residual, plan.node)


def first_fetch(need: int, overfetch: int) -> int:
    return min(MILVUS_MAX_TOPK, max(need * overfetch, need + 16))


def next_fetch(fetch: int, overfetch: int) -> int | None:
    """The next, larger fetch; None once Milvus's top-k cap has been reached."""
    if fetch >= MILVUS_MAX_TOPK:
        return None
    return min(MILVUS_MAX_TOPK, fetch * overfetch)


# -- search params under a latency budget ------------------------------------------------------------------------
# What `prefetch[].params` may set, per index type, within Milvus's own bounds (HNSW ef <= 32768, IVF nprobe <=
# 65536; CAGRA's are prism's sanity bounds). Anything else is a 422 naming the field, before any search.
SEARCH_PARAM_BOUNDS: dict[str, dict[str, tuple[int, int]]] = {
    "FLAT": {},
    "HNSW": {"ef": (1, 32_768)},
    **{t: {"nprobe": (1, 65_536)} for t in ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "GPU_IVF_PQ")},
    "GPU_CAGRA": {"itopk_size": (1, 65_536), "search_width": (1, 65_536)},
}
DEFAULT_EF_FLOOR = 64
DEFAULT_NPROBE = 16
MAX_EF = 512
MAX_NPROBE = 128


def adapt_params(index_type: str, limit: int, budget_ms: float | None, observed_ms: float | None,
                 given: dict | None = None, depth: int = 1) -> dict | None:
    """ef (HNSW) or nprobe (IVF) for one shard: the defaults scaled by how the budget compares with the shard's
    observed latency at the defaults. Plenty of room (>= 4x) doubles them (more recall for free); less than 1.5x
    shrinks them in proportion (never below what `limit` needs). None when nothing is known and `depth` is 1, or
    when the request set its own params: then the backend's defaults (or the request's) run.

    `depth`: how many times deeper than the defaults this shard must search. A vector-routed collection gathers a
    query's neighbours on the shards of its nearest centroids, where a hash layout spreads them over all `S`
    shards, each searched `ef` deep: the shard holding them must search as deep as the S of them together did, so
    the router asks for depth S there (see routed_depth). Measured (docs/bench/routing.json, 200k x 384, 8
    shards): at ef 64 a routed shard of the clustered set recalls 0.873 of its own top 10 (a hash shard 0.997); at
    ef 256 0.992, at 512 1.0, at 1.6x and 2.2x the cost of ef 64 per search."""
    if given:
        return None
    if budget_ms is None or observed_ms is None or observed_ms <= 0:
        if depth <= 1:
            return None
        scale = 1.0
    else:
        room = budget_ms / observed_ms
        scale = 2.0 if room >= 4 else 1.0 if room >= 1.5 else room / 1.5
    if index_type == "HNSW":
        base = max(DEFAULT_EF_FLOOR, limit) * depth
        return {"ef": int(min(max(MAX_EF, limit), max(limit, round(base * scale))))}
    if index_type in ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "GPU_IVF_PQ"):
        return {"nprobe": int(min(MAX_NPROBE, max(1, round(DEFAULT_NPROBE * depth * scale))))}
    return None


def routed_depth(routed_space: str | None, shards: int) -> dict[str, int]:
    """Per space, how deep a routed collection's shards search (adapt_params' `depth`): the routing space of a
    trained vector placement gathers each query's neighbours on few shards, so it searches `shards` times deeper;
    every other space is spread by hash (depth 1, left out)."""
    return {routed_space: shards} if routed_space is not None and shards > 1 else {}


def inline_payload(prefetch_limits: list[int], shards: int, max_candidates: int = INLINE_PAYLOAD_MAX) -> bool:
    """Return payloads with the search (one round trip) rather than hydrate the page afterwards (two)?

    Inline ships every candidate's payload: `shards` x the sum of the prefetch limits. Hydration ships only the
    page's, but costs one more call per owning shard, which on this stack is worth ~250 small payloads."""
    return shards * sum(prefetch_limits) <= max_candidates


def check_search_params(index_type: str, params: dict | None, field: str) -> None:
    """A request's search params: only those its index type reads, integers within their bounds."""
    allowed = SEARCH_PARAM_BOUNDS.get(index_type, {})
    for key, value in (params or {}).items():
        if key not in allowed:
            raise InvalidRequest(f"{field}.{key}: a {index_type} index takes "
                                 + (", ".join(sorted(allowed)) or "no search params"), field=f"{field}.{key}")
        lo, hi = allowed[key]
        whole = not isinstance(value, bool) and isinstance(value, (int, float)) and value == int(value)
        if not whole or not lo <= value <= hi:
            raise InvalidRequest(f"{field}.{key}: must be an integer in {lo}..{hi}, got {value!r}",
                                 field=f"{field}.{key}")
        params[key] = int(value)  # 128.0 -> 128: Milvus reads integers
