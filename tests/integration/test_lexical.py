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

from cluster.config import CollectionConfig, MilvusConfig
from cluster.errors import InvalidRequest
from router.coordinator import Coordinator
from router.filters import parse_filter
from router.metadata import MetadataStore
from router.models import Point, QueryRequest
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
