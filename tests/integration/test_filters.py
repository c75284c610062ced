"""Filters against a real ES-API server (noida-db) and real Milvus: every plan path, exact answers, injection."""
from __future__ import annotations

import asyncio
import itertools
import random
import zlib

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import FilterSettings, MilvusConfig
from cluster.errors import PrismError
from shards.local import local_shards, replica_specs
from router.collection.coordinator import Coordinator
from router.filters.dsl import parse_filter, to_milvus
from tests.oracle import evaluate
from router.ranking.fusion import rrf
from router.metadata.store import MetadataStore
from router.schema.points import Point
from router.schema.query import QueryRequest, ScoredId

N = 2_000
DIMS = {"a": 16, "b": 8}
MAPPING = {"cat": "keyword", "tags": "keyword", "price": "float", "qty": "integer", "day": "date", "ok": "boolean",
           "title": "text"}
CATS = ["shoes", "hats", "bags", "coats", "socks", 'we"ird\\cat']
TAGS = ["red", "blue", "green", "sale", "new"]
WORDS = ["red", "shoe", "warm", "coat", "light", "bag", "summer", "winter", "classic", "sport"]
_n = itertools.count()


def make_payload(rng: random.Random, i: int) -> dict:
    p = {"title": " ".join(rng.sample(WORDS, 3))}
    if rng.random() < 0.9:
        p["cat"] = rng.choice(CATS) if rng.random() < 0.85 else rng.sample(CATS, 2)
    if rng.random() < 0.8:
        p["tags"] = rng.sample(TAGS, rng.randint(0, 3))
    if rng.random() < 0.85:
        p["price"] = round(rng.uniform(0, 100), 2) if rng.random() < 0.95 else None
    if rng.random() < 0.8:
        p["qty"] = rng.randint(0, 20)
    if rng.random() < 0.8:
        p["day"] = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if rng.random() < 0.8:
        p["ok"] = rng.random() < 0.5
    if i % 200 == 0:
        p["cat"] = "rare"  # exactly 1% of the points
    return p


def leaf(rng: random.Random, translatable: bool) -> dict:
    kinds = ["term_cat", "terms_tags", "range_price", "range_qty", "range_day", "exists", "term_ok", "ids"]
    if not translatable:
        kinds += ["match", "match_and", "range_cat"]
    k = rng.choice(kinds)
    if k == "term_cat":
        return {"term": {"cat": rng.choice(CATS)}}
    if k == "terms_tags":
        return {"terms": {"tags": rng.sample(TAGS, 2)}}
    if k == "range_price":
        lo = rng.uniform(0, 80)
        return {"range": {"price": {"gte": round(lo, 2), "lt": round(lo + rng.uniform(5, 60), 2)}}}
    if k == "range_qty":
        return {"range": {"qty": {"gt": rng.randint(0, 15)}}}
    if k == "range_day":
        return {"range": {"day": {"lte": f"2024-{rng.randint(2, 12):02d}-15"}}}
    if k == "exists":
        return {"exists": {"field": rng.choice(["cat", "price", "tags", "ok"])}}
    if k == "term_ok":
        return {"term": {"ok": rng.random() < 0.5}}
    if k == "ids":
        return {"ids": {"values": [f"p{rng.randrange(N)}" for _ in range(rng.randint(1, 300))]}}
    if k == "match":
        return {"match": {"title": " ".join(rng.sample(WORDS, 2))}}
    if k == "match_and":
        return {"match": {"title": {"query": " ".join(rng.sample(WORDS, 2)), "operator": "and"}}}
    return {"range": {"cat": {"gte": "c"}}}


def random_filter(rng: random.Random, translatable: bool, depth: int = 0) -> dict:
    if depth >= 2 or rng.random() < 0.35:
        return leaf(rng, translatable)
    b: dict = {}
    for key in ("must", "filter", "should", "must_not"):
        if rng.random() < 0.5:
            b[key] = [random_filter(rng, translatable, depth + 1) for _ in range(rng.randint(1, 2))]
    if "should" in b and not translatable and rng.random() < 0.3:
        b["minimum_should_match"] = 2
    return {"bool": b}


@pytest.fixture(scope="module", params=["lite", "server"])
def world(request, es_server, tmp_path_factory):
    """One collection (3 shards, FLAT) + its ES index; a coordinator per forced plan path over the same data."""
    kind = request.param
    if kind == "lite":
        milvus, uri = MilvusConfig(mode="lite"), None
    else:
        server = request.getfixturevalue("milvus_server")
        milvus, uri = MilvusConfig(mode="server", uri=server.uri), server.uri
    cfg = CollectionConfig(name=f"filt{next(_n)}_{kind}", shards=3, metadata=MAPPING,
                           spaces={s: {"dim": d, "index": {"type": "FLAT"}} for s, d in DIMS.items()})
    store = MetadataStore(es_server.uri)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, milvus, tmp_path_factory.mktemp(cfg.name), uri))
    rng = random.Random(7)
    vecs = {s: np.random.default_rng(i).standard_normal((N, d)).astype(np.float32) for i, (s, d) in enumerate(DIMS.items())}
    for s in vecs:
        vecs[s] /= np.linalg.norm(vecs[s], axis=1, keepdims=True)
    payloads = [make_payload(rng, i) for i in range(N)]
    writer = Coordinator.from_clients(cfg, clients, metadata=store)
    for start in range(0, N, 500):
        pts = [Point(id=f"p{i}", payload=payloads[i], vectors={s: vecs[s][i].tolist() for s in DIMS})
               for i in range(start, min(N, start + 500))]
        asyncio.run(writer.upsert(pts))
    coords = {mode: Coordinator.from_clients(cfg, clients, metadata=store,
                                filters=FilterSettings(mode=mode, prefilter_max_ids=N))
              for mode in ("pushdown", "prefilter", "postfilter")}
    coords["auto"] = Coordinator.from_clients(cfg, clients, metadata=store, filters=FilterSettings(prefilter_max_ids=100))
    yield {"cfg": cfg, "coords": coords, "vecs": vecs, "payloads": payloads, "store": store}
    store.drop_index(cfg.name)


def exact(world, qv: dict, dsl: dict | None, limit: int, prefetch_limit: int) -> list[str]:
    """Brute force over vectors, filter in Python, same RRF."""
    node = parse_filter(dsl, MAPPING) if dsl else None
    ok = np.array([node is None or evaluate(node, f"p{i}", world["payloads"][i], MAPPING) for i in range(N)])
    lists = []
    for s, q in qv.items():
        scores = world["vecs"][s] @ q
        idx = [i for i in np.argsort(-scores, kind="stable") if ok[i]][:prefetch_limit]
        lists.append([ScoredId(f"p{i}", float(scores[i])) for i in idx])
    return [h.id for h in rrf(lists, limit=limit)]


def run(world, mode: str, qv: dict, dsl: dict | None, limit: int = 10, prefetch_limit: int = 30):
    req = QueryRequest(prefetch=[{"space": s, "vector": v.tolist(), "limit": prefetch_limit} for s, v in qv.items()],
                       filter=dsl, limit=limit)
    return asyncio.run(world["coords"][mode].query(req))


def queries(seed: int):
    rng = np.random.default_rng(seed)
    q = {s: rng.standard_normal(d).astype(np.float32) for s, d in DIMS.items()}
    return {s: v / np.linalg.norm(v) for s, v in q.items()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pushdown", "prefilter", "postfilter"])
def test_random_filters_give_exact_answers_on_every_plan_path(world, mode):
    rng = random.Random(zlib.crc32(mode.encode()))  # not hash(): str hashes change per process
    checked = 0
    for t in range(14):
        dsl = random_filter(rng, translatable=(mode == "pushdown"))
        if mode == "pushdown":
            assert to_milvus(parse_filter(dsl, MAPPING), MAPPING) is not None
        qv = queries(t)
        answer = run(world, mode, qv, dsl)
        assert answer.filter_plans == [mode, mode]  # forced: prefilter_max_ids is N, so every id set fits
        node = parse_filter(dsl, MAPPING)
        for h in answer.hits:
            assert evaluate(node, h.id, h.payload, MAPPING), (dsl, h.id, h.payload)
        assert [h.id for h in answer.hits] == exact(world, qv, dsl, 10, 30), dsl
        checked += len(answer.hits)
    assert checked > 0


@pytest.mark.parametrize("mode", ["pushdown", "prefilter", "postfilter", "auto"])
def test_a_one_percent_filter_still_fills_the_limit(world, mode):
    dsl = {"term": {"cat": "rare"}}  # 20 of 2,000 points
    answer = run(world, mode, queries(99), dsl, limit=10, prefetch_limit=10)
    assert len(answer.hits) == 10
    assert all(h.payload["cat"] == "rare" for h in answer.hits)
    if mode == "postfilter":
        assert answer.filter_rounds >= 2  # 1% needs the fetch to grow
    text_dsl = {"bool": {"filter": [{"term": {"cat": "rare"}}, {"match": {"title": WORDS[0] + " " + WORDS[1]}}]}}
    answer = run(world, "auto", queries(98), text_dsl, limit=5, prefetch_limit=5)
    assert [h.id for h in answer.hits] == exact(world, queries(98), text_dsl, 5, 5)
    assert answer.filter_plans[0] == "prefilter"  # ES says it is selective (<= 100 ids)


def test_auto_plans_by_selectivity(world):
    broad = {"match": {"title": "red shoe warm"}}  # most points: above the 100-id threshold -> post-filter
    a = run(world, "auto", queries(5), broad)
    assert a.filter_plans == ["postfilter", "postfilter"]
    assert [h.id for h in a.hits] == exact(world, queries(5), broad, 10, 30)
    pushed = run(world, "auto", queries(5), {"range": {"price": {"lt": 50}}})
    assert pushed.filter_plans == ["pushdown", "pushdown"] and pushed.filter_rounds == 0


def test_prefetch_filter_and_top_level_filter_combine(world):
    qv = queries(11)
    req = QueryRequest(prefetch=[{"space": "a", "vector": qv["a"].tolist(), "limit": 30,
                                  "filter": {"term": {"ok": True}}},
                                 {"space": "b", "vector": qv["b"].tolist(), "limit": 30}],
                       filter={"range": {"qty": {"gte": 10}}}, limit=10)
    for mode in ("pushdown", "postfilter"):
        answer = asyncio.run(world["coords"][mode].query(req))
        assert answer.hits
        for h in answer.hits:
            assert h.payload["qty"] >= 10  # the top-level filter holds for every hit, whichever space found it
        lists = []
        for s, extra in (("a", {"term": {"ok": True}}), ("b", None)):
            dsl = {"bool": {"filter": [req.filter] + ([extra] if extra else [])}}
            node = parse_filter(dsl, MAPPING)
            scores = world["vecs"][s] @ qv[s]
            idx = [i for i in np.argsort(-scores) if evaluate(node, f"p{i}", world["payloads"][i], MAPPING)][:30]
            lists.append([ScoredId(f"p{i}", float(scores[i])) for i in idx])
        assert [h.id for h in answer.hits] == [h.id for h in rrf(lists, limit=10)]


INJECTION = ['" or true or "', "' or 1==1 --", "\\", '\\"', "a\\\\b", "caf\u00e9 \u4e2d\u6587 \U0001f600", ") or (1 == 1",
             'x"] or meta["cat', "exists meta", "\n", "null", "*", "%", "x" * 4000]


@pytest.mark.parametrize("mode", ["pushdown", "prefilter", "postfilter"])
def test_injection_corpus_matches_literally_and_never_500s(world, mode):
    qv = queries(3)
    for value in INJECTION:
        for dsl in ({"term": {"cat": value}}, {"terms": {"tags": [value, "red"]}},
                    {"bool": {"must_not": [{"term": {"cat": value}}]}}, {"ids": {"values": [value]}},
                    {"match": {"title": value}}):
            try:
                answer = run(world, mode, qv, dsl, limit=20, prefetch_limit=20)
            except PrismError as exc:
                assert 400 <= exc.status < 500, (value, exc)
                continue
            node = parse_filter(dsl, MAPPING)
            for h in answer.hits:
                assert evaluate(node, h.id, h.payload, MAPPING), (value, dsl, h.id)
    # The odd category name really exists in the data and is found literally.
    odd = {"term": {"cat": 'we"ird\\cat'}}
    hits = run(world, mode, qv, odd).hits
    assert hits and [h.id for h in hits] == exact(world, qv, odd, 10, 30)
    with pytest.raises(PrismError) as exc:
        run(world, mode, qv, {"term": {"cat": "x" * 5000}})
    assert exc.value.status == 422
    deep = {"term": {"cat": "shoes"}}
    for _ in range(50):
        deep = {"bool": {"filter": [deep]}}
    answer = run(world, mode, qv, deep)
    assert len(answer.hits) == 10 and [h.id for h in answer.hits] == exact(world, qv, deep, 10, 30)


def test_a_forced_prefilter_too_large_for_one_es_request_falls_back_to_postfilter(world, monkeypatch):
    import router.metadata.steps as steps

    monkeypatch.setattr(steps, "PREFILTER_HARD_MAX_IDS", 500)  # stands in for ES's 10,000-hit window
    dsl = {"range": {"price": {"lt": 60}}}  # about half of the 2,000 points
    answer = run(world, "prefilter", queries(21), dsl)
    assert answer.filter_plans == ["postfilter", "postfilter"]
    assert [h.id for h in answer.hits] == exact(world, queries(21), dsl, 10, 30)
