"""A collection's placement, wired: its `routing` setting checked against the collection (router.routing.settings),
the Placement it builds (router.routing.placement), what `GET /v1/collections/{name}` shows of it, and the shards a
query visits. Pure (no I/O): the coordinator and the service call these."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cluster.collection_spec import CollectionConfig
from router.routing.placement import Placement, Probe
from router.routing.settings import check_probe, check_routing
from router.schema.query import QueryRequest


def checked(cfg: CollectionConfig) -> CollectionConfig:
    """`cfg` with its routing setting checked against its spaces, mapping and shard count, and normalised (defaults
    filled in); InvalidRequest (422) naming the field (`routing.field`, ...) otherwise."""
    routing = check_routing(cfg.routing, dense={n: s.metric for n, s in cfg.spaces.items()}, lexical=cfg.lexical,
                            mapping=cfg.metadata, shards=cfg.shards)
    return cfg if routing == cfg.routing else cfg.model_copy(update={"routing": routing})


def placement_of(cfg: CollectionConfig) -> Placement:
    """The untrained placement of a (checked) collection: vector routing places and routes as hash until trained."""
    routing = cfg.routing or {"method": "hash"}
    space = cfg.spaces.get(routing.get("space", ""))
    return Placement.from_setting(routing, cfg.shards, metric=space.metric if space else "cosine",
                                  key_type=cfg.metadata.get(routing.get("field", ""), "keyword"))


@dataclass
class Progress:
    """A vector-routed collection's rebalance as it goes (router.collection.rebalance writes it, GET shows it)."""

    state: str | None = None  # "training" or "moving" while a rebalance runs; None between them
    auto: bool = False  # this (or the last) rebalance started on its own (settings.training_due)
    moved: int = 0  # points copied to another shard by this (or the last) rebalance
    seconds: float | None = None  # how long the last finished rebalance took
    error: str | None = None  # why the last one failed (rolled back), if it did
    interrupted: bool = False  # the catalog says points were moving when this process started: rebalance again
    estimate: int | None = None  # points held, roughly (router.collection.rebalance.maybe_start counts when due)


def routing_info(cfg: CollectionConfig, placement: Placement, progress: Progress | None = None) -> dict[str, Any]:
    """`routing` as `GET /v1/collections/{name}` shows it: the setting and its state. hash: "hash"; key: "ready";
    vector: "hash" until centroids are trained (points go by the ring meanwhile), "training" and "moving" while a
    rebalance runs (queries visit every shard meanwhile), then "ready"."""
    routing = dict(cfg.routing or {"method": "hash"})
    method = routing.get("method", "hash")
    state = "hash" if method == "hash" or not placement.ready else "ready"
    info: dict[str, Any] = {**routing, "state": state}
    if method == "vector":
        p = progress or Progress()
        if p.state is not None:
            info["state"] = p.state
        elif p.interrupted:
            info["state"] = "moving"
        info["trained"] = placement.version  # trainings so far (0: never)
        info["moved"] = p.moved
        info["seconds"] = p.seconds
        info["auto"] = p.auto  # started on its own once the collection held TRAIN_PER_CENTROID x centroids points
        if p.error:
            info["error"] = p.error
        if p.interrupted and p.state is None:
            info["error"] = "a rebalance was interrupted while moving points: run it again (queries visit every shard)"
    return info


def by_ring(placement: Placement) -> bool:
    """Whether a point's shard follows from its id alone (the ring): hash routing, and vector routing until trained.
    Otherwise reads, deletes and moves by id go to every shard (a broadcast)."""
    return placement.method == "hash" or not placement.ready


def visited(placement: Placement, req: QueryRequest, routed_vectors: Sequence[tuple[str, Any] | None],
            probe: Probe) -> tuple[int, ...]:
    """The shards a query visits, ascending. Key routing: the owners of the keys its top-level filter pins (none
    when it pins two keys at once), else every shard. Trained vector routing: the union over its prefetches of
    each one's `probe` nearest shards; one prefetch outside the routing space (another dense space, bm25, no
    vector) means every shard. `routed_vectors[i]`: prefetch i's (space, vector), None for a lexical one."""
    every = tuple(range(placement.shards))
    if placement.method == "key":
        pinned = placement.pinned(req.filter)
        return every if pinned is None else pinned
    if placement.method != "vector" or not placement.ready or not routed_vectors:
        return every
    probe = check_probe(probe)
    shards: set[int] = set()
    for item in routed_vectors:
        if item is None or not placement.routes(item[0]):
            return every
        shards.update(placement.visit(item[1], probe))
    return tuple(sorted(shards))
