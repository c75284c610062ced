"""The coordinator: one collection over its replicated shards, and its query pipeline. Plain class, no Ray import.

`Coordinator.query` reads as the pipeline, each step once and each a call into the module that owns it:
validate (router.ranking.stages, router.metadata.steps, router.encoding.vectors) -> plan (router.metadata.steps)
-> embed (router.encoding.vectors) -> route, fan out (router.collection.pipeline) -> merge (router.ranking.merge;
post-filter rounds and BM25 prefetches: router.metadata.steps) -> fuse (router.ranking.fusion) -> stages
(router.collection.pipeline, router.ranking.stages) -> hydrate -> explain (router.ranking.stages) -> the answer.
Writes live in router.collection.writes, scans/counts/points by id in router.collection.inventory, `prism verify`
in router.collection.verify, replication in router.replication.replicas.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from cluster.collection_spec import CollectionConfig
from cluster.config import DEFAULT_PROBE, FilterSettings, ImageLimits
from cluster.errors import ConfigError, ShardUnavailable
from cluster.ring import HashRing
from router.collection import inventory, pipeline, placing
from router.collection.locks import InFlight, run_routed
from router.collection.pipeline import Prefetched
from router.collection.timing import LapTimer
from router.collection.verify import verify_collection
from router.collection.writes import Writes
from router.encoding.vectors import Encode, EncodeImages, Vectors
from router.filters.plan import INLINE_PAYLOAD_MAX, routed_depth
from router.metadata.steps import NOTHING, MetadataSteps
from router.ranking.fusion import fuse
from router.ranking.merge import merge_topk
from router.ranking.stages import check_stages, explain
from router.replication.replicas import DEFAULT_TIMEOUT_S, ReplicatedShard, replicate
from router.routing.placement import Placement, Probe
from router.routing.settings import check_probe
from router.schema.collections import VerifyResponse
from router.schema.points import DeleteResponse, Point, UpsertResponse
from router.schema.query import QueryRequest, QueryResponse
from shards.api import ShardApi, StoredPoint

RERUNS = 3  # a routed query runs at most this often while rebalances on other ingress replicas switch placements


class Coordinator:
    """One collection: the query pipeline over its shards; writes, inventory and verify through their modules."""

    def __init__(self, config: CollectionConfig, shards: Sequence[ReplicatedShard], *, encode: Encode | None = None,
                 encode_images: EncodeImages | None = None, images: ImageLimits | None = None,
                 metadata: Any | None = None, filters: FilterSettings | None = None,
                 observe_stage: Callable[[str, float], None] | None = None, budget_ms: int | None = None,
                 inline_payload_max: int = INLINE_PAYLOAD_MAX, placement: Placement | None = None,
                 probe: Probe = DEFAULT_PROBE):
        if len(shards) != config.shards:
            raise ConfigError(f"{len(shards)} shards given for a collection of {config.shards}", field="shards")
        self.config = config
        self.shards = list(shards)
        self.ring = HashRing(range(config.shards))
        self.placement = placement or placing.placement_of(config)  # where points live, which shards a query visits
        if self.placement.shards != config.shards:
            raise ConfigError(f"a placement over {self.placement.shards} shards for a collection of {config.shards}",
                              field="shards")
        self.probe = check_probe(probe, "query_probe")
        self.vectors = Vectors(config, encode=encode, encode_images=encode_images, images=images)
        self.metadata = MetadataSteps(config, metadata, filters)
        self.paused: str | None = None  # set while the collection is resharded: writes are refused meanwhile
        self.moving = False  # a rebalance moves points: queries and reads by id visit every shard meanwhile
        self.progress = placing.Progress()  # the rebalance's state, as GET shows it
        self.placement_epoch = 0  # grows whenever `placement` or `moving` changes (writes note the one they used)
        self.reads = InFlight()  # queries by the placement epoch they began under: old copies outlive them
        # Cache keys carry both: a new coordinator never sees an old entry; no cached answer outlives a write.
        self.epoch, self.version = uuid.uuid4().hex, 0
        self.observe_stage, self.budget_ms, self.inline_payload_max = observe_stage, budget_ms, inline_payload_max
        self._index_types = {name: s.index.type for name, s in config.spaces.items()}
        # Set by the service: persist fields dynamic mapping added; refuse a write (layout stale, writes paused);
        # several ingresses: the catalog's stamp, placement brought up to it (rebalance.catalog_stamp).
        self.on_mapping: Callable[[dict[str, str]], None] | None = None
        self.before_write: Callable[[], None] | None = None
        self.placement_stamp: Callable[[], Any] | None = None
        self.writes = Writes(self)

    @classmethod
    def from_clients(cls, config: CollectionConfig, clients: Sequence[Sequence[ShardApi]], *,
                     timeout_s: float = DEFAULT_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
                     observe: Callable[[int, float], None] | None = None, batching: Any = None,
                     hedge: bool = True, sequencers: Sequence[Any] | None = None, poll_sequencer: bool = True,
                     read_replicas: str = "spread", **kw: Any) -> "Coordinator":
        """A coordinator over fresh replica sets: `clients[s]` are shard s's replicas; `sequencers[s]`, if given,
        orders shard s's writes (router.replication.sequencer) instead of this coordinator."""
        return cls(config, replicate(config, clients, timeout_s=timeout_s, clock=clock, observe=observe,
                                     batching=batching, hedge=hedge, sequencers=sequencers,
                                     poll_sequencer=poll_sequencer, read_replicas=read_replicas), **kw)

    def resized(self, config: CollectionConfig, shards: Sequence[ReplicatedShard]) -> "Coordinator":
        """The same collection over another shard layout, with this one's encoders, images and filters."""
        return Coordinator(config, shards, encode=self.vectors.encode, encode_images=self.vectors.encode_images,
                           images=self.vectors.images, metadata=self.metadata.store,
                           filters=self.metadata.settings, observe_stage=self.observe_stage,
                           budget_ms=self.budget_ms, inline_payload_max=self.inline_payload_max, probe=self.probe)

    def shard_of(self, point_id: str) -> int:
        """The shard that owns `point_id` on this layout's ring."""
        return int(self.ring.get(point_id))

    def by_shard(self, items: Sequence[Any], key: Callable[[Any], str] = str) -> dict[int, list]:
        """`items` grouped by the shard that owns each one's id (`key`) on the ring."""
        out: dict[int, list] = defaultdict(list)
        for item in items:
            out[self.shard_of(key(item))].append(item)
        return out

    def by_id(self, ids: Sequence[str], among: Sequence[int] | None = None) -> dict[int, list[str]]:
        """The shards that may hold each of `ids`, with the ids to ask each: the ring's owner, or off the ring (see
        `scattered`) every shard (of `among`)."""
        if not self.scattered:
            return self.by_shard(ids)
        return {s: list(ids) for s in (range(self.config.shards) if among is None else among)}

    @property
    def scattered(self) -> bool:
        """Whether a point may sit off its ring owner: a placement not by the ring, or points moving."""
        return self.moving or not placing.by_ring(self.placement)

    def home_of(self, row: Any) -> int:
        """The shard a point row (id, vectors, payload) lives on under this collection's placement."""
        return self.placement.shard_of(row.id, row.vectors, row.payload)

    # -- the query pipeline ------------------------------------------------------------------------------------
    async def query(self, req: QueryRequest) -> QueryResponse:
        """One query, the pipeline in order (docs/architecture.md, "A query, step by step")."""
        return await self._routed(lambda: self._query(req), lambda a: a.coverage.routed)

    async def _routed(self, run: Callable[[], Any], routed: Callable[[Any], Sequence[int]]) -> Any:
        """`run` counted in flight by the placement it routes by; run again if another ingress's rebalance switched
        placements under it (router.collection.locks.run_routed)."""
        return await run_routed(self, run, routed, RERUNS)

    async def _query(self, req: QueryRequest) -> QueryResponse:
        laps = LapTimer(self.observe_stage)
        got = await self._prefetch(req, laps)  # validate -> plan -> embed -> route -> fan out -> merge
        routed = got.coverage.routed
        # hits come from the shards visited (a pinned key's points live there): fetch payloads from those alone
        fetch = self.fetch if len(routed) == self.config.shards else partial(self.fetch, among=routed)
        # Fusion runs on each space's GLOBAL top-k, so the answer never depends on the shard count.
        fused = fuse(req.fusion.method, got.lists, k=req.fusion.k, weights=req.fusion.weights,
                     limit=req.candidates() or req.window())
        known = {h.id: h.payload for lst in got.lists for h in lst if h.payload is not None}  # came inline
        ranked = await pipeline.stages(fused, req, known, fetch)
        laps.lap("merge_fuse")
        hits, notes = await pipeline.hydrate(ranked.page(req), req, ranked.known, list(self.config.spaces), fetch)
        laps.lap("hydrate")
        if req.explain:
            hits = explain(hits, req, got.lists, ranked.base, ranked.trail)
        return pipeline.answer(req, hits, got, ranked, notes, laps)

    async def prefetch(self, req: QueryRequest, laps: LapTimer | None = None) -> Prefetched:
        """Each prefetch's own global top list, unfused (payloads with it when they came inline): the first steps of
        `query`, and what callers that fuse themselves ask for (router.serving.qdrant)."""
        return await self._routed(lambda: self._prefetch(req, laps or LapTimer(self.observe_stage)),
                                  lambda a: a.coverage.routed)

    async def _prefetch(self, req: QueryRequest, laps: LapTimer) -> Prefetched:
        probe = self.probe if req.probe is None else check_probe(req.probe)  # 422 naming `probe`
        budget_ms = req.budget_ms or self.budget_ms
        deadline = laps.t0 + budget_ms / 1000 if budget_ms else None
        # validate; lexical (bm25) prefetches are answered by Elasticsearch, the rest (dense) by the shards
        check_stages(req, self.config)
        lexical = self.metadata.lexical_prefetches(req)
        dense = [i for i in range(len(req.prefetch)) if i not in lexical]
        sub = req if not lexical else req.model_copy(update={"prefetch": [req.prefetch[i] for i in dense]})
        self.vectors.validate_query(sub)
        plans = dict(zip(dense, await self.metadata.plan(sub)))
        laps.lap("plan")
        vecs, notes = await self.vectors.query_vectors(sub) if dense else ([], [])
        laps.lap("embed")
        by_prefetch = dict(zip(dense, vecs))
        visit = tuple(range(self.config.shards)) if self.moving else placing.visited(
            self.placement, req, [(p.space, by_prefetch[i]) if i in by_prefetch else None
                                  for i, p in enumerate(req.prefetch)], probe)
        specs = pipeline.route(req, dense, plans, by_prefetch, len(visit), self.inline_payload_max)
        ran: dict[str, dict[str, Any]] = {}
        routed = self.placement.space if self.placement.method == "vector" and self.placement.ready else None
        search = partial(pipeline.fan_out, self.shards, self._index_types, deadline, ran, visit,
                         routed_depth(routed, self.config.shards))
        merged, failed = [[] for _ in req.prefetch], {}  # per prefetch: its global top-k; shard -> its error
        direct = [i for i in dense if plans[i].kind != "postfilter" and plans[i].expr != NOTHING and visit]
        if direct:
            lists, failed = await search([specs[i] for i in direct])
            for j, i in enumerate(direct):
                merged[i] = merge_topk(lists[j], specs[i].limit)
        rounds = 0
        for i in (i for i in dense if plans[i].kind == "postfilter"):  # over-fetch rounds, confirmed in ES
            merged[i], r, fails = await self.metadata.postfilter(specs[i], plans[i], search)
            rounds = max(rounds, r)
            failed.update(fails)
        payload, spaces = req.returns()
        for i, space in lexical.items():
            merged[i] = await self.metadata.lexical(space, req, i, req.prefetch_limit(req.prefetch[i]),
                                                    payload and not spaces)
        laps.lap("fan_out")
        return pipeline.prefetched(req, self.config.shards, visit, merged, failed, plans, rounds, notes, ran)

    async def fetch(self, ids: Sequence[str], spaces: Sequence[str] = (), among: Sequence[int] | None = None
                    ) -> tuple[dict[str, StoredPoint], dict[int, ShardUnavailable]]:
        """Stored points (payload, the named spaces' vectors) by id; shards that could not answer, beside them.
        `among`: the shards to ask when the placement does not follow the ring (default: all of them)."""
        return await inventory.fetch(self, ids, spaces, among)

    # -- inventory and verify (router.collection.inventory, router.collection.verify) ---------------------------
    async def scan(self, after: str, limit: int, dsl: dict[str, Any] | None = None) -> list[str]:
        """The first `limit` matching ids above `after`, in id order (router.collection.inventory.scan_page)."""
        return (await inventory.scan_page(self, after, limit, dsl))[0]

    async def count(self, dsl: dict[str, Any] | None = None) -> int:
        return await inventory.count(self, dsl)

    async def verify(self, sample: int = 100, list_extra_up_to: int = 10_000) -> VerifyResponse:
        """Shards vs Elasticsearch, and every shard's replicas with each other."""
        return await verify_collection(self, sample, list_extra_up_to)

    # -- writes (router.collection.writes) -----------------------------------------------------------------------
    async def upsert(self, points: Sequence[Point], wait: bool = True) -> UpsertResponse:
        return await self.writes.upsert(points, wait)

    async def update_vectors(self, updates: Sequence[Any], wait: bool = True) -> UpsertResponse:
        return await self.writes.update_vectors(updates, wait)

    async def delete(self, ids: Sequence[str], wait: bool = True) -> DeleteResponse:
        return await self.writes.delete(ids, wait)

    async def delete_by_filter(self, dsl: dict[str, Any]) -> DeleteResponse:
        return await self.writes.delete_by_filter(dsl)

    async def map_fields(self, fields: dict[str, str]) -> dict[str, str]:
        return await self.writes.map_fields(fields)

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

