"""Existing qdrant-client code against prism, unchanged: one scenario run against a real `prism up` (through
/qdrant) and against qdrant-client's own local mode (`QdrantClient(":memory:")`), answers compared: ids in order,
scores within 1e-4, ties (scores within 1e-4) compared as groups. Then one test per filter condition type, id
round trips, and every class of bad input a 4xx that leaves nothing written."""
from __future__ import annotations

import json
import uuid

import importlib.metadata

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.common.version_check import is_compatible
from qdrant_client.http.exceptions import UnexpectedResponse

pytestmark = pytest.mark.slow
TOL = 1e-4
N = 240
WORDS = "red fox jumps over lazy dog quick brown cat sleeps under warm sun".split()


@pytest.fixture(scope="module")
def clients(prism_server):
    remote = QdrantClient(url=prism_server.url, prefix="qdrant", timeout=120)
    local = QdrantClient(":memory:")
    yield remote, local
    remote.close()
    local.close()


def _id(i: int):
    return i if i % 4 else str(uuid.UUID(int=(i * 2654435761) % 2**128))  # ints and UUIDs mixed


def _points(rng: np.random.Generator, start: int, stop: int) -> list[models.PointStruct]:
    out = []
    for i in range(start, stop):
        payload = {"color": ["red", "green", "blue"][i % 3], "n": int(i % 17), "price": float(i % 40) + 0.5,
                   "tags": [t for t in "abcd" if (i >> "abcd".index(t)) & 1], "in_stock": bool(i % 2),
                   "when": f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
                   "desc": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40))}
        if i % 11 == 0:
            del payload["color"]
        out.append(models.PointStruct(id=_id(i), payload=payload, vector={
            "text": rng.standard_normal(8).tolist(), "image": rng.standard_normal(6).tolist(),
            "dot": rng.standard_normal(4).tolist()}))
    return out


def _create_scene(c, name: str, shards: int) -> None:
    """Three named vectors (Cosine, Euclid, Dot; exact search: hnsw m=0 is prism's FLAT) and a text payload index."""
    c.create_collection(name, vectors_config={
        "text": models.VectorParams(size=8, distance=models.Distance.COSINE),
        "image": models.VectorParams(size=6, distance=models.Distance.EUCLID),
        "dot": models.VectorParams(size=4, distance=models.Distance.DOT)},
        hnsw_config=models.HnswConfigDiff(m=0), shard_number=shards)
    c.create_payload_index(name, "desc", models.PayloadSchemaType.TEXT)


@pytest.fixture(scope="module")
def loaded(clients):
    """The same collection on both sides: three named vectors (Cosine, Euclid, Dot; exact search: hnsw m=0 is
    prism's FLAT), three shards, a text payload index, points upserted in batches."""
    rng = np.random.default_rng(31)
    for c in clients:
        _create_scene(c, "qd_scene", shards=3)
    for start in range(0, N, 60):
        batch = _points(rng, start, start + 60)
        for c in clients:
            c.upsert("qd_scene", batch, wait=True)
    return clients


def same_ranking(got, want, limit: int) -> None:
    """`want` is the oracle's answer asked with a larger limit, so a tie cut at `limit` is seen whole."""
    assert len(got) == min(limit, len(want)), ([p.id for p in got], [p.id for p in want])
    assert len({str(p.id) for p in got}) == len(got)
    for i, p in enumerate(got):
        assert abs(p.score - want[i].score) <= TOL, (i, p, want[i])
        group = {w.id for w in want if abs(w.score - p.score) <= TOL}
        assert p.id in group, (i, p.id, p.score, [(w.id, w.score) for w in want[:limit + 3]])


def both(clients, limit: int, **kw):
    remote, local = clients
    got = remote.query_points("qd_scene", limit=limit, **kw).points
    want = local.query_points("qd_scene", limit=limit + 25, **kw).points
    same_ranking(got, want, limit)
    return got, want


def queries(rng):
    return [(rng.standard_normal(8).tolist(), rng.standard_normal(6).tolist(), rng.standard_normal(4).tolist())
            for _ in range(4)]


def test_counts_with_and_without_a_filter(loaded):
    remote, local = loaded
    assert remote.count("qd_scene").count == local.count("qd_scene").count == N
    red = models.Filter(must=[models.FieldCondition(key="color", match=models.MatchValue(value="red"))])
    assert remote.count("qd_scene", red).count == local.count("qd_scene", red).count > 0


def test_nearest_queries_plain_filtered_thresholded_and_paged(loaded):
    flt = models.Filter(must=[models.FieldCondition(key="n", range=models.Range(gte=3, lt=12))],
                        must_not=[models.FieldCondition(key="color", match=models.MatchValue(value="blue"))])
    for t, im, d in queries(np.random.default_rng(1)):
        for using, q in (("text", t), ("image", im), ("dot", d)):
            both(loaded, 10, query=q, using=using)
            got, want = both(loaded, 7, query=q, using=using, query_filter=flt, with_payload=True)
            assert [p.payload for p in got] == [w.payload for w in want[:7]]
            both(loaded, 5, query=q, using=using, offset=6)
        both(loaded, 10, query=t, using="text", score_threshold=0.3)
        both(loaded, 10, query=im, using="image", score_threshold=3.0)  # Euclid: distances below it
        both(loaded, 10, query=models.NearestQuery(nearest=t), using="text", with_vectors=["text"])


def test_prefetch_with_rrf_dbsf_and_rrf_with_k_and_weights(loaded):
    for t, im, d in queries(np.random.default_rng(2)):
        pre = [models.Prefetch(query=t, using="text", limit=20), models.Prefetch(query=im, using="image", limit=20),
               models.Prefetch(query=d, using="dot", limit=15)]
        both(loaded, 10, prefetch=pre, query=models.FusionQuery(fusion=models.Fusion.RRF))
        both(loaded, 10, prefetch=pre, query=models.FusionQuery(fusion=models.Fusion.DBSF), with_payload=True)
        both(loaded, 10, prefetch=pre, query=models.RrfQuery(rrf=models.Rrf(k=5, weights=[2.0, 0.5, 1.0])))
        both(loaded, 8, prefetch=pre, query=models.RrfQuery(rrf=models.Rrf(k=60)), offset=4)
        both(loaded, 10, prefetch=pre, query=models.FusionQuery(fusion=models.Fusion.RRF), score_threshold=0.4)


def test_filtered_and_nested_prefetches_and_rescoring(loaded):
    red = models.Filter(must=[models.FieldCondition(key="color", match=models.MatchValue(value="red"))])
    cheap = models.Filter(must=[models.FieldCondition(key="price", range=models.Range(lt=20))])
    for t, im, d in queries(np.random.default_rng(3)):
        inner = models.Prefetch(prefetch=[models.Prefetch(query=t, using="text", limit=15, filter=cheap),
                                          models.Prefetch(query=im, using="image", limit=15)],
                                query=models.FusionQuery(fusion=models.Fusion.DBSF), limit=12)
        both(loaded, 10, prefetch=[inner, models.Prefetch(query=d, using="dot", limit=10)],
             query=models.FusionQuery(fusion=models.Fusion.RRF), query_filter=red)
        both(loaded, 6, prefetch=models.Prefetch(query=t, using="text", limit=40), query=im, using="image",
             with_payload=["color", "n"])
        both(loaded, 6, prefetch=[inner], query=d, using="dot", query_filter=red)


def test_nearest_by_point_id_leaves_that_point_out(loaded):
    remote, local = loaded
    for pid in (_id(5), _id(8)):
        got = remote.query_points("qd_scene", query=pid, using="text", limit=6).points
        want = local.query_points("qd_scene", query=pid, using="text", limit=30).points
        same_ranking(got, want, 6)
        assert pid not in {p.id for p in got}


def test_query_batch(loaded):
    remote, local = loaded
    t, im, _ = queries(np.random.default_rng(4))[0]
    reqs = [models.QueryRequest(query=t, using="text", limit=5),
            models.QueryRequest(prefetch=[models.Prefetch(query=t, using="text"), models.Prefetch(query=im, using="image")],
                                query=models.FusionQuery(fusion=models.Fusion.RRF), limit=5)]
    got = remote.query_batch_points("qd_scene", reqs)
    want = local.query_batch_points("qd_scene", [r.model_copy(update={"limit": 30}) for r in reqs])
    for g, w in zip(got, want):
        same_ranking(g.points, w.points, 5)


def test_retrieve_including_a_missing_id(loaded):
    remote, local = loaded
    ids = [_id(3), 10**6, _id(4), _id(3)]
    got = remote.retrieve("qd_scene", ids, with_vectors=True)
    want = local.retrieve("qd_scene", ids, with_vectors=True)
    assert [(p.id, p.payload) for p in got] == [(p.id, p.payload) for p in want]
    for g, w in zip(got, want):
        assert g.vector.keys() == w.vector.keys()
        for name in g.vector:  # Cosine vectors come back normalised, as Qdrant stores them
            assert np.allclose(g.vector[name], w.vector[name], atol=1e-6), name
    assert remote.retrieve("qd_scene", [_id(7)], with_payload=models.PayloadSelectorExclude(exclude=["desc"]))[0] \
        .payload == local.retrieve("qd_scene", [_id(7)], with_payload=models.PayloadSelectorExclude(exclude=["desc"]))[0].payload


def scroll_all(client, name, flt=None, page=7):
    pages, offset = [], None
    while True:
        points, offset = client.scroll(name, scroll_filter=flt, limit=page, offset=offset)
        pages.append(([p.id for p in points], offset))
        if offset is None:
            return pages


def test_filtered_scroll_in_pages(loaded):
    remote, local = loaded
    flt = models.Filter(should=[models.FieldCondition(key="tags", match=models.MatchAny(any=["a", "c"])),
                                models.FieldCondition(key="in_stock", match=models.MatchValue(value=True))])
    got, want = scroll_all(remote, "qd_scene", flt), scroll_all(local, "qd_scene", flt)
    assert got == want and len(got) > 3
    assert scroll_all(remote, "qd_scene", page=50) == scroll_all(local, "qd_scene", page=50)
    points, _ = remote.scroll("qd_scene", limit=3, offset=_id(12), with_vectors=["dot"])
    assert [p.id for p in points] == [p.id for p in local.scroll("qd_scene", limit=3, offset=_id(12))[0]]
    assert set(points[0].vector) == {"dot"}


def test_payload_updates(loaded):
    remote, local = loaded
    ids = [_id(20), _id(21), _id(22)]
    blue = models.Filter(must=[models.FieldCondition(key="color", match=models.MatchValue(value="blue")),
                               models.FieldCondition(key="n", range=models.Range(lt=3))])
    for c in loaded:
        c.set_payload("qd_scene", {"flag": "x", "n": 99}, points=ids[:2], wait=True)
        c.overwrite_payload("qd_scene", {"only": "this"}, points=[ids[2]], wait=True)
        c.delete_payload("qd_scene", ["tags", "desc"], points=ids[:1], wait=True)
        c.set_payload("qd_scene", {"flag": "y"}, points=blue, wait=True)
    got = remote.retrieve("qd_scene", ids, with_vectors=True)
    want = local.retrieve("qd_scene", ids, with_vectors=True)
    assert [(p.id, p.payload) for p in got] == [(p.id, p.payload) for p in want]
    assert all(np.allclose(g.vector["dot"], w.vector["dot"], atol=1e-6) for g, w in zip(got, want))  # kept
    flag = models.Filter(must=[models.FieldCondition(key="flag", match=models.MatchValue(value="y"))])
    assert remote.count("qd_scene", flag).count == local.count("qd_scene", flag).count > 0


def test_delete_by_ids_and_by_filter_then_counts(loaded):
    remote, local = loaded
    green = models.Filter(must=[models.FieldCondition(key="color", match=models.MatchValue(value="green"))])
    for c in loaded:
        c.delete("qd_scene", models.PointIdsList(points=[_id(1), _id(4), 10**9]), wait=True)
        c.delete("qd_scene", models.FilterSelector(filter=green), wait=True)
    assert remote.count("qd_scene").count == local.count("qd_scene").count < N - 70
    assert remote.count("qd_scene", green).count == 0
    assert scroll_all(remote, "qd_scene", page=100) == scroll_all(local, "qd_scene", page=100)
    t, im, _ = queries(np.random.default_rng(5))[0]
    both(loaded, 10, prefetch=[models.Prefetch(query=t, using="text"), models.Prefetch(query=im, using="image")],
         query=models.FusionQuery(fusion=models.Fusion.RRF))


def test_collections_list_get_exists_and_delete(prism_server, clients, loaded):
    remote, local = clients
    assert "qd_scene" in {c.name for c in remote.get_collections().collections}
    info = remote.get_collection("qd_scene")
    assert info.points_count == local.count("qd_scene").count and info.status == models.CollectionStatus.GREEN
    assert info.config.params.shard_number == 3
    assert info.config.params.vectors["image"].distance == models.Distance.EUCLID
    assert info.config.params.vectors["text"].hnsw_config.m == 0
    assert info.payload_schema["desc"].data_type == models.PayloadSchemaType.TEXT
    assert remote.collection_exists("qd_scene") and not remote.collection_exists("qd_nothing")
    remote.create_collection("qd_tmp", vectors_config=models.VectorParams(size=3, distance=models.Distance.DOT))
    assert remote.get_collection("qd_tmp").config.params.vectors.size == 3  # the unnamed vector stays unnamed
    assert remote.delete_collection("qd_tmp") is True and remote.delete_collection("qd_tmp") is False
    root = httpx.get(f"{prism_server.url}/qdrant").json()  # what the client's compatibility check reads
    assert is_compatible(importlib.metadata.version("qdrant-client"), root["version"])


# -- one test per filter condition type ---------------------------------------------------------------------------
def fc(key, **kw):
    return models.FieldCondition(key=key, **kw)


CONDITIONS = {
    "match_value_keyword": models.Filter(must=[fc("color", match=models.MatchValue(value="red"))]),
    "match_value_integer": models.Filter(must=[fc("n", match=models.MatchValue(value=5))]),
    "match_value_bool": models.Filter(must=[fc("in_stock", match=models.MatchValue(value=True))]),
    "match_value_in_an_array": models.Filter(must=[fc("tags", match=models.MatchValue(value="b"))]),
    "match_value_of_another_type": models.Filter(must=[fc("color", match=models.MatchValue(value=3))]),
    "match_any": models.Filter(must=[fc("color", match=models.MatchAny(any=["red", "blue"]))]),
    "match_except": models.Filter(must=[fc("color", match=models.MatchExcept(**{"except": ["red"]}))]),
    "match_text": models.Filter(must=[fc("desc", match=models.MatchText(text="lazy dog"))]),
    "match_text_any": models.Filter(must=[fc("desc", match=models.MatchTextAny(text_any="sun moon"))]),
    "range_numbers": models.Filter(must=[fc("price", range=models.Range(gte=10.5, lt=20))]),
    "range_datetimes": models.Filter(must=[fc("when", range=models.DatetimeRange(gte="2024-05-10",
                                                                                 lt="2024-05-15T12:00:00Z"))]),
    "is_empty": models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="color"))]),
    "is_empty_array": models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="tags"))]),
    "has_id": models.Filter(must=[models.HasIdCondition(has_id=[_id(i) for i in (2, 4, 8, 9, 10**7)])]),
    "must_not": models.Filter(must_not=[fc("color", match=models.MatchValue(value="red")),
                                        fc("n", range=models.Range(gt=10))]),
    "should": models.Filter(should=[fc("color", match=models.MatchValue(value="green")),
                                    fc("tags", match=models.MatchAny(any=["d"]))]),
    "min_should": models.Filter(min_should=models.MinShould(min_count=2, conditions=[
        fc("color", match=models.MatchValue(value="blue")), fc("in_stock", match=models.MatchValue(value=False)),
        fc("n", range=models.Range(lte=8))])),
    "nested_filters": models.Filter(must=[models.Filter(should=[
        models.Filter(must=[fc("color", match=models.MatchValue(value="red")), fc("n", range=models.Range(gt=4))]),
        models.Filter(must_not=[fc("tags", match=models.MatchAny(any=["a"]))])])]),
    "a_field_no_point_has": models.Filter(must=[fc("ghost", match=models.MatchValue(value="x"))]),
}


@pytest.fixture(scope="module")
def filtered(clients):
    rng = np.random.default_rng(7)
    for c in clients:
        _create_scene(c, "qd_filters", shards=2)
    pts = _points(rng, 0, 120)
    for c in clients:
        c.upsert("qd_filters", pts, wait=True)
    return clients


@pytest.mark.parametrize("kind", list(CONDITIONS))
def test_each_filter_condition_type_matches_what_qdrant_matches(filtered, kind):
    remote, local = filtered
    flt = CONDITIONS[kind]
    want_count = local.count("qd_filters", flt).count
    assert remote.count("qd_filters", flt).count == want_count
    assert want_count > 0 or kind in ("match_value_of_another_type", "a_field_no_point_has")
    assert scroll_all(remote, "qd_filters", flt, page=25) == scroll_all(local, "qd_filters", flt, page=25)
    t, im, _ = queries(np.random.default_rng(8))[0]
    for c, limit in ((remote, 10), (local, 35)):
        c.answer = c.query_points("qd_filters", query=t, using="text", query_filter=flt, limit=limit).points
        c.fused = c.query_points("qd_filters", prefetch=[models.Prefetch(query=t, using="text"),
                                                          models.Prefetch(query=im, using="image")],
                                 query=models.FusionQuery(fusion=models.Fusion.RRF), query_filter=flt,
                                 limit=limit).points
    same_ranking(remote.answer, local.answer, 10)
    same_ranking(remote.fused, local.fused, 10)


@pytest.mark.parametrize("flt", [
    models.Filter(must=[models.IsNullCondition(is_null=models.PayloadField(key="color"))]),
    models.Filter(must=[fc("meta.color", match=models.MatchValue(value="red"))]),
    models.Filter(must=[fc("color", match=models.MatchText(text="red"))]),  # a keyword field, no text index
])
def test_conditions_prism_cannot_run_are_400s_saying_so(filtered, flt):
    remote, _ = filtered
    for call in (lambda: remote.count("qd_filters", flt), lambda: remote.scroll("qd_filters", flt),
                 lambda: remote.delete("qd_filters", models.FilterSelector(filter=flt))):
        with pytest.raises(UnexpectedResponse) as err:
            call()
        assert err.value.status_code == 400 and "not supported" in json.loads(err.value.content)["status"]["error"] \
            or "needs a text field" in err.value.content.decode()
    assert remote.count("qd_filters").count == 120  # the refused delete deleted nothing


# -- ids -----------------------------------------------------------------------------------------------------------
def test_integer_and_uuid_ids_round_trip(prism_server, clients):
    remote, local = clients
    u = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    ids = [0, 1, 7, 10, 2**63, 2**64 - 1, u.upper(), "00000000-0000-0000-0000-000000000001",
           "ffffffff-ffff-ffff-ffff-ffffffffffff", "{0f0f0f0f-0000-4000-8000-000000000000}",
           "urn:uuid:10000000-0000-4000-8000-000000000000", "20000000000040008000000000000000"]
    for c in clients:
        c.create_collection("qd_ids", vectors_config=models.VectorParams(size=3, distance=models.Distance.DOT))
        c.upsert("qd_ids", [models.PointStruct(id=i, vector=[1.0, float(k), 0.5], payload={"k": k})
                            for k, i in enumerate(ids)], wait=True)
    got, want = remote.scroll("qd_ids", limit=100)[0], local.scroll("qd_ids", limit=100)[0]
    assert [p.id for p in got] == [p.id for p in want]  # integers first, numerically; then UUIDs by value
    assert [p.id for p in got][:6] == [0, 1, 7, 10, 2**63, 2**64 - 1] and u in [p.id for p in got]
    assert [p.id for p in remote.retrieve("qd_ids", ids)] == [p.id for p in local.retrieve("qd_ids", ids)]
    hits = remote.query_points("qd_ids", query=[0.0, 1.0, 0.0], limit=3).points
    assert [p.id for p in hits] == [p.id for p in local.query_points("qd_ids", query=[0.0, 1.0, 0.0], limit=3).points]
    for raw, back in ((2**64 - 1, 2**64 - 1), (u.upper(), u)):
        r = httpx.get(f"{prism_server.url}/qdrant/collections/qd_ids/points/{raw}")
        assert r.status_code == 200 and r.json()["result"]["id"] == back, r.text
        assert r.json()["result"]["vector"] == pytest.approx([1.0, float(ids.index(raw)), 0.5])
    r = httpx.get(f"{prism_server.url}/qdrant/collections/qd_ids/points/12345")
    assert r.status_code == 404 and "No point with id 12345" in r.json()["status"]["error"]
    stored = prism_server.client.post("/v1/collections/qd_ids/points/scroll", json={"limit": 3}).json()
    assert [p["id"] for p in stored["points"]] == ["00000000000000000000", "00000000000000000001",
                                                   "00000000000000000007"]  # how prism's own API sees them


# -- bad input: each class a 4xx in Qdrant's shape, and nothing written ---------------------------------------------
def _state(prism_server):
    c = prism_server.client
    points = c.post("/v1/collections/qd_bad/points/scroll",
                    json={"limit": 1000, "with_vectors": True}).json()["points"]
    verify = c.get("/v1/collections/qd_bad/verify").json()  # Elasticsearch against every replica of every shard
    assert verify["replicas_equal"] and not verify["drift"], verify
    return sorted((p["id"], json.dumps(p["payload"], sort_keys=True), json.dumps(p["vectors"])) for p in points), \
        c.get("/v1/collections/qd_bad").json()["config"]["metadata"]


GOOD = {"id": 1000, "vector": [0.1, 0.2, 0.3, 0.4], "payload": {"fresh_field": "x"}}
BAD_INPUT = [
    ("malformed JSON", "PUT", "points", b'{"points": [', None, 400),
    ("not labelled JSON", "PUT", "points", json.dumps({"points": [GOOD]}).encode(), "text/plain", 415),
    ("NaN literal", "PUT", "points", b'{"points": [{"id": 1001, "vector": [NaN, 0, 0, 1]}]}', None, 400),
    ("nesting past 64", "POST", "points/count", b'{"filter":' + b'[' * 70 + b']' * 70 + b'}', None, 400),
    ("unknown field", "PUT", "points", {"points": [GOOD], "extra": 1}, None, 400),
    ("wrong type", "PUT", "points", {"points": [{**GOOD, "vector": "fast"}]}, None, 400),
    ("wrong dimension beside a good point", "PUT", "points",
     {"points": [GOOD, {"id": 1001, "vector": [0.1, 0.2, 0.3], "payload": {"other_new": 1}}]}, None, 400),
    ("unknown vector name", "PUT", "points", {"points": [{**GOOD, "vector": {"nope": [1, 2, 3, 4]}}]}, None, 400),
    ("zero vector on Cosine", "PUT", "points", {"points": [{**GOOD, "vector": [0, 0, 0, 0]}]}, None, 400),
    ("number beyond float32", "PUT", "points", {"points": [{**GOOD, "vector": [1e39, 0, 0, 1]}]}, None, 400),
    ("infinity", "PUT", "points", b'{"points": [{"id": 1001, "vector": [1e400, 0, 0, 1]}]}', None, 400),
    ("negative id", "PUT", "points", {"points": [{**GOOD, "id": -1}]}, None, 400),
    ("id that is no UUID", "PUT", "points", {"points": [{**GOOD, "id": "sku-1"}]}, None, 400),
    ("payload type against its mapping", "PUT", "points",
     {"points": [GOOD, {"id": 1001, "vector": [1, 0, 0, 0], "payload": {"n": "seven"}}]}, None, 400),
    ("payload nested past 20", "PUT", "points",
     {"points": [{**GOOD, "payload": json.loads('{"a":' * 21 + '1' + '}' * 21)}]}, None, 400),
    ("batch lengths differ", "PUT", "points", {"batch": {"ids": [1000, 1001], "vectors": [[1, 0, 0, 0]]}}, None, 400),
    ("update_filter", "PUT", "points", {"points": [GOOD], "update_filter": {"must": []}}, None, 400),
    ("limit 0", "POST", "points/query", {"query": [1, 0, 0, 0], "limit": 0}, None, 422),
    ("negative offset", "POST", "points/query", {"query": [1, 0, 0, 0], "offset": -1}, None, 422),
    ("query of the wrong dimension", "POST", "points/query", {"query": [1, 0]}, None, 400),
    ("a query prism lacks", "POST", "points/query", {"query": {"recommend": {"positive": [1]}}}, None, 400),
    ("fusion without prefetch", "POST", "points/query", {"query": {"fusion": "rrf"}}, None, 400),
    ("rrf weights miscounted", "POST", "points/query", {"prefetch": [{"query": [1, 0, 0, 0]}],
                                                        "query": {"rrf": {"weights": [1, 2]}}}, None, 400),
    ("a filter prism cannot run", "POST", "points/delete", {"filter": {"must": [{"is_null": {"key": "n"}}]}}, None,
     400),
    ("ids and filter both", "POST", "points/delete", {"points": [0], "filter": {}}, None, 400),
    ("set payload on a missing point", "POST", "points/payload", {"payload": {"x": 1}, "points": [0, 999]}, None, 404),
    ("unknown collection", "PUT", "../qd_nothing/points", {"points": [GOOD]}, None, 404),
    ("collection exists", "PUT", "", {"vectors": {"size": 4, "distance": "Cosine"}}, None, 409),
    ("collection name outside prism's rule", "GET", "../bad-name", None, None, 422),
    ("a path not served", "POST", "points/discover", {}, None, 404),
    # review of issue 31: a vector of strings or bools is not a vector (Qdrant refuses it; pydantic's lax mode
    # turned "0.1" into 0.1 and true into 1.0, and wrote the point)
    ("vector of strings", "PUT", "points", {"points": [{**GOOD, "vector": ["0.1", "0.2", "0.3", "0.4"]}]}, None, 400),
    ("vector of bools", "PUT", "points", {"points": [{**GOOD, "vector": [True, False, False, True]}]}, None, 400),
    ("batch vectors of strings", "PUT", "points", {"batch": {"ids": [1000], "vectors": [["1", "0", "0", "0"]]}},
     None, 400),
    ("update vectors with strings", "PUT", "points/vectors", {"points": [{"id": 1, "vector": ["0", "0", "1", "0"]}]},
     None, 400),
    # a path id in digits that are not ASCII (int() reads them; Qdrant does not), or too long for int() at all
    ("point id in Arabic-Indic digits", "GET", "points/%D9%A1", None, None, 400),
    ("point id in superscript digits", "GET", "points/%C2%B9", None, None, 400),
    ("point id of 5000 digits", "GET", "points/" + "9" * 5000, None, None, 400),
    ("rrf k beyond 64 bits", "POST", "points/query",
     b'{"prefetch": [{"query": [1, 0, 0, 0]}], "query": {"rrf": {"k": 1' + b'0' * 400 + b'}}}', None, 400),
    ("more searches than limits.max_batch_queries", "POST", "points/query/batch",
     {"searches": [{"query": [1, 0, 0, 0], "limit": 1}] * 65}, None, 422),
]


@pytest.fixture(scope="module")
def bad_target(prism_server, clients):
    remote, _ = clients
    remote.create_collection("qd_bad", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    remote.upsert("qd_bad", [models.PointStruct(id=i, vector=[1.0, i, 0, 0], payload={"n": i}) for i in range(5)])
    return _state(prism_server)


@pytest.mark.parametrize("what, method, path, body, ctype, status", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_a_4xx_in_qdrants_shape_and_writes_nothing(prism_server, bad_target, what, method, path, body,
                                                                ctype, status):
    url = f"{prism_server.url}/qdrant/collections/qd_bad/{path}".rstrip("/").replace("qd_bad/../", "")
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    r = httpx.request(method, url + ("?wait=true" if method == "PUT" else ""), content=content,
                      headers={"content-type": ctype or "application/json"}, timeout=60)
    assert r.status_code == status, (what, r.status_code, r.text)
    answer = r.json()
    assert set(answer) == {"status", "time"} and isinstance(answer["status"]["error"], str), answer
    assert _state(prism_server) == bad_target  # no point, no payload and no mapped field came of it


def test_a_body_past_the_upload_limit_is_a_413_in_qdrants_shape(prism_server, bad_target):
    big = json.dumps({"points": [{"id": i, "vector": [0.5] * 4, "payload": {"pad": "x" * 4000}}
                                 for i in range(2200)]}).encode()
    r = httpx.put(f"{prism_server.url}/qdrant/collections/qd_bad/points", content=big,
                  headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "exceeds" in r.json()["status"]["error"]
    assert _state(prism_server) == bad_target
