"""The Elasticsearch steps of one collection's queries and writes (`MetadataSteps`).

Queries: the Elasticsearch questions a filter plan needs (`router.filters.plan` decides, pure; this runs what it
decided), the post-filter over-fetch rounds, BM25 (lexical) prefetches, scan confirmation and counts. Writes:
write-through (Elasticsearch first, then the shards, put back in step when either fails), delete-by-filter and
dynamic mapping. `prism verify`: the Elasticsearch side of its comparison. The store is reached in worker threads
(the official client is synchronous); shard searches, reads and writes are injected, so no shard code is here.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cluster.collection_spec import SHARD_FIELD, CollectionConfig
from cluster.config import FilterSettings
from cluster.errors import BackendError, IndexRefused, InvalidRequest, MetadataUnavailable, ShardUnavailable
from router.filters.dsl import MATCH_NONE, Node, and_, parse_filter, split_conjuncts, to_es
from router.ranking.merge import merge_topk
from router.schema.query import QueryRequest
from router.filters.plan import FilterPlan, choose_es_path, first_fetch, next_fetch, plan_filter
from shards.api import PointRow, ScoredId, SearchSpec
from shards.expr import ids_in

# Elasticsearch returns at most index.max_result_window (10,000 by default) hits per search, noida-db the same:
# a larger id set cannot be fetched in one request, so it is post-filtered instead (measured: a forced
# pre-filter of 20,185 ids failed with "Result window is too large").
PREFILTER_HARD_MAX_IDS = 10_000
NOTHING = f"({MATCH_NONE})"  # a pre-filter whose id set is empty: nothing to search
DELETE_PAGE = 1000

# search(specs) -> (per spec, each answering shard's hits; {failed shard: its error})
Search = Callable[[list[SearchSpec]], Awaitable[tuple[list[list[list[ScoredId]]], dict[int, Any]]]]
# held(ids) -> (what the shards hold for them, by id; {shard that did not answer: its error})
Fetch = Callable[[list[str]], Awaitable[tuple[dict[str, Any], dict[int, Any]]]]
log = logging.getLogger("prism.metadata")
# Elasticsearch calls run on threads of their own, not on the event loop's default pool: that pool also runs the
# in-process shard calls (shards.local) and the rest of the process's `to_thread` work, and a slow Elasticsearch
# filled it (measured: the 200k snapshot bench's writer, each write due at its time, held the default pool's threads
# in Elasticsearch bulk calls, so shard writes and heals queued behind them and timed out).
STORE_THREADS = 8
_store_pool: ThreadPoolExecutor | None = None


async def store_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` (a synchronous Elasticsearch call) on the store's threads, with this task's context
    (as `asyncio.to_thread`)."""
    global _store_pool
    if _store_pool is None:
        _store_pool = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="prism-es")
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_store_pool, call)


def rolls_forward(exc: BaseException) -> bool:
    """Whether a failed shard write will still be applied: one that missed its quorum (or whose sequencer did not
    answer) is in the shard's log and reaches every replica once they are back, so Elasticsearch must keep it too
    (rolling it back there made the stores end different). A refused write (4xx, or a value Milvus will not
    store) ends nowhere, so Elasticsearch is put back."""
    return isinstance(exc, ShardUnavailable)


def _user_payload(source: dict[str, Any] | None) -> dict[str, Any] | None:
    """A document's payload as the user wrote it (without SHARD_FIELD)."""
    if source is None or SHARD_FIELD not in source:
        return source
    return {k: v for k, v in source.items() if k != SHARD_FIELD}


class MetadataSteps:
    """What a collection asks Elasticsearch: filter plans and rounds, BM25, counts, write-through, verify."""

    def __init__(self, config: CollectionConfig, metadata: Any | None, settings: FilterSettings | None = None):
        self.config = config
        self.store = metadata  # router.metadata.store.MetadataStore, or None: then only pushdown filters work
        self.settings = settings or FilterSettings()

    async def plan(self, req: QueryRequest) -> list[FilterPlan]:
        """Per prefetch: the top-level filter AND its own, planned; Elasticsearch questions answered here."""
        mapping = self.config.metadata
        top = parse_filter(req.filter, mapping, "filter") if req.filter is not None else None
        plans = []
        for i, p in enumerate(req.prefetch):
            own = parse_filter(p.filter, mapping, f"prefetch[{i}].filter") if p.filter is not None else None
            plan = plan_filter(and_(top, own), mapping, self.settings.mode)
            if plan.needs_es:
                plan = await self._resolve_es(plan)
            plans.append(plan)
        return plans

    def require(self, what: str) -> Any:
        """The store; a 503 naming Elasticsearch (and `what` needed it) when none is configured."""
        if self.store is None:
            raise MetadataUnavailable(f"{what} needs the metadata store (Elasticsearch), which is not configured "
                                      "here; only term/terms/range/exists/ids on mapped fields can run without it")
        return self.store

    async def _resolve_es(self, plan: FilterPlan) -> FilterPlan:
        """Count the WHOLE filter in Elasticsearch (its true selectivity); pre-filter by its ids when few."""
        store = self.require("this filter")
        query = to_es(plan.node)
        count = await store_call(store.count, self.config.name, query)
        plan = choose_es_path(plan, count, self.settings.prefilter_max_ids, self.settings.mode)
        if plan.kind != "prefilter":
            return plan
        if count > PREFILTER_HARD_MAX_IDS:
            return FilterPlan("postfilter", plan.expr, plan.residual, plan.node)
        ids = await store_call(store.ids, self.config.name, query, max(count, 1))
        # The ids already satisfy the whole filter: the allow-list alone goes down.
        return FilterPlan("prefilter", ids_in(ids) if ids else NOTHING, plan.residual, plan.node)

    async def postfilter(self, spec: SearchSpec, plan: FilterPlan, search: Search
                         ) -> tuple[list[ScoredId], int, dict[int, Any]]:
        """Over-fetch, keep ES-confirmed ids, grow the fetch until `spec.limit` hits or the candidates run out.

        Returns (hits, rounds, {failed shard: reason})."""
        store = self.require("this filter")
        need = spec.limit
        query = to_es(plan.residual)
        fetch = first_fetch(need, self.settings.postfilter_overfetch)
        kept: list[ScoredId] = []
        failed: dict[int, Any] = {}
        rounds = 0
        while True:
            rounds += 1
            found, fails = await search([SearchSpec(spec.space, spec.vector, fetch, plan.expr, spec.params,
                                                    spec.consistency)])
            lists = found[0]
            failed.update(fails)
            candidates = merge_topk(lists, fetch)
            ok = await store_call(store.confirm, self.config.name, query, [h.id for h in candidates])
            kept = [h for h in candidates if h.id in ok]
            exhausted = all(len(lst) < fetch for lst in lists)
            if len(kept) >= need or exhausted or rounds >= self.settings.postfilter_max_rounds:
                break
            bigger = next_fetch(fetch, self.settings.postfilter_overfetch)
            if bigger is None:
                break
            fetch = bigger
        return kept[:need], rounds, failed

    def lexical_prefetches(self, req: QueryRequest) -> dict[int, Any]:
        """The prefetches that name a lexical (bm25) space, checked: they take text, nothing else."""
        out = {}
        for i, p in enumerate(req.prefetch):
            space = self.config.lexical.get(p.space)
            if space is None:
                continue
            for kind in ("vector", "image", "params"):
                if getattr(p, kind) is not None:
                    raise InvalidRequest(f"prefetch[{i}].{kind}: space {p.space!r} is lexical (bm25): send text",
                                         field=f"prefetch[{i}].{kind}")
            if not p.text or not p.text.strip():
                raise InvalidRequest(f"prefetch[{i}].text: a lexical space needs query text", field=f"prefetch[{i}].text")
            self.require(f"lexical space {p.space!r}")
            out[i] = space
        return out

    async def lexical(self, space: Any, req: QueryRequest, i: int, limit: int, with_payload: bool) -> list[ScoredId]:
        """The global BM25 top `limit` of one lexical prefetch: Elasticsearch holds one document per point, so its
        term statistics are the collection's, whatever the shard count; filters restrict it in filter context."""
        mapping = self.config.metadata
        p = req.prefetch[i]
        top = parse_filter(req.filter, mapping, "filter") if req.filter is not None else None
        own = parse_filter(p.filter, mapping, f"prefetch[{i}].filter") if p.filter is not None else None
        node = and_(top, own)
        hits = await store_call(self.require("a lexical space").lexical, self.config.name, space.boosts(),
                                p.text, to_es(node) if node is not None else None, limit, with_payload)
        return [ScoredId(pid, score, _user_payload(payload)) for pid, score, payload in hits]

    def split(self, dsl: dict[str, Any] | None) -> tuple[str | None, Node | None]:
        """A filter as (the Milvus expression of what shards can run, the rest for Elasticsearch)."""
        if dsl is None:
            return None, None
        expr, residual = split_conjuncts(parse_filter(dsl, self.config.metadata, "filter"), self.config.metadata)
        if residual is not None:
            self.require("this filter")
        return expr, residual

    async def confirm(self, node: Node, ids: list[str]) -> set[str]:
        return await store_call(self.require("this filter").confirm, self.config.name, to_es(node), ids)

    async def count(self, dsl: dict[str, Any] | None) -> int:
        query = to_es(parse_filter(dsl, self.config.metadata, "filter")) if dsl is not None else {"match_all": {}}
        return await store_call(self.require("count").count, self.config.name, query)

    async def extend_mapping(self, fields: dict[str, str]) -> None:
        """Map new payload fields in Elasticsearch (when configured); the caller records them in the config."""
        if self.store is not None:
            await store_call(self.store.put_mapping, self.config.name, fields)

    async def write_through(self, rows: Sequence[PointRow], wait: bool, write: Callable[[], Awaitable[Any]],
                            held: Fetch, where: dict[str, list[int]] | None = None) -> None:
        """Index the payloads in Elasticsearch, then `write` the shards. Elasticsearch goes first so that what it
        refuses never reaches a shard; when either step fails, Elasticsearch is put back in step with what the
        shards hold for these ids (their payloads re-indexed, the others removed), then the error is raised.
        `where`: each point's shards (its home first, then where an old copy may still sit until this write has
        deleted it), kept in its document under SHARD_FIELD (`placed` reads it back). A document put back after a
        failure has none: the next write to that point looks for it on every shard."""
        store = self.store
        if store is None:
            await write()
            return
        docs = [(r.id, r.payload if where is None or r.id not in where else {**r.payload, SHARD_FIELD: where[r.id]})
                for r in rows]
        try:
            await store_call(store.upsert, self.config.name, docs, wait)
        except BaseException as exc:  # refused, or failed without saying what it indexed: put back what it may have
            await self._reindex_from_shards(exc.accepted if isinstance(exc, IndexRefused) else [r.id for r in rows], held, wait)
            raise
        try:
            await write()
        except BaseException as exc:
            if rolls_forward(exc):  # the shards will hold it (logged, replayed to who missed it): so does ES
                raise
            await self._reindex_from_shards([r.id for r in rows], held, wait)
            raise

    async def delete_through(self, ids: list[str], wait: bool, write: Callable[[], Awaitable[Any]],
                             held: Fetch) -> Any:
        """Remove the ids from Elasticsearch, then `write` (delete them from) the shards: an Elasticsearch that
        cannot take the delete refuses the request before any shard changes; when the shards fail, Elasticsearch
        is put back in step with what they still hold. Returns what `write` returned."""
        store = self.store
        if store is None:
            return await write()
        await store_call(store.delete, self.config.name, ids, wait)
        try:
            return await write()
        except BaseException as exc:
            if rolls_forward(exc):
                raise
            await self._reindex_from_shards(ids, held, wait)
            raise

    async def _reindex_from_shards(self, ids: list[str], held: Fetch, wait: bool) -> None:
        """Put Elasticsearch back in step with what the shards hold for `ids` (held payloads re-indexed, the others
        removed). Best effort (the request is failing already): a step that fails is logged with the ids left out."""
        if not ids:
            return
        try:
            rows, failed = await held(ids)
            unknown = {i for i in ids if i not in rows and failed}  # a shard that did not answer may hold them
            await store_call(self.store.upsert, self.config.name,
                             [(i, rows[i].payload) for i in ids if i in rows], wait)
            await store_call(self.store.delete, self.config.name,
                             [i for i in ids if i not in rows and i not in unknown], wait)
            if unknown:
                log.warning("Elasticsearch may list %d ids the shards do not hold (shards %s did not answer)",
                            len(unknown), sorted(failed))
        except Exception as exc:  # noqa: BLE001 - the original error is what the caller sees
            log.warning("could not put Elasticsearch back in step for %d ids: %s", len(ids), exc)

    async def placed(self, ids: list[str]) -> dict[str, tuple[list[int] | None, dict[str, Any]]] | None:
        """For those of `ids` Elasticsearch has a document for: (the shards its SHARD_FIELD names, home first, or
        None where it names none or something else; the payload). None without a store."""
        if self.store is None or not ids:
            return None if self.store is None else {}
        out = {}
        for pid, source in (await store_call(self.store.sources, self.config.name, ids)).items():
            where = source.pop(SHARD_FIELD, None)
            ok = isinstance(where, list) and where and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < self.config.shards for s in where)
            out[pid] = (list(where) if ok else None, source)
        return out

    async def set_placed(self, where: dict[str, list[int]], wait: bool = True) -> None:
        """Record where points live now (a rebalance moved them): their documents' SHARD_FIELD only; a point with no
        document is left without one."""
        if self.store is not None and where:
            await store_call(self.store.set_field, self.config.name, SHARD_FIELD, where, wait)

    async def unindexed(self, ids: list[str]) -> list[str]:
        """Those of `ids` Elasticsearch holds no document for (in the given order)."""
        store = self.require("verify")
        found = await store_call(store.confirm, self.config.name, {"match_all": {}}, ids)
        return [i for i in ids if i not in found]

    async def documents(self) -> int:
        return await store_call(self.require("verify").count, self.config.name, {"match_all": {}})

    async def extra_documents(self, known: list[str], limit: int) -> list[str]:
        """Up to `limit` ids of documents Elasticsearch holds that are not in `known`."""
        query = {"bool": {"must_not": [{"ids": {"values": known}}]}} if known else {"match_all": {}}
        return sorted(await store_call(self.require("verify").ids, self.config.name, query, limit))

    async def delete_matching(self, dsl: dict[str, Any], delete: Callable[[list[str]], Awaitable[Any]],
                              page: int = DELETE_PAGE) -> int:
        """Delete every point matching an ES DSL filter: ids from Elasticsearch a page at a time, each page deleted
        visibly (Elasticsearch must stop listing it before the next page is asked for). Returns how many."""
        node = parse_filter(dsl, self.config.metadata, "filter")
        store = self.require("delete by filter")
        deleted, seen = 0, set()
        while True:
            ids = await store_call(store.ids, self.config.name, to_es(node), page)
            if not ids:
                return deleted
            if seen.issuperset(ids):
                raise BackendError(f"Elasticsearch still lists {len(ids)} deleted ids; delete by filter stopped")
            seen.update(ids)
            deleted += (await delete(ids)).deleted
