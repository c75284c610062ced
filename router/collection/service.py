"""PrismService: collections, their persisted catalog, and one Coordinator per collection. No Ray Serve here.

The ingress (router/serving/app.py) holds one of these and delegates every endpoint to it; tests use it directly.
"""
from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import Callable
from typing import Any

from cluster.collection_spec import CollectionConfig, check_index_support
from cluster.config import ClusterConfig, parse_model
from cluster.errors import (
    CollectionExists, CollectionNotFound, InvalidRequest, PayloadTooLarge, PointNotFound, ShardUnavailable,
)
from cluster.names import check_name
from router.schema.bodies import parse_json
from router.collection.cache import EmbeddingCache, LRUCache, request_key
from router.collection.alias_ops import AliasOps
from router.collection.aliases import check_collection_name, check_deletable
from router.collection.catalog import Catalog, Entry
from router.collection import inventory, limits as strict, placing, rebalance as rebalancing, reshard as resharding
from router.collection.coordinator import Coordinator
from router.collection.pipeline import Prefetched
from router.metadata.steps import store_call
from router.schema.collections import CollectionInfo, ReshardRequest, ShardInfo, VerifyResponse
from router.schema.points import (
    CountRequest, CountResponse, DeleteRequest, DeleteResponse, Record, RetrieveRequest, RetrieveResponse, ScrollRequest, ScrollResponse, UpdateVectorsRequest, UpsertRequest, UpsertResponse,
)
from router.schema.query import BatchQueryRequest, BatchQueryResponse, QueryRequest, QueryResponse
from router.collection.snapshots import Snapshots
from router.encoding.vectors import Encode
from shards.local import leftovers, local_shards, replica_specs, stop_local_shards

# start_shards(collection, specs, create=True, first_shard=0) -> shard clients; stop_shards(clients, drop)
StartShards = Callable[..., list]
StopShards = Callable[..., None]


class PrismService(AliasOps):
    """Create/describe/delete collections and route reads and writes to their coordinators."""

    def __init__(self, config: ClusterConfig, *, encode: Encode | None = None, server_uri: str | None = None,
                 start_shards: StartShards | None = None, stop_shards: StopShards | None = None,
                 start_sequencers: StartShards | None = None, stop_sequencers: StopShards | None = None,
                 observe_shard: Callable[[str, int, float], None] | None = None, metadata: Any | None = None,
                 encode_images: Any | None = None, encoders: dict[str, dict] | None = None,
                 observe_stage: Callable[[str, float], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        c = config.cache
        self.results = LRUCache(c.results_max_entries, c.results_max_bytes, c.results_ttl_s, clock=clock)
        self.embeddings = LRUCache(c.embeddings_max_entries, c.embeddings_max_bytes, clock=clock)
        self.encode = EmbeddingCache(encode, self.embeddings) if encode is not None else None
        self.observe_stage = observe_stage
        self.server_uri = server_uri
        self.start_shards = start_shards or (lambda c, specs, create=True, first_shard=0: local_shards(
            c, specs, create=create, first_shard=first_shard, batching=config.batching))
        self.stop_shards = stop_shards or stop_local_shards
        # Sequencers (router.replication.sequencer) order each shard's writes outside this process, so that several ingress
        # replicas can write and an ingress restart loses nothing; without them this process orders the writes.
        self.start_sequencers = start_sequencers
        self.stop_sequencers = stop_sequencers
        self.observe_shard, self.metadata, self.encode_images = observe_shard, metadata, encode_images
        # encoder name -> {"dim", "modalities", "available", "reason"} as the running encoders report them
        self.encoders = encoders or {}
        self.catalog = Catalog(config.data_path / "catalog")  # shared by every ingress replica (router/collection/catalog.py)
        self.coordinators: dict[str, Coordinator] = {}
        self._seen: dict[str, tuple] = {}  # name -> (file stamp, version) of the catalog entry this process follows
        self._lock = asyncio.Lock()
        self.background: dict[str, asyncio.Task] = {}  # name -> a training started on its own (rebalance.maybe_start)
        self.snapshots = Snapshots(self)  # create, list, describe, delete, restore (router.collection.snapshots)

    def several_ingresses(self) -> bool:
        """Whether other ingress replicas may write to the shards meanwhile (sequencers order the writes, and
        `ingress_replicas` > 1 or an autoscaling range may add some): only then does a reshard or rebalance pause
        writes through the catalog and wait out the writes they began; a single ingress holds its own writes back."""
        return self.start_sequencers is not None and (self.config.ingress_replicas > 1
                                                      or self.config.ingress_max_replicas is not None)

    # -- collections -------------------------------------------------------------------------------------------
    def open_catalog(self) -> list[str]:
        """Reopen every collection recorded in the data dir (after a restart)."""
        names = []
        for name in self.catalog.names():
            stamp, entry = self.catalog.stamp(name), self.catalog.read(name)
            if entry is None:
                continue
            if self.metadata is not None:
                self.metadata.ensure_index(entry.config)
            rebalancing.adopt(self._open(entry.config), entry).progress.interrupted = entry.moving  # a move ended with a process
            self._seen[name] = (stamp, entry.version)
            names.append(name)
        for cfg in self.config.collections:
            if cfg.name not in self.coordinators:
                self._create_sync(cfg)
                names.append(cfg.name)
        return names

    def _open(self, cfg: CollectionConfig) -> Coordinator:
        """Start (or reattach to) the collection's shard replicas, creating their Milvus collections if absent."""
        specs = replica_specs(cfg, self.config.milvus, self.config.data_path, self.server_uri)
        clients = self.start_shards(cfg, specs, create=True)
        sequencers = self.start_sequencers(cfg, specs) if self.start_sequencers is not None else None
        coord = Coordinator.from_clients(
            cfg, clients, sequencers=sequencers,
            poll_sequencer=self.several_ingresses(), timeout_s=self.config.shard_timeout_s, observe=self._observer(cfg.name),
            batching=self.config.batching, hedge=self.config.hedge_reads, read_replicas=self.config.read_replicas,
            encode=self.encode, encode_images=self.encode_images, images=self.config.images,
            metadata=self.metadata, filters=self.config.filters, observe_stage=self.observe_stage,
            budget_ms=self.config.query_budget_ms, inline_payload_max=self.config.inline_payload_max,
            probe=self.config.query_probe)
        self._attach(coord)
        self.coordinators[cfg.name] = coord
        return coord

    def _attach(self, coord: Coordinator) -> None:
        """Wire a coordinator (opened, or a reshard's new layout) to the catalog and the replication settings."""
        coord.on_mapping = lambda new, coord=coord: self._save_mapping(coord, new)
        if self.start_sequencers is not None:  # other ingress replicas may pause or reshard it meanwhile
            coord.before_write = lambda coord=coord: self._check_current(coord)
            coord.placement_stamp = lambda coord=coord: rebalancing.catalog_stamp(self, coord)
        self.snapshots.attach(coord)  # the journal archive of the shards whose writes this process orders
        for sh in coord.shards:
            if sh.sequencer is None:  # this process orders the shard's writes: its heal passes run anti-entropy too
                sh.anti_entropy_interval_s = self.config.replication.anti_entropy_interval_s or None
                sh.digest_rescan_s = self.config.replication.digest_rescan_s

    def _note(self, name: str, entry: Entry) -> None:
        self._seen[name] = (self.catalog.stamp(name), entry.version)

    def _save_mapping(self, coord: Coordinator, new: dict[str, str]) -> None:
        """Record fields dynamic mapping added, merged into the catalog entry as it is now (another ingress may
        have mapped others since this one read it: they are kept, and adopted here)."""
        name = coord.config.name
        entry = self.catalog.update(name, lambda e: e.with_(config=e.config.model_copy(
            update={"metadata": {**new, **e.config.metadata}})))
        coord.config.metadata.update(entry.config.metadata)
        self._note(name, entry)

    def _sync(self, name: str, coord: Coordinator | None) -> Coordinator | None:
        """This process's coordinator for `name` brought up to the catalog, which other ingress replicas write: a
        collection created or deleted there, fields mapped there, a reshard's pause, a new shard layout."""
        stamp = self.catalog.stamp(name)
        seen = self._seen.get(name)
        if coord is not None and stamp is not None and seen is not None and seen[0] == stamp:
            return coord
        entry = self.catalog.read(name) if stamp is not None else None
        if entry is None:
            self.coordinators.pop(name, None)
            self._seen.pop(name, None)
            return None
        if coord is None or entry.config.shards != coord.config.shards:
            coord = self._open(entry.config)  # attaches to the shards (and sequencers) another ingress started
        else:
            coord.config.metadata.update(entry.config.metadata)
        rebalancing.adopt(coord, entry)
        self._seen[name] = (stamp, entry.version)
        return coord

    def _check_current(self, coord: Coordinator) -> None:
        """Right before a write reaches the shards: refuse it if another ingress resharded the collection since
        this request began (its ring is stale); a pause another ingress set is then in `coord.paused`."""
        if self._sync(coord.config.name, coord) is not coord:
            raise ShardUnavailable(f"collection {coord.config.name!r} was resharded meanwhile; retry",
                                   shards=list(range(coord.config.shards)))

    def _observer(self, name: str):
        if self.observe_shard is None:
            return None
        return lambda shard, seconds: self.observe_shard(name, shard, seconds)

    def _create_sync(self, cfg: CollectionConfig, fresh: bool = False) -> None:
        """Create a collection's index, shards and catalog entry. `fresh` (the API's create): Milvus data or an
        Elasticsearch index that exist already under its names are refused (409), never adopted; collections
        declared in the config are made or reopened as they are."""
        cfg = placing.checked(cfg)  # routing: a 422 naming the field before anything is made
        backend = "lite" if self.config.milvus.mode == "lite" else "server"
        for space_name, space in cfg.spaces.items():
            try:
                check_index_support(space.index, backend, self.config.milvus.gpu)
            except InvalidRequest as exc:
                raise InvalidRequest(f"spaces.{space_name}.{exc.message}", field=f"spaces.{space_name}.index.type")
        if fresh:
            found = leftovers(cfg, replica_specs(cfg, self.config.milvus, self.config.data_path, self.server_uri))
            if found:
                raise CollectionExists(f"Milvus already holds data under the names of collection {cfg.name!r} "
                                       f"({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}) and prism never "
                                       "adopts data it did not make for it: drop them, or choose another name",
                                       field="name")
        if self.metadata is not None:
            (self.metadata.create_index if fresh else self.metadata.ensure_index)(cfg)
        coord = None
        try:
            coord = self._open(cfg)  # shards first: an ingress that sees the catalog entry can attach to them
            # `fresh`: a 409 if another ingress recorded the name meanwhile; declared: what is recorded is kept
            entry = self.catalog.create(cfg) if fresh else self.catalog.ensure(cfg)
        except Exception:
            if coord is not None and self.coordinators.get(cfg.name) is coord:
                del self.coordinators[cfg.name]
            if fresh and self.metadata is not None:  # the index is ours: a failed create leaves nothing behind
                self.metadata.drop_index(cfg.name)
            raise
        if entry.config.shards != cfg.shards:  # another ingress recorded the declared collection and resharded it
            coord = self._open(entry.config)
        coord.config.metadata.update(entry.config.metadata)
        rebalancing.adopt(coord, entry)
        self._note(cfg.name, entry)

    async def create_collection(self, name: str, body: dict[str, Any]) -> CollectionInfo:
        check_name(name)
        if not isinstance(body, dict):
            raise InvalidRequest("collection body must be a JSON object")
        cfg = placing.checked(parse_model(CollectionConfig, {**body, "name": name}, "collection"))
        strict.check_layout(cfg, self.config.limits)
        strict.check_encoders(cfg, self.encoders)
        async with self._lock:
            check_collection_name(name, self.catalog.aliases())  # the catalog checks again, under its lock
            if name in self.coordinators or self.catalog.stamp(name) is not None:  # or made through another ingress
                raise CollectionExists(f"collection {name!r} already exists")
            twin = next((n for n in {*self.coordinators, *self.catalog.names()} if n.lower() == name.lower()), None)
            if twin is not None:  # one Elasticsearch index (names are lower-cased there), one file on some disks
                raise CollectionExists(f"collection {twin!r} exists; names may not differ only in case ({name!r})",
                                       field="name")
            if len(self.coordinators) >= self.config.limits.max_collections:
                raise InvalidRequest(f"this cluster holds {len(self.coordinators)} collections, its limit "
                                     "(limits.max_collections)", field="name")
            await asyncio.to_thread(self._create_sync, cfg, True)
        return await self.info(name)

    def coordinator(self, name: str) -> Coordinator:
        """The collection `name` names, directly or through an alias: the one place every entry resolves aliases."""
        name = self.catalog.resolve(check_name(name))  # every entry: no path is built from anything else
        coord = self.coordinators.get(name)
        if self.start_sequencers is not None:  # several ingress replicas share the catalog
            coord = self._sync(name, coord)
        if coord is None:
            raise CollectionNotFound(f"collection {name!r} not found")
        return coord

    async def info(self, name: str) -> CollectionInfo:
        coord = self.coordinator(name)
        counts, nodes = await asyncio.gather(coord.counts(), asyncio.gather(*(sh.nodes() for sh in coord.shards)))
        shards, totals = [], {s: 0 for s in coord.config.spaces}
        states = coord.replica_states()
        for s, row in enumerate(counts):
            for r, c in enumerate(row):
                st = states[s][r]
                shards.append(ShardInfo(shard=s, replica=r, counts=c or {},
                                        state=st["state"] if c is not None else "dead",
                                        applied_seq=st["applied_seq"], committed_seq=st["committed_seq"], lag=st["lag"],
                                        last_error=st["last_error"] or None, faults=st["faults"],
                                        last_fault=st["last_fault"] or None,
                                        last_fault_s_ago=st["last_fault_s_ago"], node=nodes[s][r],
                                        agreement=st["agreement"], digest_s_ago=st["digest_s_ago"]))
            first = next((c for c in row if c is not None), None)
            for space, n in (first or {}).items():
                totals[space] += n
        return CollectionInfo(name=coord.config.name, config=coord.config.model_dump(), counts=totals, shards=shards,
                              routing=placing.routing_info(coord.config, coord.placement, coord.progress),
                              archive=[sh.archive_status() or {} for sh in coord.shards])

    async def delete_collection(self, name: str) -> dict[str, Any]:
        async with self._lock:
            coord = self.coordinator(name)
            name = coord.config.name  # named through an alias: refused just below, as that alias points to it
            check_deletable(name, self.catalog.aliases())
            self.coordinators.pop(name)
            if (task := self.background.pop(name, None)) is not None:
                task.cancel()  # a training started on its own (a no-op once it has ended)
            if self.stop_sequencers is not None:
                await asyncio.to_thread(self.stop_sequencers, [sh.sequencer for sh in coord.shards if sh.sequencer], True)
            await asyncio.to_thread(self.stop_shards, [sh.clients for sh in coord.shards], True)
            self.catalog.delete(name)
            self._seen.pop(name, None)
            if self.metadata is not None:
                await store_call(self.metadata.drop_index, name)  # the store's threads (router.metadata.steps)
            for kept in (self.config.data_path / "milvus" / name, self.config.data_path / "sequencer" / name):
                if kept.exists():
                    shutil.rmtree(kept, ignore_errors=True)
        return {"deleted": name}

    async def reshard(self, name: str, body: Any) -> dict[str, Any]:
        """Change the shard count, moving only the points whose ring owner changes; reads go on meanwhile."""
        parse_model(ReshardRequest, body, "reshard request")
        async with self._lock:
            return await resharding.reshard_collection(self, self.coordinator(name).config.name, body["shards"])

    async def rebalance(self, name: str, body: Any = None) -> dict[str, Any]:
        """Vector routing: train the centroids, move the points; reads and writes go on (router.collection.rebalance)."""
        return await rebalancing.rebalance(self, self.coordinator(name).config.name, body)

    async def heal(self) -> dict[str, int]:
        """One healing pass over every collection: {"healed": replicas caught up, "failed": probes that failed}."""
        total = {"healed": 0, "failed": 0}
        for coord in list(self.coordinators.values()):
            for key, n in (await coord.heal()).items():
                total[key] += n
        return total

    def collection_config(self, name: str) -> CollectionConfig:
        """A collection's config as it stands: spaces, layout, and the metadata mapping with its dynamic fields."""
        return self.coordinator(name).config

    async def map_fields(self, name: str, fields: dict[str, str]) -> dict[str, str]:
        """Map payload fields ahead of the points that bring them; a field mapped already keeps its type."""
        return await self.coordinator(name).map_fields(fields)

    def list_collections(self) -> list[str]:
        if self.start_sequencers is not None:  # the catalog, which every ingress replica writes
            return self.catalog.names()
        return sorted(self.coordinators)

    def close(self) -> None:
        for coord in list(self.coordinators.values()):
            self.stop_shards([sh.clients for sh in coord.shards], False)
        self.coordinators.clear()

    # -- data --------------------------------------------------------------------------------------------------
    async def upsert(self, name: str, body: Any) -> UpsertResponse:
        coord = self.coordinator(name)
        req = parse_model(UpsertRequest, body, "upsert request")
        strict.check_write(len(req.points), self.config.limits)
        strict.check_documents(req.points, coord.config, self.config.limits)
        done = await coord.upsert(req.points, req.wait)
        rebalancing.maybe_start(self, coord, done.upserted)  # vector routing: train on its own once enough points are in
        return done

    async def update_vectors(self, name: str, body: Any) -> UpsertResponse:
        coord = self.coordinator(name)
        req = parse_model(UpdateVectorsRequest, body, "vector update")
        strict.check_write(len(req.points), self.config.limits)
        strict.check_documents(req.points, coord.config, self.config.limits, sources=True)
        return await coord.update_vectors(req.points, req.wait)

    async def delete_points(self, name: str, body: Any) -> DeleteResponse:
        coord = self.coordinator(name)
        req = parse_model(DeleteRequest, body, "delete request")
        strict.check_write(len(req.ids or []), self.config.limits, "ids")
        strict.check_filter(req.filter, self.config.limits, "filter")
        if req.filter is not None:
            return await coord.delete_by_filter(req.filter)
        return await coord.delete(req.ids or [], req.wait)

    async def retrieve(self, name: str, body: Any) -> RetrieveResponse:
        """Points by id with payload/vector selectors. A shard that cannot answer is a 503 naming it: its ids are
        never reported missing."""
        coord = self.coordinator(name)
        req = parse_model(RetrieveRequest, body, "retrieve request")
        strict.check_write(len(req.ids), self.config.limits, "ids")
        return await inventory.retrieve(coord, req)

    async def scroll(self, name: str, body: Any) -> ScrollResponse:
        """A page of points in id order after the cursor (keyset paging: stable under concurrent writes)."""
        coord = self.coordinator(name)
        req = parse_model(ScrollRequest, body, "scroll request")
        strict.check_filter(req.filter, self.config.limits, "filter")
        return await inventory.scroll(coord, req, self.config.limits.max_scroll_examined,
                                      lambda body: self.retrieve(coord.config.name, body))  # not a switched alias

    async def count(self, name: str, body: Any) -> CountResponse:
        coord = self.coordinator(name)
        req = parse_model(CountRequest, body, "count request")
        strict.check_filter(req.filter, self.config.limits, "filter")
        return CountResponse(count=await coord.count(req.filter))

    async def verify(self, name: str) -> VerifyResponse:
        """Shards vs Elasticsearch for one collection: ids and counts, and whether they drifted apart."""
        return await self.coordinator(name).verify()

    async def point(self, name: str, point_id: str, with_vectors: bool = False) -> Record:
        """One point by id (`GET .../points/{id}`); 404 if no shard holds it."""
        got = await self.retrieve(name, {"ids": [point_id], "with_vectors": with_vectors})
        if not got.points:
            raise PointNotFound(f"no point {point_id!r} in collection {name!r}", field="id")
        return got.points[0]

    async def query(self, name: str, body: Any) -> QueryResponse:
        return await self._query(*self._checked_query(name, body))

    async def prefetch(self, name: str, body: Any) -> Prefetched:
        """A query's prefetches, each its own global top list, unfused (for callers that fuse: router.serving.qdrant)."""
        coord, req = self._checked_query(name, body)
        return await coord.prefetch(req)

    def _checked_query(self, name: str, body: Any) -> tuple[Coordinator, QueryRequest]:
        coord = self.coordinator(name)
        req = parse_model(QueryRequest, body, "query")
        strict.check_query(req, self.config.limits)
        return coord, req

    async def _query(self, coord: Coordinator, req: QueryRequest) -> QueryResponse:
        """Answer from the result cache when allowed; cache a complete answer unless a write ran meanwhile."""
        if not req.cache:
            return await coord.query(req)
        t0, epoch, version = time.perf_counter(), coord.epoch, coord.version
        key = request_key(f"{coord.config.name}\x00{epoch}", version, req.model_dump(mode="json"))
        hit = self.results.get(key)
        if hit is not None:
            took = round((time.perf_counter() - t0) * 1000, 3)
            return hit.model_copy(update={"cached": True, "took_ms": took,
                                          "timings_ms": {"cache": took} if req.debug else None})
        answer = await coord.query(req)
        if not answer.partial and coord.version == version and coord.epoch == epoch:
            self.results.put(key, answer, len(answer.model_dump_json()) + len(key))
        return answer

    async def query_image(self, name: str, image: bytes, text: str | None = None,
                          params: str | None = None) -> QueryResponse:
        """An uploaded image (and optional text), each embedded into its spaces and fused.

        `params` (JSON): {image_spaces?, text_spaces?, limit?, filter?, fusion?, with_payload?}; by default the image
        goes to the CLIP spaces that hold images and the text to the spaces that hold text."""
        limit = self.config.max_upload_bytes
        if len(image) > limit:
            raise PayloadTooLarge(f"image upload exceeds {limit} bytes", field="image")
        opts = parse_json(params.encode("utf-8", "surrogatepass"), "params") if params else {}
        if not isinstance(opts, dict):
            raise InvalidRequest("params must be a JSON object", field="params")
        coord = self.coordinator(name)
        name, spaces = coord.config.name, coord.config.spaces  # one collection, even if its alias switches meanwhile
        image_spaces = opts.pop("image_spaces", [s for s, c in spaces.items()
                                                 if c.encoder == "clip" and c.modality == "image"])
        text_spaces = opts.pop("text_spaces", [s for s, c in spaces.items()
                                               if c.encoder and c.modality == "text"]) if text else []
        b64 = base64.b64encode(image).decode()
        prefetch = [{"space": s, "image": b64} for s in image_spaces] + [{"space": s, "text": text} for s in text_spaces]
        if not prefetch:
            raise InvalidRequest("no space can take this image (no CLIP space in the collection)", field="image")
        body = {"prefetch": prefetch, **opts}
        if len(prefetch) == 1:
            body.setdefault("fusion", {"method": "none"})
        return await self.query(name, body)

    async def query_batch(self, name: str, body: Any) -> BatchQueryResponse:
        coord = self.coordinator(name)
        req = parse_model(BatchQueryRequest, body, "batch query")
        strict.check_batch(req, self.config.limits)
        return BatchQueryResponse(results=list(await asyncio.gather(*(self._query(coord, q) for q in req.queries))))

