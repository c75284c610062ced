"""router.collection.placing: which shards a query visits (the choice the pipeline makes for every query, per
prefetch and probe), and what GET shows of a collection's routing while it is trained and moved."""
from __future__ import annotations

import numpy as np

from cluster.collection_spec import CollectionConfig
from router.collection import placing
from router.routing.placement import Placement
from router.schema.query import QueryRequest

C = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
TRAINED = Placement(4, "vector", space="v", metric="l2").trained(C, np.array([2, 2, 0, 1, 3, 3]))
EVERY = (0, 1, 2, 3)


def req(n: int = 1, **kw) -> QueryRequest:
    return QueryRequest.model_validate({"prefetch": [{"space": "v", "vector": [1.0, 0.0]}] * n, **kw})


def test_a_routed_prefetch_visits_its_nearest_centroids_shards_until_probe():
    assert placing.visited(TRAINED, req(), [("v", [1.0, 0.0])], 1) == (2,)
    assert placing.visited(TRAINED, req(), [("v", [1.0, 0.0])], 2) == (0, 2)  # ascending
    assert placing.visited(TRAINED, req(), [("v", [1.0, 0.0])], "all") == EVERY
    assert placing.visited(TRAINED, req(filter={"term": {"n": 1}}), [("v", [1.0, 0.0])], 1) == (2,)


def test_a_fused_query_visits_the_union_of_its_routed_prefetches():
    assert placing.visited(TRAINED, req(2), [("v", [1.0, 0.0]), ("v", [-1.0, 0.0])], 1) == (2, 3)


def test_other_spaces_bm25_and_no_vector_visit_every_shard():
    assert placing.visited(TRAINED, req(2), [("v", [1.0, 0.0]), ("image", [1.0, 0.0])], 1) == EVERY
    assert placing.visited(TRAINED, req(2), [("v", [1.0, 0.0]), None], 1) == EVERY  # a bm25 prefetch
    assert placing.visited(TRAINED, req(), [], 1) == EVERY  # filter-only
    untrained = Placement(4, "vector", space="v", metric="l2")
    assert placing.visited(untrained, req(), [("v", [1.0, 0.0])], 1) == EVERY
    assert placing.visited(Placement(4), req(), [("v", [1.0, 0.0])], 1) == EVERY


def test_routing_state_from_hash_through_training_and_moving_to_ready():
    cfg = CollectionConfig.model_validate({"name": "c", "spaces": {"v": {"dim": 2}}, "shards": 4,
                                           "routing": {"method": "vector", "space": "v", "centroids": 6}})
    untrained = Placement(4, "vector", space="v")
    progress = placing.Progress()
    assert placing.routing_info(cfg, untrained, progress)["state"] == "hash"
    progress.state, progress.auto = "training", True
    info = placing.routing_info(cfg, untrained, progress)
    assert info["state"] == "training" and info["auto"] and info["trained"] == 0
    progress.state, progress.moved = "moving", 12
    assert placing.routing_info(cfg, TRAINED, progress)["moved"] == 12
    progress.state, progress.seconds = None, 1.5
    info = placing.routing_info(cfg, TRAINED, progress)
    assert info == {"method": "vector", "space": "v", "centroids": 6, "state": "ready", "trained": 1, "moved": 12,
                    "seconds": 1.5, "auto": True}
    progress.interrupted = True
    assert placing.routing_info(cfg, TRAINED, progress)["state"] == "moving"
