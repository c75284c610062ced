"""The coordinator: one collection's read and write paths over its replicated shards. Plain class, no Ray import.

Reads: validate -> plan filters -> embed -> fan out (every search on every shard) -> heap-merge each space's shard
lists into its global top-k -> fuse -> hydrate the page (unless payloads came with the search). Writes: validate,
embed -> ring -> shard.
Replication lives in `router.replication.replicas`, embedding in `router.encoding.vectors`, filter execution in `router.metadata.filtering`.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any

from cluster.collection_spec import METADATA_TYPES, CollectionConfig
from cluster.config import FilterSettings, ImageLimits
from cluster.errors import ConfigError, InvalidRequest, ShardUnavailable
from cluster.ring import HashRing
from router.metadata.filtering import NOTHING, Filtering
from router.filters.dsl import normalise_meta
from router.filters.mapping import FIELD_RE, infer_fields
from router.ranking.fusion import fuse
from router.collection.locks import KeyedLocks
from router.ranking.merge import merge_topk
from router.schema.collections import VerifyResponse
from router.schema.common import select_payload
from router.schema.points import DeleteResponse, Point, UpsertResponse
from router.schema.query import Coverage, Hit, HitGroup, QueryRequest, QueryResponse, ShardFailure, StageExplanation
from router.filters.plan import INLINE_PAYLOAD_MAX, SCAN_PAGE, inline_payload
from router.ranking.stages import Boost, Group, check_stages, explain, formula, group_by, mmr
from router.replication.replicas import DEFAULT_TIMEOUT_S, ReplicatedShard, replicate
from router.collection.timing import Stages
from router.encoding.vectors import Encode, EncodeImages, Vectors, merge_updates
from router.collection.verify import verify_collection
from shards.api import ScoredId, SearchSpec, ShardApi, StoredPoint


@dataclass(frozen=True)
class Prefetched:
    """Each prefetch's global top list, unfused, and how they were found (what a query answer reports)."""

    lists: list[list[ScoredId]]
    coverage: Coverage
    plans: list[str]  # per prefetch: none | pushdown | prefilter | postfilter | lexical
    rounds: int
    notes: list[str]
    ran: dict[str, dict[str, Any]]  # the search params a budget chose, per space and shard


class Coordinator:
    """Fan-out, heap merge, fusion and hydration for reads; ring routing to the owning shard for writes."""

    def __init__(self, config: CollectionConfig, shards: Sequence[ReplicatedShard], *, encode: Encode | None = None,
                 encode_images: EncodeImages | None = None, images: ImageLimits | None = None,
                 metadata: Any | None = None, filters: FilterSettings | None = None,
                 observe_stage: Callable[[str, float], None] | None = None, budget_ms: int | None = None,
                 inline_payload_max: int = INLINE_PAYLOAD_MAX):
        if len(shards) != config.shards:
            raise ConfigError(f"{len(shards)} shards given for a collection of {config.shards}", field="shards")
        self.config = config
        self.shards = list(shards)
        self.ring = HashRing(range(config.shards))
        self.vectors = Vectors(config, encode=encode, encode_images=encode_images, images=images)
        self.filtering = Filtering(config, metadata, filters)
        self.paused: str | None = None  # set while the collection is resharded: writes are refused meanwhile
        # Cache keys carry both: a new coordinator never sees an old entry; no cached answer outlives a write.
        self.epoch, self.version = uuid.uuid4().hex, 0
        self.observe_stage, self.budget_ms, self.inline_payload_max = observe_stage, budget_ms, inline_payload_max
        self._index_types = {name: s.index.type for name, s in config.spaces.items()}
        # Called with the fields dynamic mapping added (the service persists the collection's config).
        self.on_mapping: Callable[[dict[str, str]], None] | None = None
        self._mapping_lock = asyncio.Lock()
        # A partial vector update reads a point and writes it back: no other write of this process to that point
        # may land in between (it would be undone). Several ingress replicas: see docs/operations.md.
        self._points = KeyedLocks()
        # Called before writes reach the shards (the service: is this layout still current, has another ingress
        # paused writes?); raises to refuse the write.
        self.before_write: Callable[[], None] | None = None

    @classmethod
    def from_clients(cls, config: CollectionConfig, clients: Sequence[Sequence[ShardApi]], *,
                     timeout_s: float = DEFAULT_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
                     observe: Callable[[int, float], None] | None = None, batching: Any = None,
                     hedge: bool = True, sequencers: Sequence[Any] | None = None, poll_sequencer: bool = True,
                     **kw: Any) -> "Coordinator":
        """A coordinator over fresh replica sets: `clients[s]` are shard s's replicas; `sequencers[s]`, if given,
        orders shard s's writes (router.replication.sequencer) instead of this coordinator."""
        return cls(config, replicate(config, clients, timeout_s=timeout_s, clock=clock, observe=observe,
                                     batching=batching, hedge=hedge, sequencers=sequencers,
                                     poll_sequencer=poll_sequencer), **kw)

    def resized(self, config: CollectionConfig, shards: Sequence[ReplicatedShard]) -> "Coordinator":
        """The same collection over another shard layout, with this one's encoders, images and filters."""
        return Coordinator(config, shards, encode=self.vectors.encode, encode_images=self.vectors.encode_images,
                           images=self.vectors.images, metadata=self.filtering.metadata,
                           filters=self.filtering.settings, observe_stage=self.observe_stage,
                           budget_ms=self.budget_ms, inline_payload_max=self.inline_payload_max)

    def shard_of(self, point_id: str) -> int:
        return int(self.ring.get(point_id))

    def _by_shard(self, items: Sequence[Any], key: Callable[[Any], str] = str) -> dict[int, list]:
        out: dict[int, list] = defaultdict(list)
        for item in items:
            out[self.shard_of(key(item))].append(item)
        return out

    # -- reads -------------------------------------------------------------------------------------------------
    async def query(self, req: QueryRequest) -> QueryResponse:
        clock = Stages(self.observe_stage)
        got = await self._prefetch(req, clock)
        merged = got.lists
        # Fusion runs on each space's GLOBAL top-k, so the answer never depends on the shard count.
        fused = fuse(req.fusion.method, merged, k=req.fusion.k, weights=req.fusion.weights,
                     limit=req.candidates() or req.window())
        known = {h.id: h.payload for lst in merged for h in lst if h.payload is not None}
        groups, trail, stage_notes = None, {}, []
        base = {h.id: h.score for h in fused}
        if req.stages:  # on the global candidates too: never per shard
            fused, groups, trail, stage_notes = await self._stages(fused, req, known)
            known.update({h.id: h.payload for h in fused if h.payload is not None})
        page = fused[req.offset : req.offset + req.limit] if groups is None else [h for g in groups for h in g.hits]
        clock.lap("merge_fuse")
        hits, hydrate_notes = await self._hydrate(page, req, known)
        clock.lap("hydrate")
        if req.explain:
            hits = explain(hits, req, merged, base, trail)
        by_id = {h.id: h for h in hits}
        return QueryResponse(
            hits=hits,
            groups=None if groups is None else [HitGroup(value=g.value, hits=[by_id[h.id] for h in g.hits])
                                                for g in groups],
            coverage=got.coverage, partial=bool(got.coverage.failed), took_ms=clock.total_ms(),
            timings_ms=clock.laps if req.debug else None, search_params=got.ran or None, filter_rounds=got.rounds,
            filter_plans=got.plans,
            notes=got.notes + stage_notes + hydrate_notes + ([req.window_note()] if req.window_note() else []),
        )

    async def prefetch(self, req: QueryRequest) -> Prefetched:
        """Each prefetch's own global top list, unfused: for callers that fuse them themselves (router.serving.qdrant)."""
        return await self._prefetch(req, Stages(self.observe_stage))

    async def _prefetch(self, req: QueryRequest, clock: Stages) -> Prefetched:
        """Plan, embed, fan out, merge: each prefetch's global top list (payloads with it when they came inline)."""
        budget_ms = req.budget_ms or self.budget_ms
        deadline = clock.t0 + budget_ms / 1000 if budget_ms else None
        ran: dict[str, dict[str, Any]] = {}
        check_stages(req, self.config)
        # Lexical (bm25) prefetches are answered by Elasticsearch; the rest (dense) by the shards.
        lexical = self.filtering.lexical_prefetches(req)
        dense = [i for i in range(len(req.prefetch)) if i not in lexical]
        sub = req if not lexical else req.model_copy(update={"prefetch": [req.prefetch[i] for i in dense]})
        self.vectors.validate_query(sub)
        plans = dict(zip(dense, await self.filtering.plan(sub)))
        clock.lap("plan")
        vecs, notes = await self.vectors.query_vectors(sub) if dense else ([], [])
        vectors = dict(zip(dense, vecs))
        clock.lap("embed")
        limits = [req.prefetch_limit(p) for p in req.prefetch]
        payload, spaces = req.returns()
        inline = payload and not spaces and inline_payload([limits[i] for i in dense], self.config.shards,
                                                           self.inline_payload_max)
        specs = {i: SearchSpec(req.prefetch[i].space, vectors[i], limits[i], plans[i].expr, req.prefetch[i].params,
                               req.consistency, inline and plans[i].kind != "postfilter") for i in dense}
        merged, failed = [[] for _ in req.prefetch], {}  # per prefetch: its global top-k; shard -> its error
        direct = [i for i in dense if plans[i].kind != "postfilter" and plans[i].expr != NOTHING]
        if direct:
            lists, fails = await self._fan_out([specs[i] for i in direct], deadline, ran)
            failed.update(fails)
            for j, i in enumerate(direct):
                merged[i] = merge_topk(lists[j], specs[i].limit)
        rounds = 0
        for i in dense:
            if plans[i].kind == "postfilter":
                merged[i], r, fails = await self.filtering.postfilter(specs[i], plans[i],
                                                                      lambda s: self._fan_out(s, deadline, ran))
                rounds = max(rounds, r)
                failed.update(fails)
        for i, space in lexical.items():
            merged[i] = await self.filtering.lexical(space, req, i, limits[i], payload and not spaces)
        clock.lap("fan_out")
        failures = [ShardFailure(shard=s, reason=e.cause, message=e.message) for s, e in sorted(failed.items())]
        answered = req.check_coverage(self.config.shards, failures)
        return Prefetched(merged, Coverage(shards_total=self.config.shards, shards_answered=answered, failed=failures),
                          [plans[i].kind if i in plans else "lexical" for i in range(len(req.prefetch))], rounds,
                          notes, ran)

    async def _stages(self, fused: list[ScoredId], req: QueryRequest, known: dict[str, dict[str, Any]]
                      ) -> tuple[list[ScoredId], list[Group] | None, dict[str, list[StageExplanation]], list[str]]:
        """The stages in order over the fused candidates (payloads and vectors fetched for them only); beside
        them, each id's score before and after every stage, and notes on what could not be fetched."""
        pool, notes = list(fused), []
        if any(st.formula or st.group_by for st in req.stages):
            missing = [h.id for h in pool if h.id not in known]
            rows, failed = await self.fetch(missing) if missing else ({}, {})
            notes += [f"stages: payloads of shard {s} unavailable ({e.message}); its candidates were not boosted "
                      "or grouped" for s, e in sorted(failed.items())]
            payloads = {**known, **{i: r.payload for i, r in rows.items()}}
            pool = [ScoredId(h.id, h.score, payloads.get(h.id)) for h in pool]
        groups = None
        trail: dict[str, list[StageExplanation]] = {}
        for st in req.stages:
            before = {h.id: h.score for h in pool}
            if st.formula:
                pool = formula(pool, [Boost(b.field, b.equals, b.add, b.decay, b.origin, b.scale, b.offset,
                                            b.decay_at, b.multiply) for b in st.formula.boost])
            elif st.mmr:
                rows, failed = await self.fetch([h.id for h in pool], [st.mmr.space])
                notes += [f"stages: vectors of shard {s} unavailable ({e.message}); its candidates kept their "
                          "order after the others in MMR" for s, e in sorted(failed.items())]
                vectors = {i: r.vectors[st.mmr.space] for i, r in rows.items() if st.mmr.space in r.vectors}
                pool = mmr(pool, vectors, st.mmr.lambda_)
            else:
                groups = group_by(pool, st.group_by.field, st.group_by.size, st.group_by.groups)
            for h in pool:
                trail.setdefault(h.id, []).append(StageExplanation(stage=st.kind, before=before[h.id], after=h.score))
        return pool, groups, trail, notes

    async def _fan_out(self, specs: list[SearchSpec], deadline: float | None = None, ran: dict | None = None
                       ) -> tuple[list[list[list[ScoredId]]], dict[int, ShardUnavailable]]:
        """Every search on every shard, one call per shard, each given what is left of the budget; per search,
        the answering shards' lists, and each failed shard's error."""
        left = None if deadline is None else max(deadline - time.perf_counter(), 0.001)
        per_shard = [sh.within(specs, left, self._index_types) for sh in self.shards]
        answers = await asyncio.gather(*(sh.search(s, left) for sh, s in zip(self.shards, per_shard)),
                                       return_exceptions=True)
        for j, spec in enumerate(specs if ran is not None else ()):  # what ran where when the budget chose it
            for shard, s in enumerate(per_shard):
                if s[j] is not spec:
                    ran.setdefault(spec.space, {})[str(shard)] = s[j].params
        lists: list[list[list[ScoredId]]] = [[] for _ in specs]
        failed: dict[int, ShardUnavailable] = {}
        for shard, answer in enumerate(answers):
            if isinstance(answer, ShardUnavailable):
                failed[shard] = answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                for j, hits in enumerate(answer):
                    lists[j].append(hits)
        return lists, failed

    async def _hydrate(self, page: list[ScoredId], req: QueryRequest, known: dict[str, dict[str, Any]]
                       ) -> tuple[list[Hit], list[str]]:
        """Payloads and vectors of the page's hits: those not `known` (returned with the search) from the shards."""
        want_payload, spaces = req.returns()
        spaces = list(self.config.spaces) if spaces is True else spaces
        if not page or (not want_payload and not spaces):
            return [Hit(id=h.id, score=h.score) for h in page], []
        rows: dict[str, StoredPoint] = {} if spaces else {i: StoredPoint(payload=p) for i, p in known.items()}
        fetched, failed = await self.fetch([h.id for h in page if h.id not in rows], spaces)
        rows.update(fetched)
        hits = []
        for h in page:
            row = rows.get(h.id)
            payload = select_payload(row.payload, req.with_payload) if (row and want_payload) else None
            vectors = row.vectors if (row and spaces) else None
            hits.append(Hit(id=h.id, score=h.score, payload=payload, vectors=vectors))
        return hits, [f"payloads of shard {s} unavailable: {e.message}" for s, e in sorted(failed.items())]

    async def fetch(self, ids: Sequence[str], spaces: Sequence[str] = ()
                    ) -> tuple[dict[str, StoredPoint], dict[int, ShardUnavailable]]:
        """Stored points (payload, the named spaces' vectors) by id; shards that could not answer, beside them."""
        by_shard = self._by_shard(list(dict.fromkeys(ids)))
        reads = [self.shards[s].read(lambda c, ids=b: c.get(ids, list(spaces))) for s, b in by_shard.items()]
        answers = await asyncio.gather(*reads, return_exceptions=True)
        rows, failed = {}, {}  # id -> StoredPoint; shard -> ShardUnavailable (an id no shard holds is absent)
        for shard, answer in zip(by_shard, answers):
            if isinstance(answer, ShardUnavailable):
                failed[shard] = answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                rows.update(answer)
        return rows, failed

    async def scan(self, after: str, limit: int, dsl: dict[str, Any] | None = None) -> list[str]:
        """The first `limit` matching ids above `after`, over every shard, in id order (a keyset page: each shard's
        smallest ids, merged; parts of the filter Milvus cannot run are confirmed in Elasticsearch, widening the
        fetch until the page fills). A shard that cannot answer is a 503: a page with a gap would skip points."""
        return (await self.scan_page(after, limit, dsl))[0]

    async def scan_page(self, after: str, limit: int, dsl: dict[str, Any] | None = None,
                        max_examined: int | None = None) -> tuple[list[str], str | None]:
        """`scan`, examining at most `max_examined` ids when Elasticsearch must confirm the filter: (the page, the
        last id examined when the bound cut the page short, else None). A filter nothing matches then costs a
        request at most `max_examined` ids, not the whole collection."""
        expr, residual = self.filtering.split(dsl)
        fetch = limit if residual is None else limit * self.filtering.settings.postfilter_overfetch
        if residual is not None and max_examined is not None:
            fetch = min(fetch, max_examined)
        page: list[str] = []
        examined = 0
        while len(page) < limit:
            answers = await asyncio.gather(*(sh.read(lambda c, a=after: c.scan(a, fetch, expr)) for sh in self.shards))
            union = sorted(set().union(*answers))
            merged = union[:fetch]  # every id up to merged[-1] is here: each shard gave its smallest
            if not merged:
                break
            keep = merged if residual is None else await self.filtering.confirm(residual, merged)
            page.extend(i for i in merged if i in keep)
            examined += len(merged)
            if len(union) == len(merged) and all(len(a) < fetch for a in answers):
                break  # nothing left above merged[-1] on any shard
            after = merged[-1]
            if residual is not None and max_examined is not None and examined >= max_examined and len(page) < limit:
                return page, after
        return page[:limit], None

    async def count(self, dsl: dict[str, Any] | None = None) -> int:
        """Points matching `dsl` (all points without one): Elasticsearch counts when it is configured (it holds
        one document per point); without it the shards page through their matching ids."""
        if self.filtering.metadata is not None:
            return await self.filtering.count(dsl)
        total, after = 0, ""
        while True:
            ids = await self.scan(after, SCAN_PAGE, dsl)
            total += len(ids)
            if len(ids) < SCAN_PAGE:
                return total
            after = ids[-1]

    async def verify(self, sample: int = 100, list_extra_up_to: int = 10_000) -> VerifyResponse:
        """Shards vs Elasticsearch, and every shard's replicas with each other (router.collection.verify)."""
        return await verify_collection(self, sample, list_extra_up_to)

    # -- writes ------------------------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.before_write is not None:
            self.before_write()
        if self.paused:
            raise ShardUnavailable(f"writes to {self.config.name!r} are paused: {self.paused}; retry shortly",
                                   shards=list(range(self.config.shards)))

    async def upsert(self, points: Sequence[Point], wait: bool = True) -> UpsertResponse:
        """Validate the whole batch (nothing is written on bad input), embed, index in Elasticsearch, write the
        shards by ring. `wait`: return once every acknowledging replica serves the points to searches (and
        Elasticsearch to filters); else at acknowledgement, visible within the backend's staleness bound."""
        async with self._points.hold(p.id for p in points):
            return await self._upsert(points, wait)

    async def _upsert(self, points: Sequence[Point], wait: bool) -> UpsertResponse:
        self._writable()
        if infer_fields((p.payload for p in points), self.config.metadata):
            await self._map_new_fields(points)
        rows, notes, failed = await self.vectors.prepare_points(points)
        self._writable()  # again: embedding takes time, and another ingress may have paused writes meanwhile
        await self.filtering.write_through(rows, wait, lambda: self._write(  # Elasticsearch first, then the shards
            self.shards[s].upsert(batch, wait) for s, batch in self._by_shard(rows, lambda r: r.id).items()),
            self.fetch)
        return UpsertResponse(upserted=len(rows), notes=notes, failed=failed, visible=wait)

    async def _map_new_fields(self, points: Sequence[Point]) -> None:
        """Dynamic mapping: map the fields these points bring first, once every payload of the batch fits the
        extended mapping; else a 422 naming the field, and nothing is mapped or written."""
        async with self._mapping_lock:  # two batches showing the same new field map it once
            new = infer_fields((p.payload for p in points), self.config.metadata)
            if not new:
                return
            extended = {**self.config.metadata, **new}
            for i, p in enumerate(points):
                normalise_meta(p.payload, extended, f"points[{i}].payload")
            await self._extend_mapping(new)

    async def map_fields(self, fields: dict[str, str]) -> dict[str, str]:
        """Map payload fields before any point brings them (a Qdrant payload index); a field mapped already keeps
        its type. Returns these fields' types as they stand."""
        for field, kind in fields.items():
            if not FIELD_RE.match(field) or kind not in METADATA_TYPES:
                raise InvalidRequest(f"field {field!r} ({kind!r}): names are letters, digits, '_' and '-' (at most "
                                     f"64), types one of {sorted(METADATA_TYPES)}", field="field_name")
        async with self._mapping_lock:
            new = {f: k for f, k in fields.items() if f not in self.config.metadata}
            if new:
                await self._extend_mapping(new)
        return {f: self.config.metadata[f] for f in fields}

    async def _extend_mapping(self, new: dict[str, str]) -> None:
        """Elasticsearch first (it may refuse), then the config everyone here reads, then the catalog."""
        await self.filtering.extend_mapping(new)
        self.config.metadata.update(new)
        if self.on_mapping is not None:
            self.on_mapping(new)

    async def update_vectors(self, updates: Sequence[Any], wait: bool = True) -> UpsertResponse:
        """Replace some spaces' vectors of existing points (a re-shot photo); the others are kept as stored. The
        read and the write back hold the points' locks: a concurrent update of another space is not undone."""
        async with self._points.hold(u.id for u in updates):
            stored = {row.id: row for shard, ids in self._by_shard([u.id for u in updates]).items()
                      for row in await self.shards[shard].read(lambda c, ids=ids: c.export(ids))}
            points, missing = merge_updates(self.config, updates, stored)
            if not points:
                return UpsertResponse(upserted=0, failed=missing)
            res = await self._upsert(points, wait)
        return res.model_copy(update={"failed": missing + res.failed})

    async def delete(self, ids: Sequence[str], wait: bool = True) -> DeleteResponse:
        unique = list(dict.fromkeys(ids))
        async with self._points.hold(unique):  # a vector update in flight must not write a deleted point back
            return await self._delete(unique, wait)

    async def _delete(self, unique: list[str], wait: bool) -> DeleteResponse:
        self._writable()
        results = await self.filtering.delete_through(unique, wait, lambda: self._write(  # Elasticsearch first
            self.shards[s].delete(batch, wait) for s, batch in self._by_shard(unique).items()), self.fetch)
        return DeleteResponse(deleted=sum(max(r) for r in results), visible=wait)

    async def _write(self, calls: Any) -> list:
        """One request's shard writes, the version bumped around them (no answer cached meanwhile is kept); all
        have ended before the first failure is raised."""
        self.version += 1
        try:
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            self.version += 1
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    async def delete_by_filter(self, dsl: dict[str, Any]) -> DeleteResponse:
        """Delete every point matching an ES DSL filter (ids from Elasticsearch, in pages; always waited for)."""
        deleted = await self.filtering.delete_matching(dsl, lambda ids: self.delete(ids, True))
        return DeleteResponse(deleted=deleted, visible=True)

    # -- status ------------------------------------------------------------------------------------------------
    def replica_states(self) -> list[list[dict]]:
        return [sh.replica_report() for sh in self.shards]

    async def counts(self) -> list[list[dict[str, int] | None]]:
        """Point count per space for every shard replica (None where a replica did not answer)."""
        return list(await asyncio.gather(*(sh.counts() for sh in self.shards)))

    async def heal(self) -> dict[str, int]:
        """Probe dead replicas and replay missed writes on every shard."""
        done = await asyncio.gather(*(sh.heal() for sh in self.shards))
        return {"healed": sum(h for h, _ in done), "failed": sum(f for _, f in done)}

