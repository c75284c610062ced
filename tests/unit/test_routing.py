"""router.routing, the pure core of vector and key placement: k-means, balanced assignment, the shards a point and a
query go to, key pins from filters, the JSON form and the checks of `routing` and `probe`. No Ray, no Milvus: routed
search is checked against exact search over numpy arrays split by the placement."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster.errors import ConfigError, InvalidRequest
from cluster.ring import HashRing
from router.routing import balance, kmeans
from router.routing.keys import key_of, key_string, pinned_keys
from router.routing.placement import Placement
from router.routing.settings import check_probe, check_routing, training_due

ROOT = Path(__file__).resolve().parents[2]


def mixture(n: int, components: int, dim: int, seed: int, spread: float = 0.15, weights=None):
    """(points, their component): a Gaussian mixture with unit-norm centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(components, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    comp = rng.choice(components, size=n, p=weights)
    x = centres[comp] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return x.astype(np.float32), comp


# -- the package's own rule -------------------------------------------------------------------------------------
def test_the_routing_package_imports_only_numpy_the_ring_and_the_errors():
    allowed = {"numpy", "cluster.ring", "cluster.errors"}
    bad = []
    for path in sorted((ROOT / "router" / "routing").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                top = name.split(".")[0]
                if name.startswith("router.routing") or name in allowed or top in sys.stdlib_module_names:
                    continue
                bad.append(f"{path.name}: {name}")
    assert bad == []


# -- k-means ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_kmeans_with_a_fixed_seed_gives_the_same_centroids(metric):
    x, _ = mixture(3000, 12, 16, seed=3)
    a = kmeans.train(x, 24, metric=metric, seed=7)
    b = kmeans.train(x.copy(), 24, metric=metric, seed=7)
    c = kmeans.train(x, 24, metric=metric, seed=8)
    assert a.shape == (24, 16) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_kmeans_recovers_well_separated_clusters(metric):
    x, comp = mixture(2000, 8, 32, seed=11, spread=0.05)
    c = kmeans.train(x, 8, metric=metric, seed=0)
    labels, _ = kmeans.nearest(kmeans.prepare(x, metric), c, metric)
    # every found cluster is exactly one true component, and every component is found
    pairs = {(int(a), int(b)) for a, b in zip(labels, comp)}
    assert len(pairs) == 8 and len({a for a, _ in pairs}) == 8 and len({b for _, b in pairs}) == 8


def test_kmeans_cosine_centroids_are_unit_and_trains_on_a_bounded_sample():
    x, _ = mixture(5000, 4, 8, seed=1)
    c = kmeans.train(x * 10, 16, metric="cosine", seed=0, sample=500)
    assert np.allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    # only the sample is read (the seed's first draw): rows outside it may hold anything, even NaN
    outside = np.ones(len(x), dtype=bool)
    outside[np.random.default_rng(0).choice(len(x), 500, replace=False)] = False
    damaged = x * 10
    damaged[outside] = np.nan
    assert np.array_equal(c, kmeans.train(damaged, 16, metric="cosine", seed=0, sample=500))
    with pytest.raises(InvalidRequest, match="NaN"):
        kmeans.train(damaged, 16, metric="cosine", seed=0, sample=len(x))


def test_kmeans_keeps_every_centroid_in_use_on_duplicate_heavy_data():
    x = np.repeat(np.eye(4, dtype=np.float32), [500, 3, 2, 1], axis=0)
    c = kmeans.train(x, 4, metric="l2", seed=0)
    labels, _ = kmeans.nearest(x, c, "l2")
    assert sorted(np.bincount(labels, minlength=4)) == [1, 2, 3, 500]


@pytest.mark.parametrize("bad, k, why", [
    ([[1.0, float("nan")]] * 4, 2, "NaN"), ([1.0, 2.0], 1, "2-d"), ([[1.0]] * 3, 4, "at least 4"),
    ([[1.0]] * 3, 0, ">= 1"), ([[1.0]] * 3, True, ">= 1")])
def test_kmeans_refuses_what_it_cannot_train_on(bad, k, why):
    with pytest.raises(InvalidRequest, match=why):
        kmeans.train(bad, k, metric="l2")


def test_kmeans_refuses_an_unknown_metric():
    with pytest.raises(InvalidRequest, match="metric"):
        kmeans.train([[1.0]] * 3, 1, metric="hamming")


# -- balanced assignment ----------------------------------------------------------------------------------------
def test_balance_keeps_skewed_sizes_within_20_percent():
    rng = np.random.default_rng(5)
    c = rng.normal(size=(256, 16))
    sizes = (rng.pareto(1.2, size=256) * 50).astype(int) + 1  # a few huge clusters, many small ones
    sizes[:3] = sizes.sum() // 20  # three centroids each a fifth of... well over a third of a shard's mean
    owner = balance.assign(c, sizes, 8, metric="l2")
    assert owner.shape == (256,) and set(owner.tolist()) == set(range(8))
    assert balance.spread(sizes, owner, 8) <= 0.2
    assert np.array_equal(owner, balance.assign(c, sizes, 8, metric="l2"))  # deterministic


@pytest.mark.parametrize("seed", range(40))
def test_balance_within_20_percent_over_random_layouts(seed):
    rng = np.random.default_rng(1000 + seed)
    k, shards, dim = int(rng.integers(16, 300)), int(rng.integers(2, 17)), int(rng.integers(2, 24))
    c = rng.normal(size=(k, dim))
    sizes = rng.pareto(1.5, size=k) * 100 + rng.integers(0, 3, size=k)
    metric = ["cosine", "ip", "l2"][seed % 3]
    owner = balance.assign(c, sizes, shards, metric=metric)
    assert owner.min() >= 0 and owner.max() < shards
    if sizes.max() <= 1.2 * sizes.sum() / shards:  # feasible: no single centroid overfills a shard
        assert balance.spread(sizes, owner, shards) <= 0.2 + 1e-9


def test_balance_keeps_near_centroids_together_when_balance_allows():
    # 8 tight groups of 4 centroids, each group the same size: the perfect answer is one group a shard
    rng = np.random.default_rng(2)
    c = np.repeat(rng.normal(size=(8, 16)), 4, axis=0) + rng.normal(scale=0.01, size=(32, 16))
    owner = balance.assign(c, np.full(32, 100), 8, metric="cosine")
    assert all(len(set(owner[i:i + 4].tolist())) == 1 for i in range(0, 32, 4))
    assert len(set(owner.tolist())) == 8


def test_balance_with_no_points_yet_spreads_the_centroids_and_refuses_bad_input():
    owner = balance.assign(np.eye(16), np.zeros(16), 4, metric="l2")
    assert sorted(np.bincount(owner, minlength=4).tolist()) == [4, 4, 4, 4]
    assert balance.assign(np.eye(3), [1, 2, 3], 1).tolist() == [0, 0, 0]
    with pytest.raises(InvalidRequest, match="sizes"):
        balance.assign(np.eye(3), [1, -2, 3], 2)
    with pytest.raises(InvalidRequest, match="shards"):
        balance.assign(np.eye(3), [1, 2, 3], 0)


def test_balance_is_best_effort_when_one_centroid_is_too_big():
    owner = balance.assign(np.eye(4), [1000, 1, 1, 1], 2, metric="l2")
    # the closest to even it can get: the big one alone, the rest on the other shard (was: either of 1, 2 elsewhere)
    assert owner[1] == owner[2] == owner[3] != owner[0]


# -- placement: where a point lives, which shards a query visits ------------------------------------------------
def trained_placement(x: np.ndarray, shards: int, k: int, metric: str = "cosine") -> Placement:
    c = kmeans.train(x, k, metric=metric, seed=0)
    labels, _ = kmeans.nearest(kmeans.prepare(x, metric), c, metric)
    owners = balance.assign(c, np.bincount(labels, minlength=k), shards, metric=metric)
    return Placement(shards, "vector", space="text", metric=metric).trained(c, owners)


def routed_recall(p: Placement, x: np.ndarray, queries: np.ndarray, probe) -> tuple[float, int]:
    """(mean recall@10 of exact search over the shards `p` visits against exact search over all, most shards seen)."""
    home = p.nearest_shards(x)
    unit = kmeans.prepare(x, "cosine")
    recalls, most = [], 0
    for q in queries:
        truth = set(np.argsort(-(unit @ q), kind="stable")[:10].tolist())
        shards = p.visit(q, probe)
        most = max(most, len(shards))
        pool = np.flatnonzero(np.isin(home, shards))
        routed = set(pool[np.argsort(-(unit[pool] @ q), kind="stable")[:10]].tolist())
        recalls.append(len(truth & routed) / 10)
    return float(np.mean(recalls)), most


def test_routed_search_probe_2_visits_two_shards_with_recall_at_10_over_0_9():
    x, _ = mixture(4000, 32, 32, seed=21, spread=0.4)
    queries, _ = mixture(200, 32, 32, seed=21, spread=0.4)  # the same centres (same seed), fresh noise below
    queries = queries + np.random.default_rng(99).normal(scale=0.02, size=queries.shape).astype(np.float32)
    p = trained_placement(x, 8, 64)
    sizes = np.bincount(p.nearest_shards(x), minlength=8)
    assert np.abs(sizes - sizes.mean()).max() <= 0.2 * sizes.mean()  # points, not only centroids, balanced
    recall, most = routed_recall(p, x, queries, 2)
    assert most <= 2 and recall >= 0.9, recall
    assert routed_recall(p, x, queries, "all") == (1.0, 8)
    # near centroids kept together is what makes few shards enough: the same centroids dealt out at random to the
    # shards find clearly less at probe 1
    dealt = Placement(8, "vector", space="text").trained(p.centroids, np.random.default_rng(0).integers(8, size=64))
    assert routed_recall(p, x, queries, 1)[0] >= routed_recall(dealt, x, queries, 1)[0] + 0.05


def test_visit_follows_the_nearest_centroids_until_probe_distinct_shards():
    c = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
    p = Placement(4, "vector", space="v", metric="l2").trained(c, np.array([2, 2, 0, 1, 3, 3]))
    q = [1.0, 0.0]  # nearest: c0 (shard 2), c1 (shard 2), c2 (shard 0), c3 (1), c5 (3), c4 (3)
    assert p.visit(q, 1) == (2,)
    assert p.visit(q, 2) == (2, 0)
    assert p.visit(q, 3) == (2, 0, 1)
    assert p.visit(q, 4) == p.visit(q, 9) == p.visit(q, "all") == (0, 1, 2, 3)
    assert p.visit_many([q, [-1.0, 0.0]], 1) == [(2,), (3,)]
    assert p.routes("v") and not p.routes("image")
    with pytest.raises(InvalidRequest, match="dimensions"):
        p.visit([1.0, 0.0, 0.0], 1)
    with pytest.raises(InvalidRequest, match="probe"):
        p.visit(q, 0)


def test_visit_with_shards_owning_no_centroid_returns_every_shard_that_holds_vectors():
    p = Placement(4, "vector", space="v", metric="l2").trained(np.eye(2), np.array([1, 1]))
    assert p.visit([1.0, 0.0], 3) == (1,)  # shards 0, 2, 3 hold no point with a vector in v


def test_shard_of_a_point_by_nearest_centroid_else_by_the_ring():
    ring = HashRing(range(4))
    p = Placement(4, "vector", space="v", metric="cosine")
    assert not p.ready and not p.routes("v")
    assert p.shard_of("a", {"v": [1.0, 0.0]}) == ring.get("a")  # untrained: hash
    assert p.visit([1.0, 0.0], 1) == (0, 1, 2, 3)
    t = p.trained(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([3, 1]))
    assert t.ready and t.version == 1 and t.trained(t.centroids, t.owners).version == 2
    assert t.shard_of("a", {"v": [5.0, 0.1]}) == 3 and t.shard_of("a", {"v": [0.1, 5.0]}) == 1
    for pid in ("a", "b", "c", "42"):
        assert t.shard_of(pid, {"image": [1.0]}) == ring.get(pid) == t.shard_of(pid) == t.shard_of(pid, {"v": None})
    assert t.nearest_shards(np.array([[1.0, 0.2], [0.0, 2.0]])).tolist() == [3, 1]
    assert Placement(4).shard_of("a", {"v": [1.0, 0.0]}) == ring.get("a")


# -- key routing -------------------------------------------------------------------------------------------------
def test_key_placement_puts_a_point_on_the_ring_owner_of_its_key():
    ring = HashRing(range(8))
    p = Placement(8, "key", field="tenant")
    assert p.shard_of("id1", payload={"tenant": "acme"}) == ring.get("acme") == p.shard_of("id2", payload={
        "tenant": ["acme"]})
    with pytest.raises(InvalidRequest, match="tenant") as err:
        p.shard_of("id1", payload={"other": 1})
    assert err.value.field == "payload.tenant"
    with pytest.raises(InvalidRequest, match="exactly one value"):
        p.shard_of("id1", payload={"tenant": ["a", "b"]})
    n = Placement(8, "key", field="org", key_type="integer")
    assert n.shard_of("x", payload={"org": 7}) == n.shard_of("y", payload={"org": 7.0}) == ring.get("7")


def test_key_pins_from_term_and_terms_in_filter_and_must_only():
    ring = HashRing(range(8))
    p = Placement(8, "key", field="tenant")
    one = (int(ring.get("acme")),)
    assert p.pinned({"term": {"tenant": "acme"}}) == one
    assert p.pinned({"term": {"tenant": {"value": "acme"}}}) == one
    assert p.pinned({"terms": {"tenant": ["acme", "globex"]}}) == tuple(sorted({ring.get("acme"), ring.get("globex")}))
    assert p.pinned({"bool": {"must": [{"range": {"n": {"gt": 1}}}, {"term": {"tenant": "acme"}}]}}) == one
    assert p.pinned({"bool": {"filter": {"term": {"tenant": "acme"}}}}) == one
    assert p.pinned({"bool": {"filter": [{"bool": {"must": [{"term": {"tenant": "acme"}}]}}]}}) == one
    # two pins narrow each other; two different keys at once: no shard can match
    assert p.pinned({"bool": {"filter": [{"terms": {"tenant": ["acme", "globex"]}}, {"term": {"tenant": "acme"}}]}}) \
        == one
    assert pinned_keys({"bool": {"must": [{"term": {"tenant": "a"}}, {"term": {"tenant": "b"}}]}}, "tenant") \
        == frozenset()
    # should and must_not do not pin; other fields, other clauses, no filter: None (visit every shard)
    for dsl in ({"bool": {"should": [{"term": {"tenant": "acme"}}]}},
                {"bool": {"must_not": [{"term": {"tenant": "acme"}}]}},
                {"bool": {"filter": [{"bool": {"should": [{"term": {"tenant": "acme"}}]}}]}},
                {"term": {"region": "eu"}}, {"match": {"tenant": "acme"}}, {"exists": {"field": "tenant"}},
                {"terms": {"tenant": []}}, {"term": {"tenant": {"value": "a", "boost": 2}}}, None, {}, "acme"):
        assert p.pinned(dsl) is None, dsl
    assert Placement(8).pinned({"term": {"tenant": "acme"}}) is None  # hash routing pins nothing


def test_key_spelling_agrees_with_the_filter_dsl():
    assert key_string("acme") == "acme" and key_string(5) == "5" and key_string(5.5) == "5.5"
    assert key_string("05", "integer") == key_string(5, "integer") == key_string(5.0, "integer") == "5"
    for bad, kind in ((True, "keyword"), (None, "keyword"), ({"a": 1}, "keyword"), (5.5, "integer"),
                      ("x", "integer"), (1, "float")):
        with pytest.raises(InvalidRequest):
            key_string(bad, kind)
    assert key_of({"t": "a"}, "t") == "a"
    with pytest.raises(InvalidRequest, match="payload.t"):
        key_of(None, "t")


# -- JSON ---------------------------------------------------------------------------------------------------------
def test_placements_round_trip_through_json_exactly():
    x, _ = mixture(600, 6, 12, seed=4)
    trained = trained_placement(x, 4, 12, metric="ip")
    for p in (Placement(3), Placement(4, "vector", space="text"), trained,
              Placement(5, "key", field="tenant", key_type="integer")):
        text = p.to_json()
        q = Placement.from_json(text)
        assert json.loads(q.to_json()) == json.loads(text)
        assert (q.method, q.shards, q.space, q.metric, q.field, q.key_type, q.version) == \
            (p.method, p.shards, p.space, p.metric, p.field, p.key_type, p.version)
        if p.centroids is not None:
            assert np.array_equal(q.centroids, p.centroids) and np.array_equal(q.owners, p.owners)
            assert q.visit_many(x[:50], 2) == p.visit_many(x[:50], 2)
            assert q.nearest_shards(x).tolist() == p.nearest_shards(x).tolist()


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d.update(format=2), "format"), (lambda d: d.update(extra=1), "unknown"),
    (lambda d: d.update(owners=[9] * len(d["owners"])), "owners"), (lambda d: d.update(owners=None), "together"),
    (lambda d: d["centroids"].update(data="!!"), "centroids"), (lambda d: d["centroids"].update(shape=[3, 3]),
                                                                 "centroids"),
    (lambda d: d.update(method="magic"), "method"), (lambda d: d.update(shards=0), "shards")])
def test_a_damaged_stored_placement_is_refused_not_guessed(mutate, why):
    p = Placement(2, "vector", space="v").trained(np.eye(4), np.array([0, 1, 0, 1]))
    d = p.to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=why):
        Placement.from_dict(d)
    with pytest.raises(ConfigError, match="JSON"):
        Placement.from_json("{not json")


# -- the settings users write -------------------------------------------------------------------------------------
def test_routing_settings_accepted_and_normalised():
    assert check_routing(None) == check_routing({"method": "hash"}) == {"method": "hash"}
    assert check_routing({"method": "vector", "space": "text"}) == {"method": "vector", "space": "text",
                                                                      "centroids": 256}
    assert check_routing({"method": "vector", "space": "text", "centroids": 64}, dense={"text": "cosine"},
                         shards=8)["centroids"] == 64
    assert check_routing({"method": "key", "field": "tenant"}, mapping={"tenant": "keyword"}) == {
        "method": "key", "field": "tenant"}
    p = Placement.from_setting(check_routing({"method": "vector", "space": "text"}), 4, metric="l2")
    assert (p.method, p.space, p.metric, p.ready) == ("vector", "text", "l2", False)
    assert Placement.from_setting({"method": "key", "field": "t"}, 2).field == "t"


@pytest.mark.parametrize("value, why", [
    ("hash", "expected an object"), ({}, "method"), ({"method": "range"}, "method"),
    ({"method": "hash", "space": "x"}, "only"), ({"method": "vector"}, "space"),
    ({"method": "vector", "space": "text", "centroids": 0}, "centroids"),
    ({"method": "vector", "space": "text", "centroids": 2001}, "from 1 to 2000"),
    ({"method": "vector", "space": "text", "centroids": True}, "centroids"),
    ({"method": "vector", "space": "text", "centroids": "256"}, "centroids"),
    ({"method": "vector", "space": "text", "centroids": 4}, "cannot spread"),
    ({"method": "vector", "space": "nope"}, "no vector space 'nope'"),
    ({"method": "vector", "space": "words"}, "bm25"), ({"method": "key"}, "field"),
    ({"method": "key", "field": "missing"}, "not in the metadata mapping"),
    ({"method": "key", "field": "body"}, "keyword or integer"),
    ({"method": "key", "field": "tenant", "space": "text"}, "only")])
def test_bad_routing_settings_are_refused_with_the_field_named(value, why):
    with pytest.raises(InvalidRequest, match=why) as err:
        check_routing(value, dense={"text": "cosine"}, lexical={"words"}, shards=8,
                      mapping={"tenant": "keyword", "body": "text"})
    assert err.value.status == 422 and err.value.field.startswith("routing")


def test_probe_values():
    assert check_probe(1) == 1 and check_probe(8) == 8 and check_probe("all") == "all"
    for bad in (0, -1, True, 1.5, "2", "ALL", None, [2]):
        with pytest.raises(InvalidRequest, match="probe"):
            check_probe(bad)


def test_training_starts_at_50_points_a_centroid():
    r = {"method": "vector", "space": "t", "centroids": 10}
    assert not training_due(r, 499, trained=False) and training_due(r, 500, trained=False)
    assert not training_due(r, 10_000, trained=True) and not training_due({"method": "hash"}, 10**6, False)
