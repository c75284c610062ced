"""A collection's placement, wired: its `routing` setting checked against the collection (router.routing.settings),
the Placement it builds (router.routing.placement), what `GET /v1/collections/{name}` shows of it, and the shards a
query visits. Pure (no I/O): the coordinator and the service call these."""
from __future__ import annotations

from collections.abc import Sequence
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


def routing_info(cfg: CollectionConfig, placement: Placement) -> dict[str, Any]:
    """`routing` as `GET /v1/collections/{name}` shows it: the setting and its state. hash: "hash"; key: "ready";
    vector: "hash" until centroids are trained (points go by the ring meanwhile), then "ready"."""
    routing = dict(cfg.routing or {"method": "hash"})
    method = routing.get("method", "hash")
    state = "hash" if method == "hash" or not placement.ready else "ready"
    info: dict[str, Any] = {**routing, "state": state}
    if method == "vector":
        info["trained"] = placement.version  # trainings so far (0: never)
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
