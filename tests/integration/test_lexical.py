"""Lexical (bm25) spaces: answered by Elasticsearch (noida-db, Lucene's BM25) with the collection's global term
statistics, so their list enters fusion like any space's global top-k, whatever the shard count. Held against a
reference BM25 computed here over the same documents (tests/oracle.py)."""
from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.errors import InvalidRequest
from router.collection.coordinator import Coordinator
from router.filters.dsl import parse_filter
from router.metadata.store import MetadataStore
from router.schema.points import Point
from router.schema.query import DEFAULT_WINDOW, QueryRequest
from shards.local import local_shards, replica_specs, stop_local_shards
from tests.oracle import bm25, evaluate

CATALOG = [json.loads(line) for line in (Path(__file__).resolve().parents[2] / "deploy" / "data" / "catalog.jsonl")
           .read_text().splitlines()]
DIM = 8
FIELDS = ["name^2", "description"]
QUERIES = ["waterproof hiking boots", "warm wool sweater for winter", "running shoe", "Rain JACKET!", "zzz nothing"]
_n = itertools.count()


def emb(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture(scope="module")
def coords(es_server, tmp_path_factory):
    """The catalog in two collections of 1 and 4 shards (milvus-lite, FLAT), each with a bm25 space."""
    store = MetadataStore(es_server.uri)
    out, made = {}, []
    for shards in (1, 4):
        cfg = CollectionConfig.model_validate({
            "name": f"lex{next(_n)}", "shards": shards, "metadata": {"category": "keyword", "price": "float"},
            "spaces": {"emb": {"dim": DIM, "index": {"type": "FLAT"}},
                       "keywords": {"kind": "bm25", "fields": FIELDS}}})
        store.ensure_index(cfg)
        clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path_factory.mktemp("lex"), None))
        made.append((cfg, clients))
        coord = Coordinator.from_clients(cfg, clients, metadata=store)
        pts = [Point(id=p["id"], payload={k: v for k, v in p.items() if k != "id"}, vectors={"emb": emb(i)})
               for i, p in enumerate(CATALOG)]
        asyncio.run(coord.upsert(pts))
        out[shards] = coord
    yield out
    for cfg, clients in made:
        stop_local_shards(clients, drop=True)
        store.drop_index(cfg.name)


def lexical(text: str, limit: int = 64, **kw) -> QueryRequest:
    return QueryRequest.model_validate({"prefetch": [{"space": "keywords", "text": text, "limit": limit}],
                                        "fusion": {"method": "none"}, "limit": limit, **kw})


@pytest.mark.parametrize("text", QUERIES)
@pytest.mark.parametrize("shards", [1, 4])
def test_lexical_scores_and_order_equal_reference_bm25(coords, shards, text):
    got = asyncio.run(coords[shards].query(lexical(text)))
    docs = {p["id"]: p for p in CATALOG}
    ref = bm25(docs, [("name", 2.0), ("description", 1.0)], text)
    want = sorted(ref.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [h.id for h in got.hits] == [i for i, _ in want][:64]
    for h in got.hits:
        assert h.score == pytest.approx(ref[h.id], rel=1e-4, abs=1e-6)
    assert got.filter_plans == ["lexical"] and not got.partial


def test_filters_restrict_a_lexical_space_without_scoring(coords):
    flt = {"bool": {"filter": [{"term": {"category": "footwear"}}, {"range": {"price": {"lt": 120}}}]}}
    got = asyncio.run(coords[4].query(lexical("waterproof boots", filter=flt)))
    cfg = coords[4].config
    node = parse_filter(flt, cfg.metadata)
    docs = {p["id"]: p for p in CATALOG if evaluate(node, p["id"], p, cfg.metadata)}
    ref = bm25({p["id"]: p for p in CATALOG}, [("name", 2.0), ("description", 1.0)],
               "waterproof boots")  # term statistics are the whole collection's; the filter only restricts
    want = sorted(((i, s) for i, s in ref.items() if i in docs), key=lambda kv: (-kv[1], kv[0]))
    assert [h.id for h in got.hits] == [i for i, _ in want]
    assert [h.score for h in got.hits] == pytest.approx([s for _, s in want], rel=1e-4)


def test_hybrid_fusion_is_the_same_on_1_and_4_shards(coords):
    req = QueryRequest.model_validate({
        "prefetch": [{"space": "keywords", "text": "light jacket for rain", "limit": 20},
                     {"space": "emb", "vector": emb(5), "limit": 20}],
        "fusion": {"method": "rrf"}, "limit": 10, "with_payload": ["name"]})
    one, four = (asyncio.run(coords[s].query(req)) for s in (1, 4))
    assert [(h.id, round(h.score, 9)) for h in one.hits] == [(h.id, round(h.score, 9)) for h in four.hits]
    assert one.filter_plans == ["lexical", "none"] and all(h.payload and "name" in h.payload for h in one.hits)


@pytest.mark.parametrize("prefetch,field", [
    ({"space": "keywords", "vector": [1.0] * DIM}, "prefetch[0].vector"),
    ({"space": "keywords", "text": "   "}, "prefetch[0].text"),
    ({"space": "keywords", "text": "x", "params": {"ef": 10}}, "prefetch[0].params"),
])
def test_bad_lexical_prefetches_are_422s_naming_the_field(coords, prefetch, field):
    req = QueryRequest.model_validate({"prefetch": [prefetch], "fusion": {"method": "none"}})
    with pytest.raises(InvalidRequest) as exc:
        asyncio.run(coords[1].query(req))
    assert exc.value.field == field


def test_lexical_space_config():
    cfg = CollectionConfig.model_validate({"name": "c", "spaces": {
        "v": {"dim": 2}, "kw": {"kind": "bm25", "fields": ["title^3", "body"]}}})
    assert list(cfg.spaces) == ["v"] and cfg.lexical["kw"].boosts() == [("title", 3.0), ("body", 1.0)]
    assert cfg.metadata == {"title": "text", "body": "text"}
    for bad, msg in (({"kw": {"kind": "bm25", "fields": ["a b"]}}, "payload field name"),
                     ({"kw": {"kind": "bm25", "fields": []}}, "at least 1"),
                     ({"kw": {"kind": "sparse", "fields": ["a"]}}, "unknown kind"),
                     ({"kw": {"kind": "bm25", "fields": ["a", "a^2"]}}, "twice")):
        with pytest.raises(ValueError, match=msg):
            CollectionConfig.model_validate({"name": "c", "spaces": {"v": {"dim": 2}, **bad}})
    with pytest.raises(ValueError, match="mapped as 'keyword'"):
        CollectionConfig.model_validate({"name": "c", "metadata": {"title": "keyword"},
                                         "spaces": {"v": {"dim": 2}, "kw": {"kind": "bm25", "fields": ["title"]}}})
    with pytest.raises(ValueError, match="at least one vector space"):
        CollectionConfig.model_validate({"name": "c", "spaces": {"kw": {"kind": "bm25", "fields": ["t"]}}})


# -- post-fusion stages: each against a brute force over the same fused candidates -----------------------------
HYBRID = [{"space": "keywords", "text": "waterproof jacket for hiking", "limit": 40},
          {"space": "emb", "vector": emb(3), "limit": 40}]


def candidates(coord, n: int = 40) -> list[dict]:
    """The fused candidates without stages, with payloads and emb vectors: what every stage starts from."""
    req = QueryRequest.model_validate({"prefetch": HYBRID, "limit": n, "with_vectors": ["emb"]})
    return [h.model_dump() for h in asyncio.run(coord.query(req)).hits]


def staged(coord, stages: list[dict], limit: int = 10, **kw):
    return asyncio.run(coord.query(QueryRequest.model_validate(
        {"prefetch": HYBRID, "limit": limit, "stages": [{**s, "candidates": 40} for s in stages], **kw})))


FORMULA = {"formula": {"boost": [{"field": "in_stock", "equals": True, "add": 0.02},
                                 {"field": "price", "decay": "gauss", "origin": 50, "scale": 100, "multiply": True}]}}
MMR = {"mmr": {"space": "emb", "lambda": 0.6}}
GROUP = {"group_by": {"field": "category", "size": 2, "groups": 3}}


def bf_formula(cands):
    sigma2 = -(100.0 ** 2) / (2 * np.log(0.5))
    out = []
    for c in cands:
        s = c["score"] + (0.02 if c["payload"].get("in_stock") is True else 0.0)
        s *= float(np.exp(-(abs(c["payload"]["price"] - 50.0) ** 2) / (2 * sigma2)))
        out.append({**c, "score": s})
    return sorted(out, key=lambda c: (-c["score"], c["id"]))


def bf_mmr(cands, lam=0.6):
    vec = {c["id"]: np.asarray(c["vectors"]["emb"]) / np.linalg.norm(c["vectors"]["emb"]) for c in cands}
    lo, hi = min(c["score"] for c in cands), max(c["score"] for c in cands)
    rel = {c["id"]: (c["score"] - lo) / (hi - lo) for c in cands}
    chosen, left = [], list(cands)
    while left:
        def val(c):
            return lam * rel[c["id"]] - (1 - lam) * (max(float(vec[c["id"]] @ vec[x["id"]]) for x in chosen)
                                                     if chosen else 0.0)
        best = max(left, key=lambda c: (val(c), -left.index(c)))
        chosen.append({**best, "score": val(best)})
        left.remove(best)
    return chosen


def bf_group(cands, field="category", size=2, groups=3):
    out: dict = {}
    for c in cands:
        v = c["payload"].get(field)
        if v is None or (v not in out and len(out) >= groups) or len(out.get(v, [])) >= size:
            continue
        out.setdefault(v, []).append(c["id"])
    return list(out.items())


@pytest.mark.parametrize("shards", [1, 4])
def test_each_stage_equals_its_brute_force(coords, shards):
    coord = coords[shards]
    cands = candidates(coord)
    got = staged(coord, [FORMULA])
    want = bf_formula(cands)[:10]
    assert [c["id"] for c in want] != [c["id"] for c in cands[:10]]  # the boosts really reorder
    assert [h.id for h in got.hits] == [c["id"] for c in want]
    assert [h.score for h in got.hits] == pytest.approx([c["score"] for c in want], rel=1e-6)
    got = staged(coord, [MMR])
    want = bf_mmr(cands)[:10]
    assert [c["id"] for c in want] != [c["id"] for c in cands[:10]]  # diversity really reorders
    assert [h.id for h in got.hits] == [c["id"] for c in want]
    assert [h.score for h in got.hits] == pytest.approx([c["score"] for c in want], abs=1e-6)
    got = staged(coord, [GROUP])
    assert len(got.groups) == 3 and any(len(g.hits) == 2 for g in got.groups)
    assert [(g.value, [h.id for h in g.hits]) for g in got.groups] == bf_group(cands)
    assert [h.id for h in got.hits] == [i for _, ids in bf_group(cands) for i in ids]


@pytest.mark.parametrize("order", [("formula", "mmr", "group"), ("mmr", "formula", "group"), ("formula", "group")])
def test_stages_compose_in_any_order_and_do_not_depend_on_the_shard_count(coords, order):
    named = {"formula": (FORMULA, bf_formula), "mmr": (MMR, bf_mmr), "group": (GROUP, None)}
    cands = candidates(coords[1])
    for name in order:
        if name != "group":
            cands = named[name][1](cands)
    want = bf_group(cands) if order[-1] == "group" else None
    answers = [staged(coords[s], [named[n][0] for n in order]) for s in (1, 4)]
    for got in answers:
        assert [(g.value, [h.id for h in g.hits]) for g in got.groups] == want
    assert [(h.id, round(h.score, 9)) for h in answers[0].hits] == [(h.id, round(h.score, 9)) for h in answers[1].hits]


@pytest.mark.parametrize("stage,field", [
    ({"formula": {"boost": [{"field": "nope", "equals": 1, "add": 1}]}}, "stages[0].formula.boost[0].field"),
    ({"group_by": {"field": "nope"}}, "stages[0].group_by.field"),
    ({"mmr": {"space": "keywords"}}, "stages[0].mmr.space"),
    ({"mmr": {"space": "emb", "lambda": 1.5}}, "stages.0.mmr.lambda"),
    ({"formula": {"boost": [{"field": "price", "decay": "cubic", "origin": 1, "scale": 1}]}},
     "stages.0.formula.boost.0.decay"),
    ({"formula": {"boost": [{"field": "price", "decay": "gauss", "origin": 1, "scale": 0}]}},
     "stages.0.formula.boost.0"),
])
def test_bad_stage_input_is_a_422_naming_the_field(coords, stage, field):
    from cluster.config import parse_model

    with pytest.raises(InvalidRequest) as exc:
        req = parse_model(QueryRequest, {"prefetch": HYBRID, "stages": [stage]}, "query")
        asyncio.run(coords[1].query(req))
    assert exc.value.field == field, exc.value.message
    with pytest.raises(InvalidRequest, match="group_by must be the last stage"):
        parse_model(QueryRequest, {"prefetch": HYBRID, "stages": [GROUP, FORMULA]}, "query")


@pytest.mark.parametrize("method", ["rrf", "dbsf"])
def test_explanations_add_up_to_the_score(coords, method):
    coord = coords[4]
    got = asyncio.run(coord.query(QueryRequest.model_validate(
        {"prefetch": HYBRID, "fusion": {"method": method, "weights": [1.0, 0.5]}, "limit": 10, "explain": True,
         "stages": [FORMULA, MMR]})))
    alone = [asyncio.run(coord.query(QueryRequest.model_validate({"prefetch": [p], "fusion": {"method": "none"},
                                                                 "limit": 40}))).hits for p in HYBRID]
    for h in got.hits:
        e = h.explain
        assert sum(p.contribution for p in e.prefetch) == pytest.approx(e.fused, abs=1e-12)
        assert [s.stage for s in e.stages] == ["formula", "mmr"]
        assert e.fused + sum(s.after - s.before for s in e.stages) == pytest.approx(h.score, abs=1e-9)
        assert e.stages[0].before == e.fused and e.stages[1].before == e.stages[0].after and e.score == h.score
        for p, hits in zip(e.prefetch, alone):  # rank and raw score as that prefetch ranked it alone
            ids = [x.id for x in hits]
            if p.rank is None:
                assert h.id not in ids and p.contribution == 0.0
            else:
                assert ids[p.rank - 1] == h.id and p.score == pytest.approx(hits[p.rank - 1].score, rel=1e-6)
    plain = asyncio.run(coord.query(QueryRequest.model_validate({"prefetch": HYBRID, "limit": 3})))
    assert all(h.explain is None for h in plain.hits)


def test_concatenated_pages_equal_one_big_page(coords):
    """With the prefetch windows fixed, paging never repeats or skips a hit: ties are broken by id."""
    body = {"prefetch": HYBRID, "fusion": {"method": "rrf"}, "with_payload": False}
    big = asyncio.run(coords[4].query(QueryRequest.model_validate({**body, "limit": 20}))).hits
    pages = [asyncio.run(coords[4].query(QueryRequest.model_validate({**body, "limit": 5, "offset": o}))).hits
             for o in (0, 5, 10, 15)]
    assert [(h.id, h.score) for p in pages for h in p] == [(h.id, h.score) for h in big]
    assert len({h.id for p in pages for h in p}) == 20


@pytest.mark.parametrize("stages", [[], [{"formula": {"boost": [{"field": "price", "decay": "exp", "origin": 50,
                                                                  "scale": 40, "multiply": True}]}},
                                          {"mmr": {"space": "emb", "lambda": 0.6}}]], ids=["fusion", "stages"])
def test_pages_over_the_default_windows_never_repeat_or_skip(coords, stages):
    """No prefetch limits given: every page is cut from the same window (fusion.window), whatever its offset."""
    body = {"prefetch": [{k: v for k, v in p.items() if k != "limit"} for p in HYBRID], "with_payload": False,
            "fusion": {"method": "rrf", "window": 30}, "stages": stages}
    big = asyncio.run(coords[4].query(QueryRequest.model_validate({**body, "limit": 30}))).hits
    pages = [asyncio.run(coords[4].query(QueryRequest.model_validate({**body, "limit": 6, "offset": o})))
             for o in range(0, 30, 6)]
    assert [(h.id, h.score) for p in pages for h in p.hits] == [(h.id, h.score) for h in big]
    assert len({h.id for p in pages for h in p.hits}) == 30 and not any(p.notes for p in pages)
    with pytest.raises(ValueError, match="set fusion.window to at least 36"):
        QueryRequest.model_validate({**body, "limit": 6, "offset": 30})


def test_a_page_past_the_default_window_says_it_was_widened(coords):
    body = {"prefetch": [{k: v for k, v in p.items() if k != "limit"} for p in HYBRID], "with_payload": False}
    deep = asyncio.run(coords[1].query(QueryRequest.model_validate({**body, "limit": 5, "offset": DEFAULT_WINDOW})))
    assert len(deep.hits) == 5 and any(f"default fusion window ({DEFAULT_WINDOW})" in n for n in deep.notes)
    first = asyncio.run(coords[1].query(QueryRequest.model_validate({**body, "limit": 5})))
    assert len(first.hits) == 5 and not first.notes
