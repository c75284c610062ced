"""The steps of a query that `Coordinator.query` runs in order and that talk to the shards or shape the answer:
route (a search spec per prefetch), fan out (every search on every shard, within the budget), stages (fetch what
they need, then run them: router.ranking.stages), hydrate (the page's payloads and vectors) and the answer.
Each takes what it works on as arguments (the shards, a by-id fetch): no coordinator here.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.errors import ShardUnavailable
from router.collection.timing import LapTimer
from router.filters.plan import FilterPlan, inline_payload
from router.ranking.stages import Group, run_stages
from router.replication.replicas import ReplicatedShard
from router.schema.common import select_payload
from router.schema.query import Coverage, Hit, HitGroup, QueryRequest, QueryResponse, ShardFailure, StageExplanation
from shards.api import ScoredId, SearchSpec, StoredPoint

# fetch(ids, spaces) -> (stored points by id; {shard that did not answer: its error})  (Coordinator.fetch)
Fetch = Callable[..., Awaitable[tuple[dict[str, StoredPoint], dict[int, ShardUnavailable]]]]


@dataclass(frozen=True)
class Prefetched:
    """Each prefetch's global top list, unfused, and how they were found (what a query answer reports)."""

    lists: list[list[ScoredId]]
    coverage: Coverage
    plans: list[str]  # per prefetch: none | pushdown | prefilter | postfilter | lexical
    rounds: int
    notes: list[str]
    ran: dict[str, dict[str, Any]]  # the search params a budget chose, per space and shard


@dataclass(frozen=True)
class Ranked:
    """The fused candidates after the stages: the page's candidates and what explain and the answer need."""

    pool: list[ScoredId]
    groups: list[Group] | None
    base: dict[str, float]  # each candidate's fused score, before any stage
    trail: dict[str, list[StageExplanation]]  # per candidate, its score before and after every stage
    known: dict[str, dict[str, Any]]  # payloads that came with the search or were fetched for the stages
    notes: list[str]

    def page(self, req: QueryRequest) -> list[ScoredId]:
        if self.groups is None:
            return self.pool[req.offset : req.offset + req.limit]
        return [h for g in self.groups for h in g.hits]


def route(req: QueryRequest, dense: list[int], plans: dict[int, FilterPlan], vectors: dict[int, Any], shards: int,
          inline_payload_max: int) -> dict[int, SearchSpec]:
    """Each dense prefetch's search: space, vector, limit, its filter's shard expression; payloads inline with the
    hits when few enough come back (router.filters.plan.inline_payload) and no post-filter round re-searches."""
    limits = [req.prefetch_limit(p) for p in req.prefetch]
    payload, spaces = req.returns()
    inline = payload and not spaces and inline_payload([limits[i] for i in dense], shards, inline_payload_max)
    return {i: SearchSpec(req.prefetch[i].space, vectors[i], limits[i], plans[i].expr, req.prefetch[i].params,
                          req.consistency, inline and plans[i].kind != "postfilter") for i in dense}


async def fan_out(shards: Sequence[ReplicatedShard], index_types: dict[str, str], deadline: float | None,
                  ran: dict | None, visit: Sequence[int], depth: dict[str, int], specs: list[SearchSpec]
                  ) -> tuple[list[list[list[ScoredId]]], dict[int, ShardUnavailable]]:
    """Every search on each shard of `visit` (shard ids), one call per shard, each given what is left of the
    budget; per search, the answering shards' lists, and each failed shard's error. `ran` records what a budget
    (or a routed space's `depth`, router.filters.plan.routed_depth) chose, where."""
    left = None if deadline is None else max(deadline - time.perf_counter(), 0.001)
    per_shard = {s: shards[s].within(specs, left, index_types, depth) for s in visit}
    answers = await asyncio.gather(*(shards[s].search(per_shard[s], left) for s in visit), return_exceptions=True)
    for j, spec in enumerate(specs if ran is not None else ()):  # what ran where when the budget chose it
        for shard, s in per_shard.items():
            if s[j] is not spec:
                ran.setdefault(spec.space, {})[str(shard)] = s[j].params
    lists: list[list[list[ScoredId]]] = [[] for _ in specs]
    answered, failed = split_answers(visit, answers)
    for answer in answered.values():
        for j, hits in enumerate(answer):
            lists[j].append(hits)
    return lists, failed


def split_answers(shards: Sequence[int], answers: Sequence[Any]) -> tuple[dict[int, Any], dict[int, ShardUnavailable]]:
    """gather(..., return_exceptions=True)'s answers by shard: those that answered, and those that could not
    (ShardUnavailable); any other exception is raised."""
    answered, failed = {}, {}
    for shard, answer in zip(shards, answers):
        if isinstance(answer, ShardUnavailable):
            failed[shard] = answer
        elif isinstance(answer, BaseException):
            raise answer
        else:
            answered[shard] = answer
    return answered, failed


def prefetched(req: QueryRequest, shards: int, visit: Sequence[int], merged: list[list[ScoredId]],
               failed: dict[int, ShardUnavailable], plans: dict[int, FilterPlan], rounds: int, notes: list[str],
               ran: dict) -> Prefetched:
    """The merged lists with their coverage: `shards` in all, `visit` visited (a 503 when the request asked for
    more of them than answered)."""
    failures = [ShardFailure(shard=s, reason=e.cause, message=e.message) for s, e in sorted(failed.items())]
    answered = req.check_coverage(len(visit), failures)
    kinds = [plans[i].kind if i in plans else "lexical" for i in range(len(req.prefetch))]
    return Prefetched(merged, Coverage(shards_total=shards, shards_answered=answered, failed=failures,
                                       routed=sorted(visit)), kinds, rounds, notes, ran)


async def stages(fused: list[ScoredId], req: QueryRequest, known: dict[str, dict[str, Any]], fetch: Fetch) -> Ranked:
    """The stages over the fused candidates, on the GLOBAL candidates (never per shard): payloads (formula,
    group_by) and each MMR stage's vectors fetched for the candidates only, then router.ranking.stages runs them."""
    base = {h.id: h.score for h in fused}
    if not req.stages:
        return Ranked(fused, None, base, {}, known, [])
    pool, notes = list(fused), []
    if any(st.formula or st.group_by for st in req.stages):
        missing = [h.id for h in pool if h.id not in known]
        rows, failed = await fetch(missing) if missing else ({}, {})
        notes += [f"stages: payloads of shard {s} unavailable ({e.message}); its candidates were not boosted "
                  "or grouped" for s, e in sorted(failed.items())]
        payloads = {**known, **{i: r.payload for i, r in rows.items()}}
        pool = [ScoredId(h.id, h.score, payloads.get(h.id)) for h in pool]
    vectors: list[dict[str, Any] | None] = []  # per stage: an MMR stage's vectors by id
    for st in req.stages:
        if not st.mmr:
            vectors.append(None)
            continue
        rows, failed = await fetch([h.id for h in pool], [st.mmr.space])
        notes += [f"stages: vectors of shard {s} unavailable ({e.message}); its candidates kept their "
                  "order after the others in MMR" for s, e in sorted(failed.items())]
        vectors.append({i: r.vectors[st.mmr.space] for i, r in rows.items() if st.mmr.space in r.vectors})
    pool, groups, trail = run_stages(pool, req.stages, vectors)
    return Ranked(pool, groups, base, trail, {**known, **{h.id: h.payload for h in pool if h.payload is not None}},
                  notes)


async def hydrate(page: list[ScoredId], req: QueryRequest, known: dict[str, dict[str, Any]], all_spaces: list[str],
                  fetch: Fetch) -> tuple[list[Hit], list[str]]:
    """Payloads and vectors of the page's hits: those not `known` (returned with the search) from the shards."""
    want_payload, spaces = req.returns()
    spaces = all_spaces if spaces is True else spaces
    if not page or (not want_payload and not spaces):
        return [Hit(id=h.id, score=h.score) for h in page], []
    rows: dict[str, StoredPoint] = {} if spaces else {i: StoredPoint(payload=p) for i, p in known.items()}
    fetched, failed = await fetch([h.id for h in page if h.id not in rows], spaces)
    rows.update(fetched)
    hits = []
    for h in page:
        row = rows.get(h.id)
        payload = select_payload(row.payload, req.with_payload) if (row and want_payload) else None
        vectors = row.vectors if (row and spaces) else None
        hits.append(Hit(id=h.id, score=h.score, payload=payload, vectors=vectors))
    return hits, [f"payloads of shard {s} unavailable: {e.message}" for s, e in sorted(failed.items())]


def answer(req: QueryRequest, hits: list[Hit], got: Prefetched, ranked: Ranked, hydrate_notes: list[str],
           laps: LapTimer) -> QueryResponse:
    """The response: the hits (in their groups when grouped), coverage, plans, timings and every note."""
    by_id = {h.id: h for h in hits}
    return QueryResponse(
        hits=hits,
        groups=None if ranked.groups is None else [HitGroup(value=g.value, hits=[by_id[h.id] for h in g.hits])
                                                   for g in ranked.groups],
        coverage=got.coverage, partial=bool(got.coverage.failed), took_ms=laps.total_ms(),
        timings_ms=laps.ms if req.debug else None, search_params=got.ran or None, filter_rounds=got.rounds,
        filter_plans=got.plans,
        notes=got.notes + ranked.notes + hydrate_notes + ([req.window_note()] if req.window_note() else []),
    )
