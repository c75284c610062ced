import pytest

from cluster.errors import FilterError, InvalidRequest
from router.filters.dsl import (
    Bool, Exists, Ids, Match, Range, Term, Terms, and_, normalise_meta, parse_filter, split_conjuncts, to_es,
    to_milvus, tokens,
)
from router.filters.plan import FilterPlan, choose_es_path, first_fetch, next_fetch, plan_filter
from tests.oracle import evaluate

MAPPING = {"cat": "keyword", "price": "float", "qty": "integer", "ok": "boolean", "day": "date", "title": "text"}


def ev(dsl, payload, pid="p1"):
    return evaluate(parse_filter(dsl, MAPPING), pid, payload, MAPPING)


def test_parse_shapes():
    assert parse_filter({"term": {"cat": "a"}}, MAPPING) == Term("cat", "a")
    assert parse_filter({"term": {"cat": {"value": "a"}}}, MAPPING) == Term("cat", "a")
    assert parse_filter({"terms": {"qty": [1, "2"]}}, MAPPING) == Terms("qty", (1, 2))
    assert parse_filter({"range": {"price": {"gte": 1, "lt": "2.5"}}}, MAPPING) == Range("price", gte=1, lt=2.5)
    assert parse_filter({"match": {"title": {"query": "Red shoe", "operator": "AND"}}}, MAPPING) == Match("title", "Red shoe", "and")
    assert parse_filter({"match": {"cat": "a"}}, MAPPING) == Term("cat", "a")
    assert parse_filter({"exists": {"field": "ok"}}, MAPPING) == Exists("ok")
    assert parse_filter({"ids": {"values": ["a", 1]}}, MAPPING) == Ids(("a", "1"))
    b = parse_filter({"bool": {"must": {"term": {"cat": "a"}}, "should": [{"term": {"ok": True}}],
                               "minimum_should_match": "1"}}, MAPPING)
    assert b == Bool(filter=(Term("cat", "a"),), should=(Term("ok", True),), minimum_should_match=1)


@pytest.mark.parametrize("dsl, path", [
    ({"bool": {"must": [{"term": {"cat": "a"}}, {"rnage": {"price": {"gt": 1}}}]}}, "filter.bool.must[1]"),
    ({"term": {"colour": "red"}}, "filter.term.colour"),
    ({"term": {"price": "cheap"}}, "filter.term.price"),
    ({"term": {"title": "shoe"}}, "filter.term.title"),
    ({"range": {"price": {"between": [1, 2]}}}, "filter.range.price"),
    ({"range": {"day": {"gte": "yesterday"}}}, "filter.range.day.gte"),
    ({"terms": {"cat": []}}, "filter.terms.cat"),
    ({"bool": {"must": [], "nope": []}}, "filter.bool"),
    ({"term": {"cat": "a"}, "range": {}}, "filter"),
    ({"term": {"ok": "yes"}}, "filter.term.ok"),
    ({"bool": {"minimum_should_match": "50%"}}, "filter.bool.minimum_should_match"),
    ({"match": {"title": {"query": "x", "operator": "xor"}}}, "filter.match.title.operator"),
    ("not a dict", "filter"),
])
def test_malformed_dsl_names_the_clause_path(dsl, path):
    with pytest.raises(FilterError) as exc:
        parse_filter(dsl, MAPPING)
    assert exc.value.message.startswith(path), exc.value.message
    assert exc.value.status == 422


def test_depth_limit():
    dsl = {"term": {"cat": "a"}}
    for _ in range(70):
        dsl = {"bool": {"filter": [dsl]}}
    with pytest.raises(FilterError, match="deeper than"):
        parse_filter(dsl, MAPPING)


def test_elasticsearch_semantics():
    doc = {"cat": ["a", "b"], "price": 5, "title": "Red running shoe", "day": "2024-05-02", "ok": False}
    assert ev({"term": {"cat": "b"}}, doc)                          # arrays match when any element does
    assert not ev({"term": {"cat": "c"}}, doc)
    assert ev({"bool": {"must_not": [{"term": {"cat": "c"}}]}}, {})  # missing field: must_not keeps the doc
    assert not ev({"range": {"price": {"gt": 1}}}, {"price": None})  # null matches no leaf
    assert not ev({"exists": {"field": "cat"}}, {"cat": []})          # empty array = missing
    assert ev({"match": {"title": "SHOE blue"}}, doc)
    assert not ev({"match": {"title": {"query": "shoe blue", "operator": "and"}}}, doc)
    assert ev({"range": {"day": {"gte": "2024-05-01T12:00:00Z", "lt": "2024-05-03"}}}, doc)
    assert ev({"term": {"ok": False}}, doc)
    assert ev({"ids": {"values": ["p1"]}}, doc) and not ev({"ids": {"values": ["p2"]}}, doc)
    # should beside must only scores; alone it needs one match; minimum_should_match raises the bar.
    assert ev({"bool": {"must": [{"term": {"cat": "a"}}], "should": [{"term": {"cat": "zzz"}}]}}, doc)
    assert not ev({"bool": {"should": [{"term": {"cat": "zzz"}}]}}, doc)
    assert not ev({"bool": {"should": [{"term": {"cat": "a"}}, {"term": {"cat": "z"}}], "minimum_should_match": 2}}, doc)
    assert ev({"bool": {}}, doc)


def test_milvus_translation_guards_every_leaf_and_escapes():
    e = to_milvus(parse_filter({"term": {"cat": 'x" or true or "'}}, MAPPING), MAPPING)
    assert e == '(exists meta["cat"]) and json_contains(meta["cat"], "x\\" or true or \\"")'
    e = to_milvus(parse_filter({"bool": {"must_not": [{"range": {"price": {"gte": 2, "lt": 3}}}]}}, MAPPING), MAPPING)
    assert e == '(not ((exists meta["price"]) and meta["price"] >= 2.0 and meta["price"] < 3.0))'
    e = to_milvus(parse_filter({"terms": {"qty": [1, 2]}}, MAPPING), MAPPING)
    assert e == '(exists meta["qty"]) and (meta["qty"] == 1.0 or meta["qty"] == 2.0)'
    assert "1714608000000.0" in to_milvus(parse_filter({"range": {"day": {"gte": "2024-05-02"}}}, MAPPING), MAPPING)
    assert to_milvus(parse_filter({"ids": {"values": []}}, MAPPING), MAPPING) == '(id == "")'
    assert to_milvus(parse_filter({"bool": {}}, MAPPING), MAPPING) == '(id != "")'
    assert to_milvus(parse_filter({"match": {"title": "x"}}, MAPPING), MAPPING) is None
    assert to_milvus(parse_filter({"bool": {"should": [{"term": {"cat": "a"}}] * 3, "minimum_should_match": 2}}, MAPPING), MAPPING) is None
    assert to_milvus(parse_filter({"range": {"cat": {"gte": "m"}}}, MAPPING), MAPPING) is None


def test_split_pushes_translatable_conjuncts_down():
    node = parse_filter({"bool": {"filter": [{"term": {"cat": "a"}}, {"match": {"title": "shoe"}}],
                                  "must_not": [{"term": {"ok": True}}]}}, MAPPING)
    expr, rest = split_conjuncts(node, MAPPING)
    assert 'json_contains(meta["cat"], "a")' in expr and 'not (' in expr and "title" not in expr
    assert rest == Bool(filter=(Match("title", "shoe"),))
    whole, none = split_conjuncts(parse_filter({"term": {"cat": "a"}}, MAPPING), MAPPING)
    assert whole and none is None
    only_es = parse_filter({"bool": {"should": [{"match": {"title": "a"}}, {"term": {"cat": "b"}}]}}, MAPPING)
    assert split_conjuncts(only_es, MAPPING) == (None, only_es)
    assert split_conjuncts(None, MAPPING) == (None, None)


def test_to_es_round_trip_keeps_meaning():
    dsl = {"bool": {"must": [{"match": {"title": {"query": "red", "operator": "or"}}}],
                    "filter": [{"terms": {"cat": ["a"]}}, {"range": {"price": {"lte": 9}}}],
                    "must_not": [{"exists": {"field": "ok"}}], "should": [{"ids": {"values": ["p1"]}}],
                    "minimum_should_match": 0}}
    node = parse_filter(dsl, MAPPING)
    assert parse_filter(to_es(node), MAPPING) == node


def test_planner_paths():
    push = parse_filter({"term": {"cat": "a"}}, MAPPING)
    es = parse_filter({"bool": {"filter": [{"term": {"cat": "a"}}, {"match": {"title": "x"}}]}}, MAPPING)
    assert plan_filter(None, MAPPING).kind == "none"
    assert plan_filter(push, MAPPING).kind == "pushdown"
    first = plan_filter(es, MAPPING)
    assert first.needs_es and first.expr and first.residual == Bool(filter=(Match("title", "x"),))
    assert choose_es_path(first, 50, max_ids=100).kind == "prefilter"
    assert choose_es_path(first, 5000, max_ids=100).kind == "postfilter"
    forced = plan_filter(push, MAPPING, mode="postfilter")
    assert forced == FilterPlan("postfilter", None, push, push)
    assert choose_es_path(forced, 1, max_ids=100, mode="postfilter").kind == "postfilter"
    assert plan_filter(push, MAPPING, mode="prefilter").kind == "prefilter"
    assert first_fetch(10, 4) == 40 and first_fetch(1, 4) == 17
    assert next_fetch(40, 4) == 160 and next_fetch(16_384, 4) is None and next_fetch(10_000, 4) == 16_384
    assert and_(None, push) == push and and_(None, None) is None
    assert and_(push, push) == Bool(filter=(push, push))


def test_normalise_meta_validates_and_projects():
    meta = normalise_meta({"cat": "a", "price": 3, "ok": True, "day": "2024-05-02", "title": "x", "free": {"y": 1},
                           "qty": None}, MAPPING)
    assert meta == {"cat": ["a"], "price": 3, "ok": True, "day": 1714608000000.0}
    assert normalise_meta({"cat": []}, MAPPING) == {}
    for bad, field in [({"price": "3"}, "price"), ({"cat": 5}, "cat"), ({"ok": 1}, "ok"), ({"day": "soon"}, "day"),
                       ({"qty": [1, 2]}, "qty"), ({"title": 5}, "title")]:
        with pytest.raises(InvalidRequest) as exc:
            normalise_meta(bad, MAPPING, "points[3].payload")
        assert exc.value.field == f"points[3].payload.{field}"


def test_tokens():
    assert tokens("Red-Running SHOE, size_42!") == ["red", "running", "shoe", "size", "42"]


def test_simplify_keeps_meaning_and_flattens():
    deep = {"term": {"cat": "a"}}
    for _ in range(50):
        deep = {"bool": {"filter": [deep]}}
    assert parse_filter(deep, MAPPING) == Term("cat", "a")
    nested = parse_filter({"bool": {"must": [{"bool": {"filter": [{"term": {"cat": "a"}}, {"term": {"ok": True}}]}}],
                                    "filter": [{"exists": {"field": "price"}}]}}, MAPPING)
    assert nested == Bool(filter=(Term("cat", "a"), Term("ok", True), Exists("price")))
    # should beside a filter only scores: dropped; an empty bool conjunct (match-all) does not make it required.
    assert parse_filter({"bool": {"filter": [{"bool": {}}], "should": [{"term": {"cat": "zzz"}}]}}, MAPPING) == Bool()
    kept = parse_filter({"bool": {"should": [{"term": {"cat": "a"}}]}}, MAPPING)
    assert kept == Bool(should=(Term("cat", "a"),))
    docs = [({"cat": "a", "ok": True, "price": 1}, True), ({"cat": "a"}, False), ({}, False)]
    for payload, want in docs:
        assert evaluate(nested, "p", payload, MAPPING) is want


def test_search_params_follow_the_budget_and_the_observed_latency():
    from router.filters.plan import adapt_params

    small = adapt_params("HNSW", 10, budget_ms=5, observed_ms=10)
    large = adapt_params("HNSW", 10, budget_ms=200, observed_ms=10)
    assert small["ef"] < 64 < large["ef"] and small["ef"] >= 10
    assert adapt_params("HNSW", 10, budget_ms=20, observed_ms=10) == {"ef": 64}
    assert adapt_params("HNSW", 100, budget_ms=1, observed_ms=50) == {"ef": 100}  # never below the limit
    assert adapt_params("IVF_FLAT", 10, budget_ms=2, observed_ms=10)["nprobe"] < 16
    assert adapt_params("HNSW", 10, None, 10) is None and adapt_params("HNSW", 10, 5, None) is None
    assert adapt_params("HNSW", 10, 5, 10, given={"ef": 300}) is None  # the request's own params win
    assert adapt_params("FLAT", 10, 5, 10) is None


def test_a_routed_space_searches_as_deep_as_the_hash_layout_did_over_all_its_shards():
    from router.filters.plan import MAX_EF, MAX_NPROBE, adapt_params, routed_depth

    assert routed_depth("v", 8) == {"v": 8} and routed_depth(None, 8) == {} and routed_depth("v", 1) == {}
    assert adapt_params("HNSW", 10, None, None, depth=4) == {"ef": 256}  # no budget known: the deeper default
    assert adapt_params("HNSW", 10, None, None, depth=16) == {"ef": MAX_EF}  # capped
    assert adapt_params("HNSW", 700, None, None, depth=8) == {"ef": 700}  # never below the limit
    assert adapt_params("IVF_SQ8", 10, None, None, depth=4) == {"nprobe": 64}
    assert adapt_params("IVF_FLAT", 10, None, None, depth=64) == {"nprobe": MAX_NPROBE}
    assert adapt_params("HNSW", 10, 5, 10, given={"ef": 30}, depth=8) is None  # the request's own params win
    assert adapt_params("FLAT", 10, None, None, depth=8) is None
    # a budget still scales the deeper default: plenty of room doubles it (to the cap), little shrinks it
    assert adapt_params("HNSW", 10, 200, 10, depth=2) == {"ef": 256}
    assert 10 <= adapt_params("HNSW", 10, 5, 10, depth=2)["ef"] < 128
