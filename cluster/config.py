"""One validated configuration, flowing one way: YAML/env -> ClusterConfig -> builders -> constructors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from cluster.actor_options import HEAD_RESOURCE
from cluster.auth import KEYS_FILE, KeyRecord
from cluster.collection_spec import CollectionConfig, Strict
from cluster.errors import ConfigError, InvalidRequest

DEFAULT_PORT = 8000
DEFAULT_GRPC_PORT = 9000
DEFAULT_DATA_DIR = ".prism"
# Shards a vector-routed query visits per prefetch in the routing space unless it says (`probe`): the owners of
# its nearest centroids until this many distinct shards (router.routing.placement.Placement.visit).
DEFAULT_PROBE = 2
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # request bodies, uploads and images: larger is a 413
MAX_IMAGE_PIXELS = 40_000_000       # decoded image size; larger is refused as a decompression bomb
MAX_REQUEST_PIXELS = 100_000_000    # all images of one request (e.g. 8 photos of 12 MP)


class MilvusConfig(Strict):
    """Where shard collections live: embedded milvus-lite, an external server, or the bundled 2.3 standalone."""

    mode: Literal["lite", "server", "bundled"] = "lite"
    uri: str | None = None
    token: str | None = None
    gpu: bool = False

    @model_validator(mode="after")
    def _uri_for_server(self) -> "MilvusConfig":
        if self.mode == "server" and not self.uri:
            raise ValueError("milvus mode 'server' needs a uri, e.g. 'http://milvus:19530'")
        if self.mode == "lite" and self.uri:
            raise ValueError(f"milvus mode 'lite' takes no uri (got {self.uri!r}); use mode 'server'")
        if self.gpu and self.mode == "lite":
            raise ValueError("gpu=true needs a GPU-capable Milvus server, not milvus-lite")
        return self


class ElasticsearchConfig(Strict):
    """The metadata store: the bundled ES-API server (noida-db), an external Elasticsearch, or off."""

    mode: Literal["bundled", "external", "off"] = "bundled"
    url: str | None = None
    api_key: str | None = None
    username: str | None = None
    password: str | None = None

    @model_validator(mode="after")
    def _url_for_external(self) -> "ElasticsearchConfig":
        if self.mode == "external" and not self.url:
            raise ValueError("elasticsearch mode 'external' needs a url, e.g. 'https://es:9200'")
        return self


class FilterSettings(Strict):
    """How filters are planned; `mode` other than auto forces one plan path (for tests and comparisons)."""

    mode: Literal["auto", "pushdown", "prefilter", "postfilter"] = "auto"
    prefilter_max_ids: int = Field(default=10_000, ge=1, le=10_000)  # <= Elasticsearch's max_result_window
    postfilter_overfetch: int = Field(default=4, ge=2, le=64)
    postfilter_max_rounds: int = Field(default=6, ge=1, le=20)


class ImageLimits(Strict):
    """Image inputs: size limits checked before decoding; URLs only when explicitly allowed."""

    max_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=1024)         # one image's encoded bytes
    max_pixels: int = Field(default=MAX_IMAGE_PIXELS, ge=1024)        # one image (read from its header)
    # All images of one request together (headers' pixel counts, before decoding): more is a 413 for the request.
    max_request_pixels: int = Field(default=MAX_REQUEST_PIXELS, ge=1024)
    # Decoding (and fetching) runs in this many threads per ingress process, off the event loop.
    decode_workers: int = Field(default=2, ge=1, le=64)
    # Decoded images are shrunk at once until their shorter side is this (CLIP reads 224 px; JPEGs are decoded at
    # a reduced scale to begin with), so a request holds small images only.
    downscale_side: int = Field(default=448, ge=64, le=8192)
    allow_network: bool = False  # http(s) image URLs; public addresses only, no redirects, bounded size and time
    fetch_timeout_s: float = Field(default=10.0, gt=0, le=120)        # one URL, connect to last byte


class CacheSettings(Strict):
    """Per ingress replica. Results: keyed by the collection's write version (any write through this replica
    invalidates) and the normalised request, bounded by entries, bytes and a TTL (which also bounds how long a
    write through another ingress replica can go unseen). Embeddings: query texts per encoder."""

    results_max_entries: int = Field(default=10_000, ge=1)
    results_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    results_ttl_s: float = Field(default=30.0, gt=0)
    embeddings_max_entries: int = Field(default=50_000, ge=1)
    embeddings_max_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)


class BatchSettings(Strict):
    """Cross-request micro-batching of shard searches: concurrent queries to one shard go as one call, and the
    shard runs compatible searches as one Milvus search (nq > 1). A lone query is never held back beyond
    `window_ms` (0: not at all; queries batch only while an earlier call to the shard is in flight)."""

    enabled: bool = True
    window_ms: float = Field(default=0.0, ge=0, le=50)
    max_specs: int = Field(default=64, ge=1, le=4096)
    # Group commit at each shard replica (shards.group_commit): concurrent searches from every caller (every ingress
    # replica) share one Milvus search, so more ingress replicas do not mean smaller batches. Off: each call to the
    # replica searches alone (to compare). Read when a replica's actor starts.
    replica_enabled: bool = True
    replica_max_vectors: int = Field(default=64, ge=1, le=4096)  # query vectors in one batch at a replica


class ReplicationSettings(Strict):
    """How each shard's sequencer keeps its replicas equal (docs/operations.md, "Replica agreement")."""

    # The sequencer's own heal pass (probe dead replicas, replay missed writes): it does not wait for an ingress.
    heal_interval_s: float = Field(default=1.0, gt=0, le=3600)
    # Anti-entropy: replicas compared by digest this often (and right after a replica restart); 0: off.
    anti_entropy_interval_s: float = Field(default=30.0, ge=0, le=86_400)
    # Each replica rebuilds its digest by a full scan this often (catches data changed behind prism's back).
    # Measured (docs/benchmarks.md, anti-entropy): the scan is most of anti-entropy's idle cost, hence 6 h.
    digest_rescan_s: float = Field(default=21_600.0, gt=0, le=7 * 86_400)


class PlacementConfig(Strict):
    """Ray resources of prism's actors. Only encoders use GPUs: shard actors are Milvus clients and compute
    nothing on one (GPU indexes run inside a GPU-enabled Milvus, whose query and index nodes hold the GPUs)."""

    encoder_num_gpus: float = Field(default=0.0, ge=0, le=8)
    # Place the ingress replicas on the Ray head node, beside the sequencers: where the data dir (the catalog they
    # write) is a volume of the head pod only (the Helm chart's ReadWriteOnce persistence).
    ingress_on_head: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_shard_gpus(cls, data: Any) -> Any:
        if isinstance(data, dict) and "shard_num_gpus" in data:
            raise ValueError(f"shard_num_gpus={data['shard_num_gpus']!r} is gone: shard actors are Milvus clients and "
                             "use no GPU; GPU indexes need GPUs on Milvus's query and index nodes (milvus.gpu: true)")
        return data


class RateLimits(Strict):
    """Token buckets per API key (per client address when auth is off), per ingress replica: each of N ingress
    replicas enforces rate / N. None: no limit. A refused request is a 429 with Retry-After."""

    read_per_s: float | None = Field(default=None, gt=0)   # queries and GETs
    write_per_s: float | None = Field(default=None, gt=0)  # upserts, deletes, vector updates, admin calls
    burst_s: float = Field(default=1.0, gt=0, le=3600)     # a bucket holds rate x burst_s requests (at least 1)


class AuthConfig(Strict):
    """API keys (as salted hashes; `prism keys create` makes them) and what stays open. With no key anywhere,
    auth is off and `prism up` binds only loopback unless --insecure."""

    keys: list[KeyRecord] = Field(default_factory=list)
    keys_file: str | None = None  # default DATA_DIR/api-keys.json; re-read within a second of any change
    metrics: Literal["open", "keyed"] = "open"  # keyed: GET /metrics needs a read key
    rate_limits: RateLimits = Field(default_factory=RateLimits)


class StrictLimits(Strict):
    """Request bounds enforced before any work (each violation a 422 naming the field and the limit)."""

    max_limit: int = Field(default=1_000, ge=1, le=10_000)            # limit + offset of a query
    max_prefetch: int = Field(default=8, ge=1, le=16)                 # prefetches in one query
    max_prefetch_limit: int = Field(default=2_000, ge=1, le=10_000)   # a prefetch's own limit
    max_ef: int = Field(default=4_096, ge=1, le=32_768)               # params.ef (HNSW)
    max_nprobe: int = Field(default=1_024, ge=1, le=65_536)           # params.nprobe (IVF)
    max_batch_queries: int = Field(default=64, ge=1, le=64)           # queries in one batch request
    max_filter_depth: int = Field(default=16, ge=1, le=30)            # nested bool levels of a filter
    max_filter_clauses: int = Field(default=256, ge=1, le=10_000)     # leaves + bool nodes of a filter
    max_upsert_points: int = Field(default=2_000, ge=1, le=2_000)     # points (or ids) in one write request
    max_shards: int = Field(default=64, ge=1, le=256)                 # shards of a new collection
    max_replicas: int = Field(default=4, ge=1, le=8)                  # replicas of a new collection
    max_collections: int = Field(default=1_000, ge=1, le=100_000)     # collections in the cluster
    # ids one scroll request examines at most when Elasticsearch must confirm its filter: past it the page comes
    # back short, with a cursor that goes on from there and a note saying so (the work per request is bounded).
    max_scroll_examined: int = Field(default=20_000, ge=10, le=1_000_000)
    # Source text an encoder embeds (long ones are chunked into overlapping windows and averaged): per document
    # (one payload field feeding one space) and per write request; the encoder's work grows with both.
    max_document_chars: int = Field(default=100_000, ge=1, le=8_388_608)
    max_request_document_chars: int = Field(default=2_000_000, ge=1, le=8_388_608)


class ArchiveSettings(Strict):
    """The journal archive (router.replication.archive): each shard's writes shipped to the snapshot store, so that
    a restore can replay them up to a moment after a snapshot."""

    enabled: bool = True
    segment_ops: int = Field(default=1000, ge=1)                      # writes per segment file, at most
    segment_bytes: int = Field(default=16 * 1024 ** 2, ge=1)          # ship once this much is held
    interval_s: float = Field(default=5.0, gt=0)                      # ship what is held at least this often
    # An unreachable store: writes held at most this many (or bytes); past it the oldest are dropped, counted in
    # status and metrics, and recorded as a gap that point-in-time restore refuses to cross.
    hold_ops: int = Field(default=200_000, ge=1)
    hold_bytes: int = Field(default=1024 ** 3, ge=1)


class SnapshotSettings(Strict):
    """Where snapshots are kept (cluster.snapshot_store): a directory, or an S3-compatible bucket through fsspec."""

    # None: DATA_DIR/snapshots. A path, `file:///path` or `s3://bucket/prefix`.
    url: str | None = None
    # fsspec storage options, e.g. {"endpoint_url": "http://minio:9000", "key": ..., "secret": ...} for S3 (or the
    # usual AWS environment variables). Kept in the cluster config only, never in a snapshot.
    options: dict[str, Any] = Field(default_factory=dict)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)


class ClusterConfig(Strict):
    """Everything `prism up` and the Serve app need."""

    data_dir: str = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    # The HTTP front door. haproxy: Ray Serve's HAProxy ingress, forwarding straight to the ingress replicas
    # (each replica serves HTTP itself; no Python proxy hop). proxy: Serve's Python proxy. See docs/operations.md.
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    # haproxy: a client must send a request's headers (and the first buffer of its body) within this many seconds,
    # else 408 and the connection is closed (slowloris; cluster/haproxy_guard.py). Ray's own config waits an hour.
    http_request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    # The gRPC front door (cluster/proto/prism/v1/prism.proto) on the same host, through the same ingress; 0: off.
    grpc_port: int = Field(default=DEFAULT_GRPC_PORT, ge=0, le=65535)
    # An existing Ray cluster to attach to (its GCS host:port, as `ray start --head` printed it); None: prism up
    # starts a single-node Ray of its own. Its processes need the cluster's token (RAY_AUTH_TOKEN or
    # ~/.ray/auth_token) and RAY_AUTH_MODE=token.
    ray_address: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$")
    milvus: MilvusConfig = Field(default_factory=MilvusConfig)
    elasticsearch: ElasticsearchConfig = Field(default_factory=ElasticsearchConfig)
    filters: FilterSettings = Field(default_factory=FilterSettings)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    batching: BatchSettings = Field(default_factory=BatchSettings)
    replication: ReplicationSettings = Field(default_factory=ReplicationSettings)
    shard_timeout_s: float = Field(default=10.0, gt=0, le=300)
    query_budget_ms: int | None = Field(default=None, ge=1, le=600_000)  # default per-request budget_ms
    # A query's `probe` when it gives none: an integer >= 1, or "all" (vector routing visits every shard).
    query_probe: Annotated[int, Field(strict=True, ge=1)] | Literal["all"] = DEFAULT_PROBE
    # Payloads return with the search while shards x prefetch limits <= this; above it the page is hydrated in a
    # second round trip to the owning shards. 0: always hydrate.
    inline_payload_max: int = Field(default=256, ge=0, le=100_000)
    hedge_reads: bool = True  # replicas >= 2: a read slower than the replica's p95 also goes to the next replica
    # replicas >= 2: spread = each read to the replica with the least (outstanding x latency EWMA) of two drawn at
    # random; sticky = every read of a shard to one preferred replica (the others fail over). Failover, hedging and
    # which replicas are readable are the same in both (router/replication/selection.py).
    read_replicas: Literal["spread", "sticky"] = "spread"
    max_upload_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=1024)
    # The largest gRPC request message (bytes). Serve's gRPC servers read it from RAY_SERVE_GRPC_MAX_MESSAGE_SIZE,
    # which `prism up` sets from here (Kubernetes: the pods' env); the ingress also refuses larger ones itself.
    grpc_max_message_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=1024, le=(2 << 30) - 1)
    # Host names HTTP requests may be addressed to (the Host header; `*` any, `*.example.com` its subdomains).
    # Unset: loopback names when `host` is a loopback address (DNS rebinding cannot reach prism), else any.
    allowed_hosts: list[str] | None = None
    encoder_replicas: int = Field(default=1, ge=1, le=16)
    # Ray Serve replicas of the ingress (HTTP and gRPC). Any number: each shard's writes are ordered by its
    # sequencer actor (docs/operations.md, "Write ordering"), not by an ingress.
    ingress_replicas: int = Field(default=1, ge=1, le=16)
    # Set: Serve autoscales the ingress between ingress_replicas and this many replicas (by ongoing requests).
    ingress_max_replicas: int | None = Field(default=None, ge=1, le=64)
    # Where encoders run: auto = cuda when Ray gave the replica a GPU (placement.encoder_num_gpus) and torch sees
    # one, else cpu; cuda where none is visible is a startup error. dtype auto = float16 on cuda, float32 on cpu.
    encoder_device: Literal["auto", "cpu", "cuda"] = "auto"
    encoder_dtype: Literal["auto", "float32", "float16"] = "auto"
    encoder_batch_size: int | None = Field(default=None, ge=1, le=4096)      # None: 256 on cuda, 32 on cpu
    encoder_batch_wait_ms: float | None = Field(default=None, ge=0, le=1000)  # None: 2 ms on cuda, 4 ms on cpu
    models_dir: str | None = None  # where CLIP weights are looked for (else PRISM_MODELS_DIR, else the HF cache)
    images: "ImageLimits" = Field(default_factory=lambda: ImageLimits())
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: StrictLimits = Field(default_factory=StrictLimits)
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
    # Serve without API keys on a non-loopback address (anyone who reaches the port may do anything).
    insecure: bool = False
    collections: list[CollectionConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ingress_range(self) -> "ClusterConfig":
        if self.ingress_max_replicas is not None and self.ingress_max_replicas < self.ingress_replicas:
            raise ValueError(f"ingress_max_replicas ({self.ingress_max_replicas}) must be at least ingress_replicas "
                             f"({self.ingress_replicas})")
        return self

    def ingress_options(self) -> dict:
        """The Serve deployment options of the ingress: a fixed replica count, or an autoscaling range."""
        out: dict = ({"num_replicas": self.ingress_replicas} if self.ingress_max_replicas is None else
                     {"autoscaling_config": {"min_replicas": self.ingress_replicas,
                                             "max_replicas": self.ingress_max_replicas}})
        if self.placement.ingress_on_head:  # Ray's own resource of the head node: a sliver of it per replica
            out["ray_actor_options"] = {"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}}
        return out

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def keys_file(self) -> Path:
        return Path(self.auth.keys_file).expanduser().resolve() if self.auth.keys_file else self.data_path / KEYS_FILE


def parse_model(model: type[BaseModel], data: Any, what: str) -> Any:
    """Validate `data` into `model`, turning pydantic errors into one InvalidRequest naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(format_validation_error(exc, what), field=first_error_field(exc)) from None


def first_error_field(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return ".".join(str(p) for p in errors[0]["loc"]) if errors else None


def format_validation_error(exc: ValidationError, what: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or what
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid {what}: " + "; ".join(parts)


ENV_OVERRIDES = {
    # variable -> (section, key): how Kubernetes Secrets reach the config without being written into it
    "PRISM_MILVUS_URI": ("milvus", "uri"),
    "PRISM_MILVUS_TOKEN": ("milvus", "token"),
    "PRISM_ES_URL": ("elasticsearch", "url"),
    "PRISM_ES_API_KEY": ("elasticsearch", "api_key"),
    "PRISM_ES_USERNAME": ("elasticsearch", "username"),
    "PRISM_ES_PASSWORD": ("elasticsearch", "password"),
}


def apply_env(data: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Overlay the PRISM_* variables that are set (non-empty) onto a raw config mapping; returns a new mapping."""
    env = os.environ if environ is None else environ
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            out.setdefault(section, {})
            out[section] = {**out[section], key: env[var]}
    return out


def load_config(path: str | os.PathLike | None = None, *, env: bool = False, **overrides: Any) -> ClusterConfig:
    """Read a YAML config (or defaults), apply top-level overrides (then PRISM_* variables if `env`), validate."""
    import yaml

    data: dict[str, Any] = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist", field="config")
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise InvalidRequest(f"config {str(path)!r} must be a mapping, got {type(data).__name__}")
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    if env:
        data = apply_env(data)
    return parse_model(ClusterConfig, data, "config")
