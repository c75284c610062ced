"""The coordinator: one collection's read and write paths over its shards. Plain class, no Ray import.

Shard replicas are reached through `ShardClient`s (in-process threads or Ray actors); both answer identically,
so the coordinator's answer does not depend on which is used.
"""
from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from cluster.config import CollectionConfig, FilterSettings, ImageLimits
from cluster.errors import (
    BackendError, InvalidRequest, MetadataUnavailable, ModelUnavailable, PrismError, ShardUnavailable, SpaceNotFound,
)
from router.expr import ids_in
from router.filters import and_, normalise_meta, parse_filter, to_es
from router.images import decode_base64, decode_image, is_inline, load_reference
from router.plan import FilterPlan, choose_es_path, first_fetch, next_fetch, plan_filter
from router.replicas import ReplicaSet, quorum
from cluster.ring import HashRing
from router.fusion import fuse
from router.merge import merge_topk
from router.models import (
    Coverage, DeleteResponse, Hit, PayloadExclude, Point, PointError, QueryRequest, QueryResponse, ScoredId,
    ShardFailure, UpsertResponse,
)

# encode(encoder_name, texts, document=False) -> one (vector, truncated) per text (documents: chunked, averaged);
# encode_images(encoder_name, PIL images)
Encode = Callable[[str, list[str]], Awaitable[list[tuple[list[float], bool]]]]
EncodeImages = Callable[[str, list[Any]], Awaitable[list[tuple[list[float], bool]]]]
Observe = Callable[[int, float], None]
DEFAULT_TIMEOUT_S = 10.0
# Elasticsearch returns at most index.max_result_window (10,000 by default) hits per search, noida-db the same:
# a larger id set cannot be fetched in one request, so it is post-filtered instead (measured: a forced
# pre-filter of 20,185 ids failed with "Result window is too large").
PREFILTER_HARD_MAX_IDS = 10_000
OPLOG_MAX_OPS = 20_000   # per shard; a replica further behind than this needs a full resync (not automatic)
HEAL_PING_TIMEOUT_S = 2.0
_NOTHING = "(false)"  # a pre-filter whose id set is empty: nothing to search
# Errors that describe the request, not the shard: they propagate instead of triggering failover.
_REQUEST_ERRORS = (InvalidRequest, SpaceNotFound)


class ShardClient(Protocol):
    shard: int
    replica: int

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


class Coordinator:
    """Fan-out, heap merge, fusion and hydration for reads; ring routing to every replica for writes."""

    def __init__(
        self,
        config: CollectionConfig,
        replicas: Sequence[Sequence[ShardClient]],
        *,
        encode: Encode | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        observe: Observe | None = None,
        metadata: Any | None = None,
        filters: FilterSettings | None = None,
        encode_images: EncodeImages | None = None,
        images: ImageLimits | None = None,
    ):
        if len(replicas) != config.shards:
            raise ValueError(f"{len(replicas)} shard client lists for {config.shards} shards")
        self.config = config
        self.replicas = [list(r) for r in replicas]
        self.encode = encode
        self.timeout_s = timeout_s
        self.observe = observe
        self.metadata = metadata  # router.metadata.MetadataStore, or None: then only pushdown filters work
        self.filters = filters or FilterSettings()
        self.encode_images = encode_images
        self.images = images or ImageLimits()
        self.ring = HashRing(range(config.shards))
        self.sets = [ReplicaSet(s, len(r), key=f"{config.name}/{s}") for s, r in enumerate(self.replicas)]
        self.write_quorum = quorum(config.write_quorum, min(len(r) for r in self.replicas))
        self.oplog: list[deque] = [deque(maxlen=OPLOG_MAX_OPS) for _ in self.replicas]
        self._locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.read_only: str | None = None  # set while the collection is resharded: writes wait for the new layout

    def shard_of(self, point_id: str) -> int:
        return int(self.ring.get(point_id))

    # -- shard calls -------------------------------------------------------------------------------------------
    def _lock(self, shard: int) -> asyncio.Lock:
        """Per shard, per event loop: writes and replays of one shard apply in sequence order."""
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        return locks.setdefault(shard, asyncio.Lock())

    async def _read(self, shard: int, method: str, *args: Any) -> Any:
        """Call the shard's replicas in ring/health order, failing over within this request."""
        rs = self.sets[shard]
        order = rs.read_order()
        if not order:
            raise ShardUnavailable(f"shard {shard} unavailable: no replica has caught up with its writes",
                                   shards=[shard])
        reasons = []
        for r in order:
            client = self.replicas[shard][r]
            t0 = time.perf_counter()
            try:
                result = await asyncio.wait_for(client.call(method, *args), self.timeout_s)
            except _REQUEST_ERRORS:
                raise
            except asyncio.TimeoutError:
                reason = f"replica {r}: no answer within {self.timeout_s:g}s"
                rs.on_failure(r, reason)
            except ShardUnavailable as exc:  # the actor is gone: dead at once
                reason = f"replica {r}: {exc.message}"
                rs.on_failure(r, reason, fatal=True)
            except Exception as exc:  # noqa: BLE001 - any replica fault means: try the next one
                reason = f"replica {r}: {_short(exc)}"
                rs.on_failure(r, reason)
            else:
                elapsed = time.perf_counter() - t0
                rs.on_success(r, elapsed)
                if self.observe is not None and method == "search_many":
                    self.observe(shard, elapsed)
                return result
            reasons.append(reason)
        raise ShardUnavailable(f"shard {shard} unavailable: " + "; ".join(reasons), shards=[shard])

    async def _write(self, shard: int, method: str, *args: Any) -> list[Any]:
        """Sequence the write, send it to every caught-up replica, acknowledge at the write quorum.

        Replicas that miss it (down, failed, or already behind) are stale until `heal` replays the log to them.
        """
        if self.read_only:
            raise ShardUnavailable(f"writes to {self.config.name!r} are paused: {self.read_only}; retry shortly",
                                   shards=[shard])
        async with self._lock(shard):
            rs = self.sets[shard]
            targets = rs.write_targets()
            seq = rs.next_seq()
            self.oplog[shard].append((seq, method, args))
            results = await asyncio.gather(
                *(asyncio.wait_for(self.replicas[shard][r].call(method, *args), self.timeout_s) for r in targets),
                return_exceptions=True,
            )
            acked, errors = [], []
            for r, res in zip(targets, results):
                if isinstance(res, _REQUEST_ERRORS):
                    raise res
                if isinstance(res, BaseException):
                    reason = f"replica {r}: {_short(res)}"
                    rs.on_failure(r, reason, fatal=isinstance(res, ShardUnavailable))
                    errors.append(reason)
                else:
                    rs.applied(r, seq)
                    rs.on_success(r)
                    acked.append(res)
            if len(acked) < self.write_quorum:
                raise ShardUnavailable(
                    f"write to shard {shard} not acknowledged: {len(acked)} of {len(self.replicas[shard])} replicas "
                    f"applied it, quorum is {self.write_quorum}" + (f" ({'; '.join(errors)})" if errors else ""),
                    shards=[shard])
            rs.commit(seq)
            return acked

    async def heal(self) -> dict[str, int]:
        """Probe dead replicas and replay missed writes to stale ones; they serve reads once caught up."""
        healed = failed = 0
        for shard, rs in enumerate(self.sets):
            for r in rs.needs_healing():
                async with self._lock(shard):
                    try:
                        await self._catch_up(shard, r)
                        healed += 1
                    except Exception as exc:  # noqa: BLE001
                        rs.probe_failed(r, f"heal: {_short(exc)}")
                        failed += 1
        return {"healed": healed, "failed": failed}

    async def _catch_up(self, shard: int, r: int) -> None:
        rs, client = self.sets[shard], self.replicas[shard][r]
        await asyncio.wait_for(client.call("ping"), HEAL_PING_TIMEOUT_S)
        start = rs.states[r].applied_seq
        ops = [op for op in self.oplog[shard] if op[0] > start]
        if ops and ops[0][0] != start + 1:
            raise ShardUnavailable(f"replica {r} of shard {shard} is {rs.seq - start} writes behind, beyond the "
                                   f"operation log ({OPLOG_MAX_OPS} ops): it needs a full resync", shards=[shard])
        for seq, method, args in ops:
            await asyncio.wait_for(client.call(method, *args), self.timeout_s)
            rs.applied(r, seq)
        rs.on_success(r)

    # -- reads -------------------------------------------------------------------------------------------------
    async def query(self, req: QueryRequest) -> QueryResponse:
        t0 = time.perf_counter()
        self._validate_query(req)
        plans = await self._plan_filters(req)
        vectors, notes = await self._query_vectors(req)
        merged: list[list[ScoredId]] = [[] for _ in req.prefetch]
        failed: dict[int, str] = {}
        direct = [i for i, pl in enumerate(plans) if pl.kind != "postfilter" and pl.expr != _NOTHING]
        searches = [{"space": req.prefetch[i].space, "vector": vectors[i], "limit": req.prefetch_limit(req.prefetch[i]),
                     "params": req.prefetch[i].params, "expr": plans[i].expr} for i in direct]
        if searches:
            lists, fails = await self._fan_out(searches)
            failed.update(fails)
            for j, i in enumerate(direct):
                merged[i] = merge_topk(lists[j], searches[j]["limit"])
        rounds = 0
        for i, pl in enumerate(plans):
            if pl.kind == "postfilter":
                merged[i], r, fails = await self._postfilter(req, i, vectors[i], pl)
                rounds = max(rounds, r)
                failed.update(fails)
        failures = [ShardFailure(shard=s, reason=r) for s, r in sorted(failed.items())]
        if failures and req.require_complete:
            raise ShardUnavailable("require_complete: " + "; ".join(f.reason for f in failures),
                                   shards=[f.shard for f in failures])
        if len(failures) == self.config.shards:
            raise ShardUnavailable("no shard answered: " + "; ".join(f.reason for f in failures),
                                   shards=[f.shard for f in failures])
        # Fusion runs on each space's GLOBAL top-k, so the answer never depends on the shard count.
        fused = fuse(req.fusion.method, merged, k=req.fusion.k, weights=req.fusion.weights,
                     limit=req.offset + req.limit)
        page = fused[req.offset : req.offset + req.limit]
        hits, hydrate_notes = await self._hydrate(page, req)
        return QueryResponse(
            hits=hits,
            coverage=Coverage(shards_total=self.config.shards, shards_answered=self.config.shards - len(failures),
                              failed=failures),
            partial=bool(failures),
            took_ms=round((time.perf_counter() - t0) * 1000, 3),
            filter_rounds=rounds,
            filter_plans=[pl.kind for pl in plans],
            notes=notes + hydrate_notes,
        )

    async def _fan_out(self, searches: list[dict[str, Any]]) -> tuple[list[list[list[ScoredId]]], dict[int, str]]:
        """Every search on every shard in one call per shard; per search, the answering shards' lists."""
        answers = await asyncio.gather(
            *(self._read(s, "search_many", searches) for s in range(self.config.shards)), return_exceptions=True
        )
        lists: list[list[list[ScoredId]]] = [[] for _ in searches]
        failed: dict[int, str] = {}
        for shard, answer in enumerate(answers):
            if isinstance(answer, ShardUnavailable):
                failed[shard] = answer.message
            elif isinstance(answer, BaseException):
                raise answer
            else:
                for j, hits in enumerate(answer):
                    lists[j].append([ScoredId(h[0], h[1]) for h in hits])
        return lists, failed

    # -- filters -----------------------------------------------------------------------------------------------
    async def _plan_filters(self, req: QueryRequest) -> list[FilterPlan]:
        """Per prefetch: the top-level filter AND its own, planned; ES questions answered here."""
        mapping = self.config.metadata
        top = parse_filter(req.filter, mapping, "filter") if req.filter is not None else None
        mode = self.filters.mode
        plans = []
        for i, p in enumerate(req.prefetch):
            own = parse_filter(p.filter, mapping, f"prefetch[{i}].filter") if p.filter is not None else None
            plan = plan_filter(and_(top, own), mapping, mode)
            if plan.needs_es:
                plan = await self._resolve_es(plan)
            plans.append(plan)
        return plans

    async def _resolve_es(self, plan: FilterPlan) -> FilterPlan:
        """Count the WHOLE filter in Elasticsearch (its true selectivity); pre-filter by its ids when few."""
        if self.metadata is None:
            raise MetadataUnavailable("this filter needs the metadata store (Elasticsearch), which is not configured "
                                      "here; only term/terms/range/exists/ids on mapped fields can run without it")
        query = to_es(plan.node)
        count = await asyncio.to_thread(self.metadata.count, self.config.name, query)
        plan = choose_es_path(plan, count, self.filters.prefilter_max_ids, self.filters.mode)
        if plan.kind != "prefilter":
            return plan
        if count > PREFILTER_HARD_MAX_IDS:
            return FilterPlan("postfilter", plan.expr, plan.residual, plan.node)
        ids = await asyncio.to_thread(self.metadata.ids, self.config.name, query, max(count, 1))
        # The ids already satisfy the whole filter: the allow-list alone goes down.
        return FilterPlan("prefilter", ids_in(ids) if ids else _NOTHING, plan.residual, plan.node)

    async def _postfilter(self, req: QueryRequest, i: int, vector: list[float], plan: FilterPlan
                          ) -> tuple[list[ScoredId], int, dict[int, str]]:
        """Over-fetch, keep ES-confirmed ids, grow the fetch until `need` hits or the candidates run out."""
        p = req.prefetch[i]
        need = req.prefetch_limit(p)
        query = to_es(plan.residual)
        fetch = first_fetch(need, self.filters.postfilter_overfetch)
        kept: list[ScoredId] = []
        failed: dict[int, str] = {}
        rounds = 0
        while True:
            rounds += 1
            lists, fails = await self._fan_out(
                [{"space": p.space, "vector": vector, "limit": fetch, "params": p.params, "expr": plan.expr}])
            failed.update(fails)
            candidates = merge_topk(lists[0], fetch)
            ok = await asyncio.to_thread(self.metadata.confirm, self.config.name, query, [h.id for h in candidates])
            kept = [h for h in candidates if h.id in ok]
            exhausted = all(len(lst) < fetch for lst in lists[0])
            if len(kept) >= need or exhausted or rounds >= self.filters.postfilter_max_rounds:
                break
            bigger = next_fetch(fetch, self.filters.postfilter_overfetch)
            if bigger is None:
                break
            fetch = bigger
        return kept[:need], rounds, failed

    async def query_batch(self, reqs: Sequence[QueryRequest]) -> list[QueryResponse]:
        return list(await asyncio.gather(*(self.query(r) for r in reqs)))

    def _space(self, name: str, field: str):
        space = self.config.spaces.get(name)
        if space is None:
            raise SpaceNotFound(
                f"{field}: unknown space {name!r}; collection {self.config.name!r} has {sorted(self.config.spaces)}",
                field=field,
            )
        return space

    def _check_vector(self, vec: Sequence[float], dim: int, field: str) -> None:
        if len(vec) != dim:
            raise InvalidRequest(f"{field}: expected {dim} dimensions, got {len(vec)}", field=field)
        if not all(math.isfinite(x) for x in vec):
            raise InvalidRequest(f"{field}: vector has NaN or infinite values", field=field)

    def _validate_query(self, req: QueryRequest) -> None:
        for i, p in enumerate(req.prefetch):
            space = self._space(p.space, f"prefetch[{i}].space")
            if p.vector is not None:
                self._check_vector(p.vector, space.dim, f"prefetch[{i}].vector")
            if p.text is not None and not space.encoder:
                raise InvalidRequest(f"prefetch[{i}].text: space {p.space!r} has no encoder; send a vector",
                                     field=f"prefetch[{i}].text")
        if isinstance(req.with_vectors, list):
            for space in req.with_vectors:
                self._space(space, "with_vectors")

    async def _query_vectors(self, req: QueryRequest) -> tuple[list[list[float]], list[str]]:
        out: list[list[float] | None] = [p.vector for p in req.prefetch]
        notes: list[str] = []
        for i, p in enumerate(req.prefetch):
            if p.image is not None:
                space = self.config.spaces[p.space]
                if not space.encoder:
                    raise InvalidRequest(f"prefetch[{i}].image: space {p.space!r} has no encoder; send a vector",
                                         field=f"prefetch[{i}].image")
                field = f"prefetch[{i}].image"
                img = decode_image(decode_base64(p.image, field), field, max_bytes=self.images.max_bytes,
                                   max_pixels=self.images.max_pixels)
                (vec, _), = await self._encode_images(space.encoder, [img], field)
                self._check_vector(vec, space.dim, field)
                out[i] = vec
        texts = [(i, p) for i, p in enumerate(req.prefetch) if p.text is not None]
        if texts:
            by_encoder: dict[str, list[int]] = defaultdict(list)
            for i, p in texts:
                by_encoder[self.config.spaces[p.space].encoder].append(i)
            for encoder, idxs in by_encoder.items():
                encoded = await self._encode(encoder, [req.prefetch[i].text for i in idxs])
                for i, (v, truncated) in zip(idxs, encoded):
                    self._check_vector(v, self.config.spaces[req.prefetch[i].space].dim, f"prefetch[{i}].text")
                    out[i] = v
                    if truncated:
                        notes.append(f"prefetch[{i}].text was longer than encoder {encoder!r} reads; it was truncated")
        return [list(v) for v in out], notes

    async def _encode_images(self, encoder: str, images: list[Any], field: str) -> list[tuple[list[float], bool]]:
        if self.encode_images is None:
            raise ModelUnavailable(f"{field}: no image encoder is available in this process", field=field)
        return await self.encode_images(encoder, images)

    async def _encode(self, encoder: str, texts: list[str], document: bool = False) -> list[tuple[list[float], bool]]:
        if self.encode is None:
            raise ModelUnavailable(f"encoder {encoder!r} is not available in this process")
        return await (self.encode(encoder, texts, document=True) if document else self.encode(encoder, texts))

    async def _hydrate(self, page: list[ScoredId], req: QueryRequest) -> tuple[list[Hit], list[str]]:
        want_payload = req.with_payload is not False and not (isinstance(req.with_payload, list) and not req.with_payload)
        spaces = list(self.config.spaces) if req.with_vectors is True else (req.with_vectors or [])
        if not page or (not want_payload and not spaces):
            return [Hit(id=h.id, score=h.score) for h in page], []
        by_shard: dict[int, list[str]] = defaultdict(list)
        for h in page:
            by_shard[self.shard_of(h.id)].append(h.id)
        shards = list(by_shard)
        answers = await asyncio.gather(*(self._read(s, "get", by_shard[s], spaces) for s in shards),
                                       return_exceptions=True)
        rows: dict[str, dict[str, Any]] = {}
        notes = []
        for shard, answer in zip(shards, answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, ShardUnavailable):
                    raise answer
                notes.append(f"payloads of shard {shard} unavailable: {answer.message}")
                continue
            rows.update(answer)
        hits = []
        for h in page:
            row = rows.get(h.id)
            payload = _select_payload(row["payload"], req.with_payload) if (row and want_payload) else None
            vectors = row["vectors"] if (row and spaces) else None
            hits.append(Hit(id=h.id, score=h.score, payload=payload, vectors=vectors))
        return hits, notes

    # -- writes ------------------------------------------------------------------------------------------------
    async def upsert(self, points: Sequence[Point]) -> UpsertResponse:
        """Validate the whole batch first (nothing is written on bad input), embed, route by ring, write."""
        rows, notes, failed = await self._prepare_points(points)
        by_shard: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_shard[self.shard_of(row["id"])].append(row)
        await asyncio.gather(*(self._write(s, "upsert", batch) for s, batch in by_shard.items()))
        if self.metadata is not None:
            # After the shards: an acknowledged upsert is searchable and, once this returns, filterable.
            await asyncio.to_thread(self.metadata.upsert, self.config.name, [(r["id"], r["payload"]) for r in rows])
        return UpsertResponse(upserted=len(rows), notes=notes, failed=failed)

    async def _prepare_points(self, points: Sequence[Point]
                              ) -> tuple[list[dict[str, Any]], list[str], list[PointError]]:
        """Validate the batch (structural errors fail it whole, nothing written), then embed. A point whose
        image cannot be read or embedded fails alone, with its reason; the rest of the batch lands."""
        rows = []
        notes: list[str] = []
        to_embed: dict[str, list[tuple[int, str]]] = defaultdict(list)  # space -> [(row index, text)]
        images: dict[str, list[tuple[int, str]]] = defaultdict(list)    # space -> [(row index, reference)]
        for i, p in enumerate(points):
            vectors = dict(p.vectors or {})
            for space_name, vec in vectors.items():
                space = self._space(space_name, f"points[{i}].vectors")
                self._check_vector(vec, space.dim, f"points[{i}].vectors.{space_name}")
            payload = dict(p.payload)
            for space_name, space in self.config.spaces.items():
                if space_name in vectors or not space.source:
                    continue
                value = p.payload.get(space.source)
                if not isinstance(value, str) or not value.strip():
                    continue
                if space.modality == "image":
                    images[space_name].append((i, value))
                    if is_inline(value):
                        payload[space.source] = f"<inline image, {len(value)} base64 characters>"
                else:
                    to_embed[space_name].append((i, value))
            meta = normalise_meta(p.payload, self.config.metadata, f"points[{i}].payload")
            rows.append({"id": p.id, "payload": payload, "meta": meta, "vectors": vectors})
        for space_name, items in to_embed.items():
            space = self.config.spaces[space_name]
            encoded = await self._encode(space.encoder, [t for _, t in items], document=True)
            for (i, _), (v, _) in zip(items, encoded):
                self._check_vector(v, space.dim, f"points[{i}].payload.{space.source}")
                rows[i]["vectors"][space_name] = list(v)
        bad: dict[int, str] = {}
        for space_name, items in images.items():
            space = self.config.spaces[space_name]
            decoded = []
            for i, ref in items:
                field = f"points[{i}].payload.{space.source}"
                try:
                    data = load_reference(ref, field, allow_network=self.images.allow_network,
                                          max_bytes=self.images.max_bytes)
                    decoded.append((i, decode_image(data, field, max_bytes=self.images.max_bytes,
                                                    max_pixels=self.images.max_pixels)))
                except InvalidRequest as exc:  # includes PayloadTooLarge: this point fails, the batch goes on
                    bad.setdefault(i, exc.message)
            good = [(i, img) for i, img in decoded if i not in bad]
            if good:
                encoded = await self._encode_images(space.encoder, [img for _, img in good],
                                                    f"spaces.{space_name}.encoder")
                for (i, _), (v, _) in zip(good, encoded):
                    rows[i]["vectors"][space_name] = list(v)
        failed = [PointError(id=rows[i]["id"], reason=reason) for i, reason in sorted(bad.items())]
        kept = [row for i, row in enumerate(rows) if i not in bad]
        for i, row in enumerate(rows):
            if i not in bad and not row["vectors"]:
                raise InvalidRequest(
                    f"points[{i}] (id {row['id']!r}) has no vector for any space and no source text to embed",
                    field=f"points[{i}].vectors",
                )
        return kept, notes, failed

    async def update_vectors(self, updates: Sequence[Any]) -> UpsertResponse:
        """Replace some spaces' vectors of existing points (a re-shot photo) without re-sending or re-embedding the
        others: their stored vectors are read back from the shard and written with the new ones."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for u in updates:
            by_shard[self.shard_of(u.id)].append(u.id)
        stored: dict[str, dict[str, Any]] = {}
        for shard, ids in by_shard.items():
            for row in await self._read(shard, "export", ids):
                stored[row["id"]] = row
        points, missing = [], []
        for i, u in enumerate(updates):
            old = stored.get(u.id)
            if old is None:
                missing.append(PointError(id=u.id, reason="no such point"))
                continue
            payload = {**old["payload"], **(u.sources or {})}
            changed = {s for s, sp in self.config.spaces.items() if sp.source and sp.source in (u.sources or {})}
            keep = {s: v for s, v in old["vectors"].items() if s not in changed}
            points.append(Point(id=u.id, payload=payload, vectors={**keep, **(u.vectors or {})}))
        if not points:
            return UpsertResponse(upserted=0, failed=missing)
        res = await self.upsert(points)
        return UpsertResponse(upserted=res.upserted, failed=missing + res.failed, notes=res.notes)

    async def delete(self, ids: Sequence[str]) -> DeleteResponse:
        by_shard: dict[int, list[str]] = defaultdict(list)
        for pid in dict.fromkeys(ids):
            by_shard[self.shard_of(pid)].append(pid)
        results = await asyncio.gather(*(self._write(s, "delete", batch) for s, batch in by_shard.items()))
        if self.metadata is not None:
            await asyncio.to_thread(self.metadata.delete, self.config.name, list(dict.fromkeys(ids)))
        return DeleteResponse(deleted=sum(max(r) for r in results))

    async def delete_by_filter(self, dsl: dict[str, Any]) -> DeleteResponse:
        """Delete every point matching an ES DSL filter (ids from Elasticsearch, in pages)."""
        node = parse_filter(dsl, self.config.metadata, "filter")
        if self.metadata is None:
            raise MetadataUnavailable("delete by filter needs the metadata store (Elasticsearch)")
        deleted, seen = 0, set()
        while True:
            ids = await asyncio.to_thread(self.metadata.ids, self.config.name, to_es(node), 1000)
            if not ids:
                return DeleteResponse(deleted=deleted)
            if seen.issuperset(ids):
                raise BackendError(f"Elasticsearch still lists {len(ids)} deleted ids; delete by filter stopped")
            seen.update(ids)
            deleted += (await self.delete(ids)).deleted

    def resized(self, config: CollectionConfig, replicas: Sequence[Sequence[ShardClient]]) -> "Coordinator":
        """A coordinator over a new shard count that keeps the replica state and logs of the shards it shares."""
        new = Coordinator(config, replicas, encode=self.encode, timeout_s=self.timeout_s, observe=self.observe,
                          metadata=self.metadata, filters=self.filters, encode_images=self.encode_images,
                          images=self.images)
        for s in range(min(len(self.sets), len(new.sets))):
            new.sets[s], new.oplog[s] = self.sets[s], self.oplog[s]
        new._locks = self._locks
        return new

    async def plan_moves(self, new_shards: int) -> dict[tuple[int, int], list[str]]:
        """(from shard, to shard) -> ids whose ring owner changes when the shard count becomes `new_shards`."""
        ring = HashRing(range(new_shards))
        moves: dict[tuple[int, int], list[str]] = defaultdict(list)
        held = await asyncio.gather(*(self._read(s, "ids") for s in range(self.config.shards)))
        for s, ids in enumerate(held):
            for pid in ids:
                t = int(ring.get(pid))
                if t != s:
                    moves[(s, t)].append(pid)
        return moves

    async def copy_points(self, target: "Coordinator", moves: dict[tuple[int, int], list[str]],
                          batch: int = 500) -> int:
        """Copy moved points from this coordinator's shards into `target`'s (every replica, quorum-acked)."""
        copied = 0
        for (s, t), ids in moves.items():
            for i in range(0, len(ids), batch):
                rows = await self._read(s, "export", ids[i : i + batch])
                await target._write(t, "upsert", rows)
                copied += len(rows)
        return copied

    def replica_states(self) -> list[list[dict]]:
        return [rs.describe() for rs in self.sets]

    async def counts(self) -> list[list[dict[str, int] | None]]:
        """Point count per space for every shard replica (None where a replica did not answer)."""
        async def one(client: ShardClient):
            try:
                return await asyncio.wait_for(client.call("count"), self.timeout_s)
            except Exception:  # noqa: BLE001
                return None
        return [list(await asyncio.gather(*(one(c) for c in reps))) for reps in self.replicas]


def _select_payload(payload: dict[str, Any], selector: bool | list[str] | PayloadExclude) -> dict[str, Any]:
    if selector is True:
        return dict(payload)
    if isinstance(selector, PayloadExclude):
        return {k: v for k, v in payload.items() if k not in set(selector.exclude)}
    return {k: payload[k] for k in selector if k in payload}


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PrismError) else exc.message
    return text if len(text) <= limit else text[: limit - 3] + "..."
