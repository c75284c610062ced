"""The HTTP API end to end against a real `prism up --detach` (Ray Serve, MiniLM, the Milvus 2.3 server)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.e2e.conftest import CATALOG, SPEC, emb  # noqa: F401  (fixtures and data shared with other e2e tests)


def query(c, body, status=200):
    r = c.post("/v1/collections/products/query", json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_health_and_collection_info(products, prism_server):
    h = products.get("/health").json()
    assert h["status"] == "ok" and "products" in h["collections"]
    assert h["encoders"]["minilm"]["available"] and h["encoders"]["minilm"]["dim"] == 384
    info = products.get("/v1/collections/products").json()
    assert info["counts"] == {"text": 64, "visual": 64, "emb": 64}
    assert sum(s["counts"]["text"] for s in info["shards"]) == 64 and len(info["shards"]) == 3
    # Status per replica: the Ray node it runs on (one node here), its lag, its faults.
    assert all(len(s["node"]) == 56 and s["lag"] == 0 and s["state"] == "live" for s in info["shards"]), info["shards"]
    r = products.put("/v1/collections/products", json=SPEC)
    assert r.status_code == 409


def test_text_queries_find_the_right_products(products):
    hits = query(products, {"prefetch": [{"space": "text", "text": "espresso and coffee"}],
                            "fusion": {"method": "none"}, "limit": 3})["hits"]
    assert {"Espresso Machine", "Pour-Over Coffee Kettle"} & {h["payload"]["name"] for h in hits[:2]}
    fused = query(products, {"prefetch": [{"space": "text", "text": "waterproof boots for kids"},
                                          {"space": "visual", "text": "small shiny yellow rubber boots"}],
                             "limit": 5})
    assert fused["hits"][0]["payload"]["name"] == "Kids Rain Boots"
    assert fused["coverage"] == {"shards_total": 3, "shards_answered": 3, "failed": [], "routed": [0, 1, 2]} and not fused["partial"]


def test_fusion_methods_and_batch(products):
    pre = [{"space": "text", "text": "camping gear for a night outdoors", "limit": 20},
           {"space": "emb", "vector": emb(40), "limit": 20}]
    rrf = query(products, {"prefetch": pre, "limit": 10})["hits"]
    weighted = query(products, {"prefetch": pre, "fusion": {"method": "rrf", "weights": [0.0, 1.0]}, "limit": 10})["hits"]
    dbsf = query(products, {"prefetch": pre, "fusion": {"method": "dbsf"}, "limit": 10})["hits"]
    assert len(rrf) == len(dbsf) == 10
    # RRF recomputed from each space's own global top-20 (k=60, ranks from 1): ids and scores exactly.
    per_space = [query(products, {"prefetch": [p], "fusion": {"method": "none"}, "limit": 20})["hits"] for p in pre]
    want: dict[str, float] = {}
    for hits in per_space:
        for rank, h in enumerate(hits, start=1):
            want[h["id"]] = want.get(h["id"], 0.0) + 1 / (60 + rank)
    expected = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [h["id"] for h in rrf] == [i for i, _ in expected]
    assert [h["score"] for h in rrf] == pytest.approx([v for _, v in expected], abs=1e-12)
    # weight 0 on text: the order is exactly the emb space's own order, whose top hit is point 40 itself.
    assert weighted[0]["id"] == CATALOG[40]["id"]
    only_emb = query(products, {"prefetch": pre[1:], "fusion": {"method": "none"}, "limit": 10})["hits"]
    assert [h["id"] for h in weighted] == [h["id"] for h in only_emb]
    assert [h["score"] for h in dbsf] == sorted([h["score"] for h in dbsf], reverse=True)
    batch = products.post("/v1/collections/products/query/batch",
                          json={"queries": [{"prefetch": pre, "limit": 10}, {"prefetch": pre[1:], "limit": 10}]})
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [h["id"] for h in results[0]["hits"]] == [h["id"] for h in rrf]
    assert [h["id"] for h in results[1]["hits"]] == [h["id"] for h in only_emb]


def test_payload_and_vector_selectors(products):
    pre = [{"space": "emb", "vector": emb(3)}]
    hit = query(products, {"prefetch": pre, "limit": 1, "with_payload": ["name", "price"], "with_vectors": ["emb"]})["hits"][0]
    assert hit["payload"] == {"name": CATALOG[3]["name"], "price": CATALOG[3]["price"]}
    assert np.allclose(hit["vectors"]["emb"], emb(3), atol=1e-6)
    hit = query(products, {"prefetch": pre, "limit": 1, "with_payload": {"exclude": ["description", "visual"]}})["hits"][0]
    assert "description" not in hit["payload"] and hit["payload"]["name"] == CATALOG[3]["name"]
    assert query(products, {"prefetch": pre, "limit": 1, "with_payload": False})["hits"][0]["payload"] is None


def test_retrieve_points_by_id(products):
    """Every catalog point comes back by id exactly as stored, in the order asked; absent ids are listed."""
    ids = [p["id"] for p in CATALOG]
    asked = ids[::-1] + ["no-such-point", ids[0]]
    r = products.post("/v1/collections/products/points/get", json={"ids": asked, "with_vectors": ["emb"]})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [p["id"] for p in got["points"]] == ids[::-1] and got["missing"] == ["no-such-point"]
    for p in got["points"]:
        i = ids.index(p["id"])
        assert p["payload"] == {k: v for k, v in CATALOG[i].items() if k != "id"}
        assert np.allclose(p["vectors"]["emb"], emb(i), atol=1e-6)
    sel = products.post("/v1/collections/products/points/get", json={"ids": ids[:3], "with_payload": ["name"]}).json()
    assert [p["payload"] for p in sel["points"]] == [{"name": c["name"]} for c in CATALOG[:3]]
    assert all(p["vectors"] is None for p in sel["points"])
    one = products.get(f"/v1/collections/products/points/{ids[5]}")
    assert one.status_code == 200 and one.json()["payload"]["name"] == CATALOG[5]["name"]
    assert one.json()["vectors"] is None
    assert products.get(f"/v1/collections/products/points/{ids[5]}?with_vectors=true").json()["vectors"]["emb"]
    missing = products.get("/v1/collections/products/points/no-such-point")
    assert missing.status_code == 404 and missing.json()["error"] == "point_not_found"
    bad = products.post("/v1/collections/products/points/get", json={"ids": ids[:1], "with_vectors": ["audio"]})
    assert bad.status_code == 404 and "audio" in bad.json()["message"]
    assert products.post("/v1/collections/products/points/get", json={"ids": []}).status_code == 422
    assert products.post("/v1/collections/nope/points/get", json={"ids": ["a"]}).status_code == 404


@pytest.mark.parametrize("body, status, needle", [
    ({"prefetch": [{"space": "emb", "vector": [0.1] * 3}]}, 422, "expected 8 dimensions, got 3"),
    ({"prefetch": [{"space": "audio", "vector": [0.1]}]}, 404, "unknown space 'audio'"),
    ({"prefetch": [{"space": "emb", "vector": [0.1] * 8}], "limit": 0}, 422, "limit"),
    ({"prefetch": [{"space": "emb", "vector": [0.1] * 8}], "limit": 10_001}, 422, "limit"),
    ({"prefetch": []}, 422, "prefetch"),
    ({"prefetch": [{"space": "emb"}]}, 422, "exactly one of vector, text, image"),
    ({"prefetch": [{"space": "emb", "vector": [0.1] * 8}], "fusion": {"method": "magic"}}, 422, "fusion.method"),
    ({"prefetch": [{"space": "emb", "text": "hello"}]}, 422, "has no encoder"),
    ({"prefetch": [{"space": "text", "image": "aGVsbG8="}]}, 422, "not an image"),
    ({"prefetch": [{"space": "text", "text": "boots", "params": {"ef": 100_000_000}}]}, 422, "1..32768"),
    ({"prefetch": [{"space": "emb", "vector": [0.1] * 8, "params": {"ef": 64}}]}, 422, "FLAT index takes no"),
])
def test_bad_queries_get_clear_errors(products, body, status, needle):
    r = products.post("/v1/collections/products/query", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]


def test_an_image_for_a_text_only_encoder_is_a_clear_422(products):
    import base64

    from tests.e2e.conftest import png

    r = products.post("/v1/collections/products/query",
                      json={"prefetch": [{"space": "text", "image": base64.b64encode(png("coins")).decode()}]})
    assert r.status_code == 422 and "embeds text only" in r.json()["message"]


def test_bad_requests_change_nothing_and_service_keeps_answering(products):
    r = products.post("/v1/collections/products/query", content=b'{"prefetch": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["message"]
    r = products.post("/v1/collections/nope/query", json={"prefetch": [{"space": "emb", "vector": [0.1] * 8}]})
    assert r.status_code == 404 and "'nope'" in r.json()["message"]
    r = products.post("/v1/collections/products/points", json={"points": [
        {"id": "new-1", "vectors": {"emb": emb(1)}}, {"id": "new-2", "vectors": {"emb": [1.0, 2.0]}}]})
    assert r.status_code == 422 and r.json()["field"] == "points[1].vectors.emb"
    r = products.put("/v1/collections/bad", json={"spaces": {"t": {"dim": 8, "index": {"type": "IVF_PQ"}}}, "shards": 1})
    assert r.status_code == 200  # the server backend supports IVF_PQ
    assert products.delete("/v1/collections/bad").status_code == 200
    r = products.put("/v1/collections/bad2", json={"spaces": {"t": {"dim": 8, "index": {"type": "GPU_CAGRA"}}}})
    assert r.status_code == 422 and "GPU" in r.json()["message"]
    r = products.put("/v1/collections/bad3", json={"spaces": {"t": {"dim": 12, "encoder": "minilm", "source": "x"}}})
    assert r.status_code == 422 and "384" in r.json()["message"]
    # Regressions found by trying bad input: each a 4xx naming its limit, and nothing written anywhere.
    deep = b'{"prefetch": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = products.post("/v1/collections/products/query", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "deeper than 64" in r.json()["message"], r.text
    for depth, needle in ((200, "deeper than 64"), (30, "at most 20")):  # Elasticsearch indexes 20 deep
        nested: dict = {"leaf": 1}
        for _ in range(depth):
            nested = {"x": nested}
        r = products.post("/v1/collections/products/points", json={"points": [
            {"id": "deep-1", "vectors": {"emb": emb(1)}, "payload": nested}]})
        assert r.status_code == 422 and needle in r.json()["message"], r.text
    r = products.post("/v1/collections/products/query", json={"prefetch": [{"space": "emb", "vector": [0.0] * 8}]})
    assert r.status_code == 422 and "zero vector" in r.json()["message"], r.text
    r = products.post("/v1/collections/products/points", json={"points": [{"id": "zero-1", "vectors": {"emb": [0] * 8}}]})
    assert r.status_code == 422 and r.json()["field"] == "points[0].vectors.emb", r.text
    big = products.post("/v1/collections/products/points", content=b"x" * (9 * 1024 * 1024),
                        headers={"content-type": "application/json"})
    assert big.status_code == 413
    assert products.get("/v1/collections/products").json()["counts"]["emb"] == 64
    for pid in ("deep-1", "zero-1"):  # no refused point can be found
        r = products.post("/v1/collections/products/query", json={
            "prefetch": [{"space": "emb", "vector": emb(1)}], "limit": 100, "filter": {"ids": {"values": [pid]}}})
        assert r.status_code == 200 and r.json()["hits"] == [], r.text
    assert products.get("/v1/collections/bad2").status_code == 404
    assert products.get("/health").json()["status"] == "ok"


def test_long_text_is_truncated_and_said_so(products):
    answer = query(products, {"prefetch": [{"space": "text", "text": "running shoe " * 400}], "fusion": {"method": "none"}})
    assert answer["hits"] and any("truncated" in n for n in answer["notes"])


def test_upsert_embeds_source_and_delete_removes(products):
    r = products.post("/v1/collections/products/points", json={"points": [
        {"id": "tmp-1", "payload": {"name": "Glacier Ice Axe", "description": "Steel ice axe for glacier travel and mountaineering",
                                    "visual": "A steel ice axe with a blue handle"}}]})
    assert r.status_code == 200 and r.json()["upserted"] == 1
    hits = query(products, {"prefetch": [{"space": "text", "text": "ice axe for mountaineering"}],
                            "fusion": {"method": "none"}, "limit": 1})["hits"]
    assert hits[0]["id"] == "tmp-1"
    info = products.get("/v1/collections/products").json()["counts"]
    assert info["text"] == 65 and info["emb"] == 64  # no emb vector was given, and emb has no source
    r = products.post("/v1/collections/products/points/delete", json={"ids": ["tmp-1", "never-existed"]})
    assert r.json() == {"deleted": 1, "visible": True}
    hits = query(products, {"prefetch": [{"space": "text", "text": "ice axe for mountaineering"}],
                            "fusion": {"method": "none"}, "limit": 3})["hits"]
    assert "tmp-1" not in [h["id"] for h in hits]


def test_http_answer_equals_in_process_coordinator(products, prism_server, milvus_server):
    from cluster.collection_spec import CollectionConfig
    from cluster.config import MilvusConfig
    from shards.local import local_shards, replica_specs
    from router.collection.coordinator import Coordinator
    from router.encoding.embed import load_encoder
    from router.schema.query import QueryRequest

    info = products.get("/v1/collections/products").json()
    cfg = CollectionConfig.model_validate(info["config"])
    specs = replica_specs(cfg, MilvusConfig(mode="server", uri=milvus_server.uri), prism_server.data_dir, milvus_server.uri)
    encoder = load_encoder("minilm")

    async def encode(name, texts, document=False):
        out = encoder.encode_documents(texts) if document else encoder.encode(texts)
        return [tuple(e) for e in out]

    coord = Coordinator.from_clients(cfg, local_shards(cfg, specs, create=False), encode=encode)
    bodies = [
        {"prefetch": [{"space": "emb", "vector": emb(9)}, {"space": "emb", "vector": emb(10)}], "limit": 10},
        {"prefetch": [{"space": "text", "text": "a gift for a coffee lover"}, {"space": "visual", "text": "shiny silver"}],
         "fusion": {"method": "dbsf"}, "limit": 8, "offset": 2},
    ]
    for body in bodies:
        http = query(products, body)
        local = asyncio.run(coord.query(QueryRequest.model_validate(body))).model_dump()
        assert [h["id"] for h in http["hits"]] == [h["id"] for h in local["hits"]]
        assert np.allclose([h["score"] for h in http["hits"]], [h["score"] for h in local["hits"]], atol=1e-4)
        assert [h["payload"] for h in http["hits"]] == [h["payload"] for h in local["hits"]]


def test_metrics_expose_documented_series(products):
    text = products.get("/metrics").text
    for series in ("prism_requests_total", "prism_request_latency_seconds_bucket", "prism_shard_search_latency_seconds_bucket",
                   "prism_errors_total", "prism_partial_answers_total"):
        assert series in text, series
    assert 'endpoint="/v1/collections/{name}/query"' in text
    assert 'code="space_not_found"' in text


def test_filters_over_http(products):
    pre = [{"space": "text", "text": "something for the outdoors", "limit": 30}]
    cheap = query(products, {"prefetch": pre, "fusion": {"method": "none"}, "limit": 5,
                             "filter": {"bool": {"filter": [{"term": {"category": "outdoor"}},
                                                            {"range": {"price": {"lt": 60}}}]}}})
    assert cheap["hits"] and cheap["filter_plans"] == ["pushdown"]
    assert all(h["payload"]["category"] == "outdoor" and h["payload"]["price"] < 60 for h in cheap["hits"])
    text = query(products, {"prefetch": pre, "fusion": {"method": "none"}, "limit": 5,
                            "filter": {"match": {"description": "waterproof"}}})
    assert text["hits"] and all("waterproof" in h["payload"]["description"].lower() for h in text["hits"])
    assert text["filter_plans"] == ["prefilter"]  # a handful of ids: ES pre-filter
    # A per-prefetch filter restricts only its own space; the top-level filter holds for every hit.
    both = query(products, {"prefetch": [{"space": "text", "text": "shoes", "filter": {"term": {"in_stock": True}}},
                                         {"space": "visual", "text": "white shoes"}],
                            "filter": {"term": {"category": "footwear"}}, "limit": 10})
    assert both["hits"] and all(h["payload"]["category"] == "footwear" for h in both["hits"])


@pytest.mark.parametrize("flt, path", [
    ({"bool": {"must": [{"term": {"category": "x"}}, {"rnage": {"price": {"lt": 1}}}]}}, "filter.bool.must[1]"),
    ({"term": {"colour": "red"}}, "filter.term.colour"),
    ({"range": {"price": {"lt": "cheap"}}}, "filter.range.price.lt"),
])
def test_malformed_filters_are_422_with_the_clause_path(products, flt, path):
    r = products.post("/v1/collections/products/query",
                      json={"prefetch": [{"space": "emb", "vector": emb(1)}], "filter": flt})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(path), r.json()["message"]


def test_delete_by_filter(products):
    pts = [{"id": f"del-{i}", "payload": {"name": f"temp {i}", "category": "to-delete", "price": float(i)},
            "vectors": {"emb": emb(1000 + i)}} for i in range(5)]
    assert products.post("/v1/collections/products/points", json={"points": pts}).status_code == 200
    r = products.post("/v1/collections/products/points/delete",
                      json={"filter": {"bool": {"filter": [{"term": {"category": "to-delete"}},
                                                           {"range": {"price": {"gte": 2}}}]}}})
    assert r.status_code == 200 and r.json() == {"deleted": 3, "visible": True}
    left = query(products, {"prefetch": [{"space": "emb", "vector": emb(1000)}], "fusion": {"method": "none"},
                            "filter": {"term": {"category": "to-delete"}}, "limit": 10})
    assert sorted(h["id"] for h in left["hits"]) == ["del-0", "del-1"]
    products.post("/v1/collections/products/points/delete", json={"ids": ["del-0", "del-1"]})


def test_upsert_notes_say_which_spaces_a_point_is_missing_from(prism_server):
    c = prism_server.client
    spec = {"spaces": {"text": {"dim": 384, "encoder": "minilm", "source": "description", "index": {"type": "FLAT"}},
                       "v": {"dim": 4, "index": {"type": "FLAT"}}}}
    assert c.put("/v1/collections/noted", json=spec).status_code == 200
    try:
        r = c.post("/v1/collections/noted/points", json={"points": [
            {"id": "a", "payload": {"description": "a red kettle"}, "vectors": {"v": [1, 0, 0, 0]}},
            {"id": "b", "payload": {"description": "   "}, "vectors": {"v": [0, 1, 0, 0]}}]})
        assert r.status_code == 200 and r.json()["upserted"] == 2
        assert r.json()["notes"] == ["points[1] (id 'b') has no source text for space 'text' (field 'description'): "
                                     "no vector there, so searches in it will not find this point"]
        counts = c.get("/v1/collections/noted").json()["counts"]
        assert counts == {"text": 1, "v": 2}
    finally:
        c.delete("/v1/collections/noted")
