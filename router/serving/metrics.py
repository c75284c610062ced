"""Prometheus series exposed at GET /metrics (documented in the README)."""
from __future__ import annotations

from typing import Any

from cluster.config import MAX_UPLOAD_BYTES
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """One registry per process: request counts/latency per endpoint, shard search latency, errors, partials."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("prism_requests_total", "HTTP requests", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("prism_request_latency_seconds", "HTTP request latency", ["endpoint", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shard_latency = Histogram("prism_shard_search_latency_seconds", "Latency of one shard's search call",
                                       ["collection", "shard"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("prism_errors_total", "Error answers by code", ["endpoint", "code"],
                              registry=self.registry)
        self.heal_failures = Counter("prism_heal_failures_total", "Replica probes or catch-ups that failed in the "
                                     "background healer", registry=self.registry)
        self.heal_loop_restarts = Counter("prism_heal_loop_restarts_total", "Times the background heal loop ended "
                                          "and was restarted by its supervisor", registry=self.registry)
        self.stages = Histogram("prism_query_stage_seconds", "Time per query stage: plan, embed, fan_out, "
                                "merge_fuse, hydrate", ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.partial = Counter("prism_partial_answers_total", "Query answers missing at least one shard",
                               ["collection"], registry=self.registry)

    def observe_shard(self, collection: str, shard: int, seconds: float) -> None:
        self.shard_latency.labels(collection, str(shard)).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def watch_caches(self, caches: dict[str, Any]) -> None:
        """Expose each cache's hits, misses, evictions, expiries, entries and bytes (read at scrape time)."""
        self.registry.register(_CacheCollector(caches))

    def watch_replicas(self, shards: Any) -> None:
        """Expose anti-entropy's counts per shard; `shards()` yields (collection, ReplicatedShard) pairs."""
        self.registry.register(_ReplicaCollector(shards))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector:
    """prism_cache_{hits,misses,evictions,expired}_total{cache} and prism_cache_{entries,bytes}{cache}."""

    def __init__(self, caches: dict[str, Any]):
        self.caches = caches

    def collect(self):
        for stat in ("hits", "misses", "evictions", "expired"):
            fam = CounterMetricFamily(f"prism_cache_{stat}", f"Cache {stat}", labels=["cache"])
            for name, cache in self.caches.items():
                fam.add_metric([name], getattr(cache.stats, stat))
            yield fam
        for what, get in (("entries", len), ("bytes", lambda c: c.bytes)):
            fam = GaugeMetricFamily(f"prism_cache_{what}", f"Cache {what} held now", labels=["cache"])
            for name, cache in self.caches.items():
                fam.add_metric([name], get(cache))
            yield fam


class _ReplicaCollector:
    """prism_replica_digest_mismatches_total{collection,shard} (replicas anti-entropy found differing from the
    others) and prism_replica_repairs_total{collection,shard} (ids it copied to repair them), as each shard's
    sequencer reports them in its view (or this process counted them, without sequencers); and the journal
    archive's prism_archive_held{collection,shard} and prism_archive_dropped_total{collection,shard}."""

    def __init__(self, shards: Any):
        self.shards = shards

    def collect(self):
        mism = CounterMetricFamily("prism_replica_digest_mismatches", "Replicas anti-entropy found differing from "
                                   "the others", labels=["collection", "shard"])
        reps = CounterMetricFamily("prism_replica_repairs", "Ids anti-entropy copied to repair a differing replica",
                                   labels=["collection", "shard"])
        held = GaugeMetricFamily("prism_archive_held", "Writes the journal archive holds, not shipped yet (the "
                                 "store is unreachable while this grows)", labels=["collection", "shard"])
        dropped = CounterMetricFamily("prism_archive_dropped", "Writes dropped unarchived past the archive's hold "
                                      "bound: point-in-time restore refuses to cross them", labels=["collection", "shard"])
        for name, sh in self.shards():
            mism.add_metric([name, str(sh.shard)], sh.mismatches)
            reps.add_metric([name, str(sh.shard)], sh.repairs)
            archive = sh.archive_status()
            if archive:
                held.add_metric([name, str(sh.shard)], archive["held"])
                dropped.add_metric([name, str(sh.shard)], archive["dropped"])
        yield mism
        yield reps
        yield held
        yield dropped


class ProcessState:
    """What the HTTP middleware and the endpoints of one Serve replica share.

    Serve freezes the FastAPI app with cloudpickle, which hands the middleware its own copy of router.serving.app's
    globals; state kept there silently splits in two. This module is imported by reference, so there is one.
    """

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.max_upload_bytes = MAX_UPLOAD_BYTES
        self.allowed_hosts: tuple[str, ...] | None = None  # router.schema.bodies.allowed_hosts; None: any
        self.guard: Any = None  # router.serving.access.Guard once the ingress is configured
        self.service: Any = None  # router.collection.service.PrismService once the ingress is configured (router.serving.qdrant)


_STATE: ProcessState | None = None


def process_state() -> ProcessState:
    global _STATE
    if _STATE is None:
        _STATE = ProcessState()
    return _STATE
