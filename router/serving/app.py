"""The Ray Serve ingress: the only module that imports `ray.serve`. It holds DeploymentHandles and delegates
every endpoint to a plain PrismService. `build_app` is the typed builder that deploy/ and helm/ reference."""

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.config import ClusterConfig
from cluster.errors import InvalidRequest, ModelUnavailable
from router.schema.bodies import allowed_hosts, read_json
from router.serving.edge import ERROR_HANDLERS, Observe, refusal_response
from router.serving.openapi import ACCESS, BODY, READS, WRITES, body_doc, documented, with_schemas
from router.serving.metrics import process_state
from router.serving.aliases import mount as mount_aliases
from router.serving.qdrant.routes import mount as mount_qdrant
from router.serving.snapshot_routes import mount as mount_snapshots
from router.schema.collections import (
    CollectionInfo, CollectionList, DeletedCollection, Health, RebalanceRequest, RebalanceResponse, ReshardRequest,
    ReshardResponse, VerifyResponse,
)
from router.schema.points import (
    CountRequest, CountResponse, DeleteRequest, DeleteResponse, Record, RetrieveRequest, RetrieveResponse,
    ScrollRequest, ScrollResponse, UpdateVectorsRequest, UpsertRequest, UpsertResponse,
)
from router.schema.query import BatchQueryRequest, BatchQueryResponse, QueryRequest, QueryResponse

log = logging.getLogger("prism.ingress")
VERSION = "0.1.0"
DESCRIPTION = ("Sharded multimodal search on Ray Serve and Milvus. Send an API key as `Authorization: Bearer <key>` "
               "or `X-API-Key: <key>` (roles: read, write, admin; `prism keys create`); /health and /docs are open.")
api = FastAPI(title="prism", version=VERSION, description=DESCRIPTION)


def _openapi() -> dict[str, Any]:
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        api.openapi_schema = with_schemas(get_openapi(title=api.title, version=api.version, description=api.description,
                                                  routes=api.routes))
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


api.add_middleware(Observe)
for _exc, _handler in ERROR_HANDLERS.items():
    api.add_exception_handler(_exc, _handler)
mount_qdrant(api)  # the Qdrant-compatible REST API under /qdrant (router/qdrant)
mount_aliases(api)  # /v1/aliases (router/serving/aliases.py)
mount_snapshots(api)  # snapshots and restore (router/serving/snapshot_routes.py)


async def _json(request: Request) -> Any:
    """Parse the body ourselves (router.schema.bodies): a JSON content type, bounded nesting, finite numbers, no lone
    surrogates; malformed JSON is a clear 422 naming the position. The edge bounds the bytes read."""
    return await read_json(request, process_state().max_upload_bytes)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class EncoderDeployment:
    """One encoder (text, or CLIP's text and image towers) behind dynamic batching. A model that cannot load is
    reported, never faked."""

    def __init__(self, name: str, models_dir: str | None = None, device: dict[str, Any] | None = None):
        import ray

        from router.encoding.embed import batch_settings, load_encoder

        t0 = time.monotonic()
        d = device or {}
        self.name = name
        self.error: str | None = None
        # A device that cannot be had (cuda without a GPU) raises ConfigError here: the replica fails to start,
        # and the deployment with it, naming the encoder. Missing weights only make this encoder unavailable.
        try:
            self.encoder = load_encoder(name, models_dir, device=d.get("device", "auto"), dtype=d.get("dtype", "auto"),
                                        assigned_gpus=ray.get_gpu_ids(), batch_size=d.get("batch_size"))
        except ModelUnavailable as exc:
            self.encoder, self.error = None, exc.message
        self.batch = batch_settings(self.encoder.device if self.encoder else "cpu", d.get("batch_size"),
                                    d.get("batch_wait_ms"))
        for method in (self._encode_batch, self._encode_document_batch, self._encode_image_batch):
            method.set_max_batch_size(self.batch[0])
            method.set_batch_wait_timeout_s(self.batch[1])
        self.load_s = round(time.monotonic() - t0, 2)

    def load_seconds(self) -> float:
        """How long this replica took to start (the model load, mostly): `prism up`'s `started in` line."""
        return self.load_s

    def status(self) -> dict[str, Any]:
        if self.encoder is None:
            return {"name": self.name, "available": False, "reason": self.error}
        return {"name": self.name, "available": True, "dim": self.encoder.dim, "max_tokens": self.encoder.max_tokens,
                "modalities": list(self.encoder.modalities), "device": self.encoder.device,
                "dtype": self.encoder.dtype, "max_batch_size": self.batch[0],
                "batch_wait_ms": round(self.batch[1] * 1000, 3)}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.004)
    async def _encode_batch(self, texts: list[str]) -> list[tuple[list[float], bool]]:
        out = await asyncio.to_thread(self.encoder.encode, texts)
        return [(e.vector, e.truncated) for e in out]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.004)
    async def _encode_document_batch(self, texts: list[str]) -> list[tuple[list[float], bool]]:
        out = await asyncio.to_thread(self.encoder.encode_documents, texts)
        return [(e.vector, e.truncated) for e in out]

    async def encode(self, text: str, document: bool = False) -> tuple[list[float], bool]:
        if self.encoder is None:
            raise ModelUnavailable(f"encoder {self.name!r} is unavailable: {self.error}")
        return await (self._encode_document_batch(text) if document else self._encode_batch(text))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.004)
    async def _encode_image_batch(self, images: list[Any]) -> list[tuple[list[float], bool]]:
        out = await asyncio.to_thread(self.encoder.encode_images, images)
        return [(e.vector, e.truncated) for e in out]

    async def encode_image(self, image: Any) -> tuple[list[float], bool]:
        if self.encoder is None:
            raise ModelUnavailable(f"encoder {self.name!r} is unavailable: {self.error}")
        if "image" not in self.encoder.modalities:
            raise InvalidRequest(f"encoder {self.name!r} embeds text only, not images")
        return await self._encode_image_batch(image)


def _grpc_method(name: str):
    """An Ingress method for the gRPC method `name`: Serve's gRPC proxy calls it by that name."""
    async def call(self: "Ingress", request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc(name, request, grpc_context)

    call.__name__ = call.__qualname__ = name
    return call


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
@serve.ingress(api)
class Ingress:
    """HTTP API v1. Every endpoint delegates to PrismService."""

    async def __init__(self, config: dict[str, Any], encoders: dict[str, DeploymentHandle]):
        from router.serving.access import build_guard
        from router.serving.prestart import prestart_catalog
        from router.metadata.store import metadata_store
        from router.collection.service import PrismService
        from router.replication.ray_sequencer import start_ray_sequencers, stop_ray_sequencers
        from shards.actor import start_ray_shards, stop_ray_shards

        t0 = time.monotonic()
        cfg = ClusterConfig.model_validate(config)
        self.state = process_state()
        self.state.max_upload_bytes = cfg.max_upload_bytes
        self.state.allowed_hosts = allowed_hosts(cfg.host, cfg.allowed_hosts)
        self.state.guard = build_guard(cfg)
        self.grpc_max_message_bytes = cfg.grpc_max_message_bytes
        if self.state.guard.required and not len(self.state.guard.keys.refresh()):
            log.warning("API keys are required (host %s, insecure off) but none is configured: every request is "
                        "refused with 401 until one is (`prism keys create`, PRISM_API_KEYS)", cfg.host)
        if cfg.grpc_port and os.environ.get("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE") != str(cfg.grpc_max_message_bytes):
            log.warning("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE is not grpc_max_message_bytes (%d): Serve reads whole gRPC "
                        "messages up to its own bound before prism refuses them", cfg.grpc_max_message_bytes)
        self.encoders = encoders
        server_uri = cfg.milvus.uri if cfg.milvus.mode != "lite" else None
        # The catalog's shard and sequencer actors start while the encoders load (their processes start together);
        # the catalog is opened, as before, once the encoders have said what they can embed.
        statuses, _ = await asyncio.gather(asyncio.gather(*(h.status.remote() for h in encoders.values())),
                                           asyncio.to_thread(prestart_catalog, cfg, server_uri))
        self.startup: dict[str, Any] = {"encoders_wait_s": round(time.monotonic() - t0, 2)}
        self.service = PrismService(
            cfg, encode=self._encode, encode_images=self._encode_images, server_uri=server_uri,
            encoders={st["name"]: st for st in statuses},
            start_shards=lambda c, specs, create=True, first_shard=0: start_ray_shards(
                c, specs, detached=True, create=create, first_shard=first_shard, placement=cfg.placement,
                batching=cfg.batching),
            stop_shards=stop_ray_shards,
            start_sequencers=lambda c, specs, first_shard=0: start_ray_sequencers(
                c, specs, cfg.data_path, timeout_s=cfg.shard_timeout_s, detached=True, first_shard=first_shard,
                placement=cfg.placement, replication=cfg.replication, snapshots=cfg.snapshots),
            stop_sequencers=stop_ray_sequencers, observe_shard=self.state.metrics.observe_shard,
            observe_stage=self.state.metrics.observe_stage, metadata=metadata_store(cfg),
        )
        self.state.metrics.watch_caches({"results": self.service.results, "embeddings": self.service.embeddings})
        self.state.metrics.watch_replicas(lambda: [(name, sh) for name, coord in list(self.service.coordinators.items())
                                                   for sh in coord.shards])
        self.state.service = self.service  # what the /qdrant routes call
        t1 = time.monotonic()
        opened = await asyncio.to_thread(self.service.open_catalog)
        self.startup.update(catalog_s=round(time.monotonic() - t1, 2), collections=len(opened))
        from router.replication.healing import HealLoop

        metrics = self.state.metrics
        self.healer = HealLoop(self.service.heal, failed=metrics.heal_failures.inc,
                               restarted=metrics.heal_loop_restarts.inc)
        self._healer = asyncio.create_task(self.healer.supervise())  # held: a task nobody holds may be collected

    async def startup_timings(self) -> dict[str, Any]:
        """Where this replica's start went (seconds), with each encoder's load: `prism up`'s `started in` line."""
        loads = await asyncio.gather(*(h.load_seconds.remote() for h in self.encoders.values()))
        return {**self.startup, "encoder_load_s": dict(zip(self.encoders, loads))}

    async def _encode(self, name: str, texts: list[str], document: bool = False) -> list[tuple[list[float], bool]]:
        handle = self.encoders.get(name)
        if handle is None:
            raise ModelUnavailable(f"encoder {name!r} is not deployed")
        return list(await asyncio.gather(*(handle.encode.remote(t, document) for t in texts)))

    async def _encode_images(self, name: str, images: list[Any]) -> list[tuple[list[float], bool]]:
        handle = self.encoders.get(name)
        if handle is None:
            raise ModelUnavailable(f"encoder {name!r} is not deployed")
        return list(await asyncio.gather(*(handle.encode_image.remote(img) for img in images)))

    @api.get("/health", response_model=Health)
    async def health(self, request: Request):
        """Liveness, version, each encoder's state, whether API keys are required, and the collections the caller
        may see: all with auth off; with auth on, those of the key sent (none without a valid key). Always open."""
        statuses = await asyncio.gather(*(h.status.remote() for h in self.encoders.values()))
        guard, names = self.state.guard, self.service.list_collections()
        if guard.auth_on:
            who = guard.identify(request.scope["headers"])
            names = [] if who is None else [n for n in names if who.allows("read", n)]
        return {"status": "ok", "version": VERSION, "collections": names,
                "encoders": {s["name"]: s for s in statuses}, "auth": guard.auth_on}

    @api.get("/metrics", response_class=PlainTextResponse, responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
        **documented(ACCESS)})
    async def metrics(self) -> Response:
        """Prometheus text format. Open unless `auth.metrics: keyed` (then a read key)."""
        return Response(self.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/v1/collections", response_model=CollectionList, responses=documented(ACCESS))
    async def list_collections(self, request: Request):
        """The collections this key may see (all of them for an unscoped key or with auth off)."""
        principal = request.scope.get("state", {}).get("principal")
        names = self.service.list_collections()
        if principal is not None and principal.collections is not None:
            names = [n for n in names if n in principal.collections]
        return {"collections": names}

    @api.put("/v1/collections/{name}", response_model=CollectionInfo,
             **body_doc("CollectionSpec", ACCESS + BODY + (409, 502, 503)))
    async def create_collection(self, name: str, request: Request):
        """Create a collection: named spaces, shards, replicas, write quorum, metadata mapping (admin)."""
        return await self.service.create_collection(name, await _json(request))

    @api.get("/v1/collections/{name}", response_model=CollectionInfo, responses=documented(ACCESS + (404,)))
    async def get_collection(self, name: str):
        """Config (with the metadata mapping, dynamic fields included), counts per space, replica states."""
        return await self.service.info(name)

    @api.delete("/v1/collections/{name}", response_model=DeletedCollection,
                responses=documented(ACCESS + (404, 502)))
    async def delete_collection(self, name: str):
        """Drop a collection and all its data (admin)."""
        return await self.service.delete_collection(name)

    @api.post("/v1/collections/{name}/points", response_model=UpsertResponse, **body_doc(UpsertRequest, WRITES))
    async def upsert(self, name: str, request: Request):
        """Insert or replace points; all-or-nothing across Milvus and Elasticsearch (write role)."""
        return await self.service.upsert(name, await _json(request))

    @api.post("/v1/collections/{name}/points/get", response_model=RetrieveResponse, **body_doc(RetrieveRequest, READS))
    async def retrieve(self, name: str, request: Request):
        """Points by id: `{"ids": [...], "with_payload": true | [fields] | {"exclude": [...]}, "with_vectors": false
        | true | [spaces]}`. Ids no shard holds are listed in `missing`; a shard that cannot answer is a 503."""
        return await self.service.retrieve(name, await _json(request))

    @api.post("/v1/collections/{name}/points/scroll", response_model=ScrollResponse, **body_doc(ScrollRequest, READS))
    async def scroll(self, name: str, request: Request):
        """Every point (matching `filter`) in id order, `limit` at a time; pass `next_cursor` back as `cursor`."""
        return await self.service.scroll(name, await _json(request))

    @api.post("/v1/collections/{name}/points/count", response_model=CountResponse, **body_doc(CountRequest, READS))
    async def count(self, name: str, request: Request):
        """How many points match `filter` (all points without one)."""
        return await self.service.count(name, await _json(request))

    @api.get("/v1/collections/{name}/verify", response_model=VerifyResponse,
             responses=documented(ACCESS + (404, 502, 503)))
    async def verify(self, name: str):
        """Do the shards (Milvus) and Elasticsearch hold the same points? Every id the shards hold is looked up in
        Elasticsearch; documents no shard holds are counted. `drift: true` says they differ (admin; `prism
        verify`). It reads the whole collection: run it after an outage, not per request."""
        return await self.service.verify(name)

    @api.get("/v1/collections/{name}/points/{point_id}", response_model=Record,
             responses=documented(ACCESS + (404, 422, 503)))
    async def point(self, name: str, point_id: str, with_vectors: bool = False):
        """One point by id, with its payload (and every space's vector with `?with_vectors=true`); 404 if absent."""
        return await self.service.point(name, point_id, with_vectors)

    @api.post("/v1/collections/{name}/points/vectors", response_model=UpsertResponse,
              **body_doc(UpdateVectorsRequest, WRITES))
    async def update_vectors(self, name: str, request: Request):
        """Replace some spaces' vectors of existing points, given or re-embedded from new sources (write role)."""
        return await self.service.update_vectors(name, await _json(request))

    @api.post("/v1/collections/{name}/points/delete", response_model=DeleteResponse, **body_doc(DeleteRequest, WRITES))
    async def delete_points(self, name: str, request: Request):
        """Delete by ids or by filter (write role)."""
        return await self.service.delete_points(name, await _json(request))

    @api.post("/v1/collections/{name}/query", response_model=QueryResponse, **body_doc(QueryRequest, READS))
    async def query(self, name: str, request: Request):
        """Prefetch per space (text, image or vector), merge each space's shards, fuse, filter."""
        answer = await self.service.query(name, await _json(request))
        if answer.partial:
            self.state.metrics.partial.labels(name).inc()
        return answer

    @api.post("/v1/collections/{name}/reshard", response_model=ReshardResponse,
              **body_doc(ReshardRequest, WRITES + (409,)))
    async def reshard(self, name: str, request: Request):
        """Change the shard count; only points whose ring owner changes move; reads go on (admin)."""
        return await self.service.reshard(name, await _json(request))

    @api.post("/v1/collections/{name}/rebalance", response_model=RebalanceResponse,
              **body_doc(RebalanceRequest, WRITES + (409,)))
    async def rebalance(self, name: str, request: Request):
        """Vector routing: train the centroids and move every point to its nearest centroid's shard; reads and
        writes go on meanwhile (admin). 409 while a rebalance of the collection runs."""
        raw = await request.body()
        return await self.service.rebalance(name, await _json(request) if raw.strip() else {})

    @api.post("/v1/collections/{name}/query/image", response_model=QueryResponse, responses=documented(READS))
    async def query_image(self, name: str, image: UploadFile = File(...), text: str | None = Form(None),
                          params: str | None = Form(None)):
        """Multipart: an image (and optional text), each embedded into its spaces and fused.

        `params` (JSON): {image_spaces?, text_spaces?, limit?, filter?, fusion?, with_payload?}; by default the image
        goes to the CLIP spaces that hold images and the text to the spaces that hold text."""
        data = await image.read(process_state().max_upload_bytes + 1)
        return await self.service.query_image(name, data, text, params)

    @api.post("/v1/collections/{name}/query/batch", response_model=BatchQueryResponse,
              **body_doc(BatchQueryRequest, READS))
    async def query_batch(self, name: str, request: Request):
        """Several queries in one request, answered in order. Each query takes a token from the key's read rate
        (the guard took the first)."""
        body = await _json(request)
        queries = body.get("queries") if isinstance(body, dict) else None
        extra = len(queries) - 1 if isinstance(queries, list) else 0
        rate = request.scope.get("state", {}).get("rate_key")
        if extra > 0 and rate is not None:
            refused = self.state.guard.charge(rate, "read", extra)
            if refused is not None:
                return refusal_response(refused)
        return await self.service.query_batch(name, body)

    # ---- gRPC (cluster/proto/prism/v1/prism.proto): Serve calls these by method name; router.serving.grpc_api runs each
    # through the same guard and service as its HTTP endpoint. ----

    async def _grpc(self, method: str, request: Any, grpc_context: Any) -> Any:
        from router.serving.grpc_api import handle

        t0, status = time.perf_counter(), "OK"
        try:
            answer = await handle(method, request, grpc_context, service=self.service, guard=self.state.guard,
                                  max_message_bytes=self.grpc_max_message_bytes)
            if method == "Query" and answer.partial:
                self.state.metrics.partial.labels(request.collection).inc()
            code = grpc_context.code()
            if code is not None:
                status = getattr(code, "name", str(code))
                self.state.metrics.errors.labels(f"grpc:{method}", dict(grpc_context.trailing_metadata()).get(
                    "prism-error", status.lower())).inc()
            return answer
        finally:
            self.state.metrics.requests.labels(f"grpc:{method}", "GRPC", status).inc()
            self.state.metrics.latency.labels(f"grpc:{method}", "GRPC").observe(time.perf_counter() - t0)

    # prism.v1.Search and prism.v1.Collections, one method per RPC (Serve looks each up by its name).
    Query, QueryBatch, Upsert, Delete, UpdateVectors = (_grpc_method(m) for m in (  # noqa: N815
        "Query", "QueryBatch", "Upsert", "Delete", "UpdateVectors"))
    Create, Get, List, Drop = (_grpc_method(m) for m in ("Create", "Get", "List", "Drop"))  # noqa: N815
    SetAlias, ListAliases, DropAlias = (_grpc_method(m) for m in ("SetAlias", "ListAliases", "DropAlias"))  # noqa: N815

    async def Check(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - grpc.health.v1
        import grpc
        from grpc_health.v1 import health_pb2

        from router.serving.grpc_api import health_status

        status, why = health_status(request.service)
        if status is None:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(why)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)


class BuildArgs(BaseModel):
    """Arguments of `router.serving.app:build_app` in a Serve config: a config file path and/or an inline config."""

    config_path: str | None = None
    config: dict[str, Any] | None = None


ENCODERS = ("minilm", "clip")


def build_app(args: BuildArgs | ClusterConfig | dict[str, Any]) -> serve.Application:
    """The typed app builder: ClusterConfig -> encoder deployments + ingress."""
    from cluster.actor_options import encoder_actor_options
    from cluster.config import load_config, parse_model

    if isinstance(args, ClusterConfig):
        cfg = args
    else:
        b = parse_model(BuildArgs, args, "build args") if isinstance(args, dict) else args
        cfg = load_config(b.config_path, env=True, **(b.config or {}))
    encoders = {
        name: EncoderDeployment.options(name=f"encoder_{name}", num_replicas=cfg.encoder_replicas,
                                        ray_actor_options=encoder_actor_options(cfg.placement)).bind(
            name, cfg.models_dir, {"device": cfg.encoder_device, "dtype": cfg.encoder_dtype,
                                   "batch_size": cfg.encoder_batch_size, "batch_wait_ms": cfg.encoder_batch_wait_ms})
        for name in ENCODERS
    }
    return Ingress.options(**cfg.ingress_options()).bind(cfg.model_dump(), encoders)


def start_serve(cfg: ClusterConfig, app_name: str = "prism") -> None:
    """Start Serve's HTTP (and, unless grpc_port is 0, gRPC) ingress on the configured host and ports and deploy the
    app (blocks until it is running)."""
    from ray.serve.config import gRPCOptions

    from router.serving.grpc_api import SERVICER_FUNCTIONS

    grpc = gRPCOptions(port=cfg.grpc_port, grpc_servicer_functions=SERVICER_FUNCTIONS) if cfg.grpc_port else None
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, grpc_options=grpc)
    serve.run(build_app(cfg), name=app_name, route_prefix="/")


def shutdown_serve() -> None:
    serve.shutdown()
