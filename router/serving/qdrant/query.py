"""`POST .../points/query` and `/points/query/batch`: Qdrant's query tree evaluated over prism's search.

A query (and each prefetch) is one of: nearest (a dense vector, or a point id: that point's vector, the point
itself left out), a fusion (rrf, dbsf, or rrf with k and weights) of its prefetches, or nearest over its
prefetches (rescoring: the nearest among the points they found). Filters propagate down the tree: every search
runs with its own filter AND those of all levels above it, as Qdrant's server does. Defaults are Qdrant's: limit
10 at every level, offset 0, no payload, no vectors.

How it runs on prism:
- a lone nearest query is one prism query (payloads and vectors come with it);
- otherwise every nearest leaf of the tree runs in ONE prism call, one prefetch per leaf, each with its own
  limit and filter, which gives back each leaf's own global top list (PrismService.prefetch: prism's planning,
  fan-out and merge, without its fusion); trees with more leaves than limits.max_prefetch make several such calls
  side by side. Fusion then runs here, with Qdrant's arithmetic (router.serving.qdrant.fusion), and rescoring nodes run
  one prism query restricted to the ids found below them. Payloads come with the search when prism ships them
  inline (few candidates), else the page's payloads (and any vectors asked for) are fetched once, at the end.
Scores are Qdrant's: Cosine and Dot as they are, Euclid the distance (prism ranks by minus its square).
score_threshold: a nearest search keeps scores strictly better than it (for Euclid, distances below it), a fusion
keeps scores at or above it (qdrant-client's local mode, which mirrors the server).
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import PointNotFound
from router.serving.qdrant import fusion
from router.serving.qdrant.collections import space_of
from router.serving.qdrant.errors import BadFormat, OutOfRange, Unsupported
from router.serving.qdrant.filters import translate
from router.serving.qdrant.ids import to_prism
from router.serving.qdrant.models import Prefetch, QueryRequest, QueryRequestBatch, parse
from router.serving.qdrant.points import check_selector, record, vector_spaces

DEFAULT_LIMIT = 10
_UNSUPPORTED = ("recommend", "discover", "context", "order_by", "formula", "sample", "relevance_feedback", "mmr")


@dataclass
class Node:
    kind: str                                   # nearest | rescore | rrf | dbsf
    limit: int
    filters: list[dict[str, Any]]               # its own and every level's above it (prism DSL)
    threshold: float | None = None
    space: str | None = None
    metric: str | None = None
    vector: list[float] | None = None
    params: dict[str, int] | None = None
    children: list["Node"] = field(default_factory=list)
    k: int | None = None
    weights: list[float] | None = None
    leaf: int = -1                              # its index among the tree's nearest leaves


def _and(filters: list[dict[str, Any]]) -> dict[str, Any] | None:
    return None if not filters else filters[0] if len(filters) == 1 else {"bool": {"filter": list(filters)}}


def qdrant_score(score: float, metric: str) -> float:
    """prism ranks l2 by minus the squared distance; Qdrant's Euclid score is the distance."""
    return math.sqrt(max(-score, 0.0)) if metric == "l2" else score


def _kept(hits: list[tuple[str, float]], threshold: float | None, metric: str | None) -> list[tuple[str, float]]:
    if threshold is None:
        return hits
    if metric is None:  # a fusion: at or above
        return [h for h in hits if h[1] >= threshold]
    return [h for h in hits if (h[1] < threshold if metric == "l2" else h[1] > threshold)]


class Query:
    """One query request against one collection."""

    def __init__(self, service: Any, name: str):
        self.service, self.name = service, name
        self.cfg = service.collection_config(name)
        self.leaves: list[Node] = []
        # What the answer carries (payloads? which spaces' vectors?), asked of the prism query that ends the
        # evaluation (a top-level fusion: the leaves' query; rescoring: its own), so no second round trip fetches
        # the page; what came back, by id.
        self.carry: tuple[bool, list[str]] = (False, [])
        self.rows: dict[str, Any] = {}

    # -- the tree --------------------------------------------------------------------------------------------
    async def node(self, p: Prefetch, above: list[dict[str, Any]], where: str, limit: int) -> Node:
        if p.lookup_from is not None:
            raise Unsupported(f"{where}.lookup_from is not supported by prism's Qdrant API yet")
        own = translate(p.filter, self.cfg.metadata, f"{where}.filter")
        filters = above + ([own] if own is not None else [])
        kind, arg = self._kind(p.query, where)
        subs = [] if p.prefetch is None else p.prefetch if isinstance(p.prefetch, list) else [p.prefetch]
        if kind in ("rrf", "dbsf"):
            if not subs:
                raise BadFormat(f"{where}.query: Cannot perform fusion without prefetches")
            node = Node(kind, limit, filters, p.score_threshold, **arg)
        elif kind == "nearest":
            space, sp = space_of(self.cfg, p.using, f"{where}.using")
            vector, filters = await self._vector(arg, space, filters, f"{where}.query")
            node = Node("rescore" if subs else "nearest", limit, filters, p.score_threshold, space, sp.metric,
                        vector, self._params(sp, p.params, limit))
        else:
            raise Unsupported(f"{where}: a query without `query` is not supported by prism's Qdrant API yet")
        for i, sub in enumerate(subs):
            node.children.append(await self.node(sub, node.filters, f"{where}.prefetch[{i}]",
                                                 sub.limit or DEFAULT_LIMIT))
        if node.kind == "nearest":
            node.leaf = len(self.leaves)
            self.leaves.append(node)
        return node

    @staticmethod
    def _kind(q: Any, where: str) -> tuple[str | None, Any]:
        if q is None:
            return None, None
        if isinstance(q, dict) and len(q) == 1:
            key, arg = next(iter(q.items()))
            if key == "fusion":
                if arg not in ("rrf", "dbsf"):
                    raise BadFormat(f"{where}.query.fusion: expected rrf or dbsf, got {arg!r}")
                return arg, {}
            if key == "rrf":
                if not isinstance(arg, dict) or not set(arg) <= {"k", "weights"}:
                    raise BadFormat(f"{where}.query.rrf: expected {{k, weights}}")
                k, w = arg.get("k"), arg.get("weights")
                if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
                    raise BadFormat(f"{where}.query.rrf.k: expected an integer")
                if w is not None and (not isinstance(w, list) or any(
                        isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in w)):
                    raise BadFormat(f"{where}.query.rrf.weights: expected a list of numbers")
                return "rrf", {"k": k, "weights": w}
            if key == "nearest":
                return "nearest", arg
            if key in _UNSUPPORTED:
                raise Unsupported(f"{where}.query: {key} queries are not supported by prism's Qdrant API yet")
        if isinstance(q, dict) and set(q) == {"nearest", "mmr"}:
            if q["mmr"] is not None:
                raise Unsupported(f"{where}.query.mmr is not supported by prism's Qdrant API yet")
            return "nearest", q["nearest"]
        if isinstance(q, (list, int, str)) and not isinstance(q, bool):
            return "nearest", q
        raise Unsupported(f"{where}.query: {str(q)[:80]} is not a query prism's Qdrant API supports (nearest "
                          "by vector or point id, fusion rrf / dbsf, rrf with k and weights)")

    async def _vector(self, arg: Any, space: str, filters: list, where: str) -> tuple[list[float], list]:
        """A dense vector as given, or the stored vector of a point id (that point then left out, as Qdrant does)."""
        if isinstance(arg, list) and arg and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                 for x in arg):
            return arg, filters
        if isinstance(arg, (int, str)) and not isinstance(arg, bool):
            pid = to_prism(arg, where)
            got = await self.service.retrieve(self.name, {"ids": [pid], "with_payload": False,
                                                          "with_vectors": [space]})
            if not got.points:
                raise PointNotFound(f"No point with id {arg} found")
            vector = (got.points[0].vectors or {}).get(space)
            if vector is None:
                raise BadFormat(f"{where}: point {arg} has no vector {space!r}")
            return vector, filters + [{"bool": {"must_not": [{"ids": {"values": [pid]}}]}}]
        if isinstance(arg, dict) or isinstance(arg, list) and arg and isinstance(arg[0], list):
            raise Unsupported(f"{where}: sparse, multi-vector and inference inputs are not supported by prism's "
                              "Qdrant API yet")
        raise BadFormat(f"{where}: expected a vector (a list of numbers) or a point id")

    def _params(self, space: Any, params: Any, limit: int) -> dict[str, int] | None:
        """hnsw_ef -> ef (at least the limit, as Qdrant's HNSW does); exact -> the largest ef prism allows (an
        HNSW space has no exact scan; a FLAT one is always exact). Quantization knobs have nothing to act on."""
        if params is None or space.index.type != "HNSW":
            return None
        if params.exact:
            return {"ef": max(self.service.config.limits.max_ef, limit)}
        return {"ef": max(params.hnsw_ef, limit)} if params.hnsw_ef else None

    # -- running it ------------------------------------------------------------------------------------------
    async def _search(self, node: Node, limit: int, offset: int = 0, extra: list | None = None,
                      payload: bool = False, spaces: list[str] | None = None) -> list[Any]:
        prefetch = {"space": node.space, "vector": node.vector, **({"params": node.params} if node.params else {})}
        body = {"prefetch": [prefetch], "fusion": {"method": "none"}, "limit": limit, "offset": offset,
                "with_payload": payload, "with_vectors": spaces or False, "require_complete": True}
        flt = _and(node.filters + (extra or []))
        if flt is not None:
            body["filter"] = flt
        return (await self.service.query(self.name, body)).hits

    async def _leaf_lists(self) -> list[list[tuple[str, float]]]:
        """Every nearest leaf's own top list: one prism prefetch call (plan, embed, fan out, merge; no fusion) for
        up to limits.max_prefetch leaves, several side by side beyond that."""
        per_call = self.service.config.limits.max_prefetch
        spec = [{"space": n.space, "vector": n.vector, "limit": n.limit, **({"params": n.params} if n.params else {}),
                 **({"filter": _and(n.filters)} if n.filters else {})} for n in self.leaves]
        got = await asyncio.gather(*(self.service.prefetch(self.name, {
            "prefetch": spec[at:at + per_call], "with_payload": self.carry[0], "require_complete": True})
            for at in range(0, len(spec), per_call)))
        lists = [lst for g in got for lst in g.lists]
        for lst in lists:
            self.rows.update((h.id, h) for h in lst if h.payload is not None)
        return [_kept([(h.id, qdrant_score(h.score, n.metric)) for h in lst], n.threshold, n.metric)
                for n, lst in zip(self.leaves, lists)]

    async def _eval(self, node: Node, want: int, lists: list, top: bool = False) -> list[tuple[str, float]]:
        if node.kind == "nearest":
            return lists[node.leaf]
        below = [await self._eval(c, c.limit, lists) for c in node.children]
        if node.kind == "rescore":
            ids = list(dict.fromkeys(i for lst in below for i, _ in lst))
            if not ids:
                return []
            carry = self.carry if top else (False, [])
            hits = await self._search(node, want, extra=[{"ids": {"values": ids}}], payload=carry[0],
                                      spaces=carry[1])
            if top:
                self.rows.update((h.id, h) for h in hits)
            return _kept([(h.id, qdrant_score(h.score, node.metric)) for h in hits], node.threshold, node.metric)
        fused = fusion.rrf(below, want, node.k, node.weights) if node.kind == "rrf" else fusion.dbsf(below, want)
        return _kept(fused, node.threshold, None)

    async def run(self, req: QueryRequest) -> dict[str, Any]:
        if req.shard_key is not None:
            raise Unsupported("shard_key is not supported by prism's Qdrant API yet")
        with_payload = req.with_payload or False
        check_selector(with_payload)
        limit, offset = req.limit or DEFAULT_LIMIT, req.offset or 0
        top = await self.node(req, [], "query", limit + offset)
        spaces = vector_spaces(self.cfg, req.with_vector)
        if top.kind == "nearest":  # one prism query, payloads and vectors with it
            hits = await self._search(top, limit, offset, payload=bool(with_payload), spaces=spaces)
            kept = {i for i, _ in _kept([(h.id, qdrant_score(h.score, top.metric)) for h in hits], top.threshold,
                                        top.metric)}
            return {"points": [record(self.cfg, h.id, h.payload, h.vectors, with_payload, req.with_vector,
                                      qdrant_score(h.score, top.metric)) for h in hits if h.id in kept]}
        want = (bool(with_payload), spaces)
        self.carry = want if top.kind in ("rrf", "dbsf") else (False, [])
        lists = await self._leaf_lists() if self.leaves else []
        self.carry = want
        page = (await self._eval(top, limit + offset, lists, top=True))[offset:]
        rows = {i: self.rows[i] for i, _ in page if i in self.rows} if any(want) else {}
        missing = [i for i, _ in page if i not in rows or spaces and getattr(rows[i], "vectors", None) is None] \
            if any(want) else []
        if missing:  # payloads that did not come with the search (too many candidates to ship), vectors
            got = await self.service.retrieve(self.name, {"ids": missing, "with_payload": True,
                                                          "with_vectors": spaces or False})
            rows.update((r.id, r) for r in got.points)
        return {"points": [record(self.cfg, i, getattr(rows.get(i), "payload", None),
                                  getattr(rows.get(i), "vectors", None), with_payload, req.with_vector, s)
                           for i, s in page]}


async def query(service: Any, name: str, body: Any) -> dict[str, Any]:
    return await Query(service, name).run(parse(QueryRequest, body, "query"))


def check_batch_size(service: Any, n: int) -> None:
    """prism's own batch limit holds here too (before any token of the key's read rate is taken for it)."""
    most = service.config.limits.max_batch_queries
    if n > most:
        raise OutOfRange(f"searches: {n} queries exceed this cluster's limit of {most} (limits.max_batch_queries)")


async def query_batch(service: Any, name: str, body: Any) -> list[dict[str, Any]]:
    req = parse(QueryRequestBatch, body, "query batch")
    check_batch_size(service, len(req.searches))
    return list(await asyncio.gather(*(Query(service, name).run(q) for q in req.searches)))
