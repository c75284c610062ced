"""The pure parts of prism's Qdrant-compatible API (router/qdrant), held against qdrant-client's own local mode:
its fusion functions and its filter evaluator are the oracles (qdrant-client is pinned in the test extras)."""
from __future__ import annotations

import random
import uuid

import pytest
from qdrant_client.http import models as qm
from qdrant_client.hybrid.fusion import distribution_based_score_fusion, reciprocal_rank_fusion
from qdrant_client.local.payload_filters import check_filter

from cluster.errors import CollectionExists, CollectionNotFound, InvalidRequest, PointNotFound, ShardUnavailable
from router.filters.dsl import parse_filter
from router.filters.mapping import infer_fields
from router.serving.qdrant import fusion
from router.serving.qdrant.collections import collection_spec
from router.serving.qdrant.errors import BadFormat, OutOfRange, Unsupported, status_and_message
from router.serving.qdrant.filters import FALSE, translate
from router.serving.qdrant.ids import MAX_UINT, from_prism, to_prism
from router.serving.qdrant.models import CreateCollection, PointsBatch, PointsList, QueryRequest, UpdateVectors, parse
from tests.oracle import evaluate


# -- fusion ----------------------------------------------------------------------------------------------------
def _points(lists):
    return [[qm.ScoredPoint(id=i, version=0, score=s) for i, s in lst] for lst in lists]


def _random_lists(rng: random.Random) -> list[list[tuple[str, float]]]:
    pool = [f"p{i}" for i in range(15)]
    out = []
    for _ in range(rng.randint(1, 4)):
        ids = rng.sample(pool, rng.randint(0, 12))
        scores = sorted((round(rng.uniform(-1, 1), rng.choice([1, 6])) for _ in ids), reverse=True)  # ties too
        out.append(list(zip(ids, scores)))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_rrf_is_qdrants(seed):
    rng = random.Random(seed)
    lists = _random_lists(rng)
    k = rng.choice([None, 1, 2, 5, 60])
    weights = rng.choice([None, [rng.choice([0.0, 0.5, 1.0, 3.0, -1.0]) for _ in lists]])
    limit = rng.randint(1, 20)
    want = [(p.id, p.score) for p in reciprocal_rank_fusion(_points(lists), limit, k, weights)]
    got = fusion.rrf(lists, limit, k, weights)
    assert [i for i, _ in got] == [i for i, _ in want]  # ties in the same order too
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-12)


@pytest.mark.parametrize("seed", range(60))
def test_dbsf_is_qdrants(seed):
    rng = random.Random(seed)
    lists = _random_lists(rng)
    limit = rng.randint(1, 20)
    want = [(p.id, p.score) for p in distribution_based_score_fusion(_points(lists), limit)]
    got = fusion.dbsf(lists, limit)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-12)


def test_rrf_default_k_is_two_and_positions_start_at_zero():
    assert fusion.rrf([[("a", 0.9), ("b", 0.1)]], 10) == [("a", 1 / 2), ("b", 1 / 3)]
    assert fusion.rrf([[("a", 0.9)], [("a", 0.2)]], 10, k=1, weights=[2.0, 1.0]) == [("a", 1 / 0.5 + 1 / 1)]


def test_fusion_inputs_are_not_mutated_and_bad_rrf_arguments_are_4xx():
    lists = [[("a", 0.5), ("b", 0.4)], [("b", 0.3)]]
    fusion.dbsf(lists, 5)
    fusion.rrf(lists, 5)
    assert lists == [[("a", 0.5), ("b", 0.4)], [("b", 0.3)]]
    with pytest.raises(InvalidRequest, match="weights"):
        fusion.rrf(lists, 5, weights=[1.0])
    with pytest.raises(InvalidRequest, match="k must be at least 1"):
        fusion.rrf(lists, 5, k=0)


# -- ids -------------------------------------------------------------------------------------------------------
def test_integer_and_uuid_ids_round_trip_and_sort_as_qdrant_sorts_them():
    rng = random.Random(7)
    ints = [0, 1, 9, 10, 99, 100, 2**32, MAX_UINT] + [rng.randrange(MAX_UINT) for _ in range(40)]
    uuids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(40)] + [str(uuid.UUID(int=0)),
                                                                             str(uuid.UUID(int=2**128 - 1))]
    for v in ints + uuids:
        assert from_prism(to_prism(v)) == v
    mixed = ints + uuids
    rng.shuffle(mixed)
    qdrant_order = sorted(mixed, key=lambda v: ("", v) if isinstance(v, int) else (v, 0))  # local mode's order
    assert [from_prism(s) for s in sorted(to_prism(v) for v in mixed)] == qdrant_order


def test_uuid_spellings_qdrant_accepts_are_one_id():
    u = "550e8400-e29b-41d4-a716-446655440000"
    for spelling in (u, u.upper(), u.replace("-", ""), "{" + u + "}", "urn:uuid:" + u):
        assert to_prism(spelling) == "uuid:" + u and from_prism(to_prism(spelling)) == u


@pytest.mark.parametrize("bad", [-1, MAX_UINT + 1, True, 1.5, "abc", "", "12", None, [1], "550e8400e29b41d4a716"])
def test_ids_that_are_neither_unsigned_integers_nor_uuids_are_refused(bad):
    with pytest.raises(InvalidRequest):
        to_prism(bad)


def test_ids_of_other_forms_come_back_as_written():
    for stored in ("sku-1", "42", "000000000000000000042", "uuid:nope", "99999999999999999999"):  # 2**64 > last
        assert from_prism(stored) == stored


# -- filters: translation held against Qdrant's own evaluator and prism's filter oracle ---------------------------
WORDS = "red fox jumps over lazy dog quick brown cat sleeps".split()


def _dataset(rng: random.Random) -> list[tuple[object, dict]]:
    out = []
    for i in range(80):
        pid = i if i % 3 else str(uuid.UUID(int=rng.getrandbits(128)))
        p: dict = {}
        for field, make in (
            ("color", lambda: rng.choice(["red", "green", "blue", None])),
            ("tags", lambda: rng.sample(["a", "b", "c", "d"], rng.randint(0, 3))),
            ("n", lambda: rng.choice([rng.randint(-5, 20), None])),
            ("price", lambda: rng.randint(0, 40) + rng.choice([0.25, 0.5])),
            ("ok", lambda: rng.random() < 0.5),
            ("when", lambda: f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"),
            ("desc", lambda: " ".join(rng.choice(WORDS) for _ in range(60))),
        ):
            if rng.random() < 0.8:
                p[field] = make()
        out.append((pid, p))
    return out


def _condition(rng: random.Random, ids: list, depth: int) -> dict:
    kind = rng.randrange(12 if depth < 2 else 11)
    if kind == 0:
        key, value = rng.choice([("color", rng.choice(["red", "blue", 3])), ("n", rng.randint(-5, 20)),
                                 ("ok", rng.random() < 0.5), ("tags", rng.choice("abcd")), ("ghost", "x"),
                                 ("price", 3), ("color", True)])
        return {"key": key, "match": {"value": value}}
    if kind == 1:
        key, vals = rng.choice([("color", ["red", "green"]), ("n", [1, 2, 3, 15]), ("tags", ["a", "d"]),
                                ("color", [1, 2]), ("ghost", ["x"]), ("n", [])])
        return {"key": key, "match": {"any": vals}}
    if kind == 2:  # except: scalar fields (arrays differ, see below)
        key, vals = rng.choice([("color", ["red"]), ("n", [1, 2, 3]), ("color", [5]), ("ghost", ["x"]), ("n", [])])
        return {"key": key, "match": {"except": vals}}
    if kind == 3:
        return {"key": "desc", "match": {rng.choice(["text", "text_any"]): " ".join(rng.sample(WORDS, 2))}}
    if kind == 4:
        lo = rng.randint(-5, 30)
        return {"key": rng.choice(["n", "price", "color", "ghost"]),
                "range": {rng.choice(["gt", "gte"]): lo, rng.choice(["lt", "lte"]): lo + rng.randint(0, 15)}}
    if kind == 5:
        day = rng.randint(1, 28)
        return {"key": "when", "range": {"gte": f"2024-05-{day:02d}T00:00:00Z", "lt": f"2024-05-{min(28, day + 5):02d}"}}
    if kind == 6:
        return {"is_empty": {"key": rng.choice(["color", "tags", "n", "ghost"])}}
    if kind == 7:
        return {"key": rng.choice(["color", "tags", "n"]), "is_empty": rng.random() < 0.5}
    if kind == 8:
        return {"has_id": rng.sample(ids, rng.randint(0, 6))}
    if kind == 9:
        return {"key": "tags", "match": {"value": rng.choice("abcd")}}
    if kind == 10:
        return {"key": "n", "range": {}}
    return _filter(rng, ids, depth + 1)


def _filter(rng: random.Random, ids: list, depth: int = 0) -> dict:
    f: dict = {}
    for clause in ("must", "should", "must_not"):
        if rng.random() < 0.6:
            conds = [_condition(rng, ids, depth) for _ in range(rng.randint(0, 3))]
            f[clause] = conds if len(conds) != 1 or rng.random() < 0.5 else conds[0]
    if rng.random() < 0.3:
        conds = [_condition(rng, ids, depth) for _ in range(rng.randint(1, 4))]
        f["min_should"] = {"conditions": conds, "min_count": rng.randint(1, len(conds) + 1)}
    return f


def _prism_match(flt: dict, points, mapping) -> list[bool]:
    dsl = translate(flt, mapping)
    node = None if dsl is None else parse_filter(dsl, mapping)
    return [node is None or evaluate(node, to_prism(pid), p, mapping) for pid, p in points]


@pytest.mark.parametrize("seed", range(20))
def test_translated_filters_match_what_qdrant_matches(seed):
    rng = random.Random(seed)
    points = _dataset(rng)
    mapping = infer_fields((p for _, p in points), {})  # prism's dynamic mapping, as an upsert makes it
    assert mapping["desc"] == "text" and mapping["when"] == "date" and mapping["tags"] == "keyword"
    ids = [pid for pid, _ in points]
    for _ in range(25):
        flt = _filter(rng, ids)
        want = [check_filter(qm.Filter.model_validate(flt), p, pid, {}) for pid, p in points]
        assert _prism_match(flt, points, mapping) == want, flt


def test_match_except_on_an_array_says_no_element_is_listed_where_qdrant_says_some_element_is_not():
    """The one documented divergence: prism's filter DSL has no "some element is not in the list"."""
    points = [(1, {"tags": ["a", "b"]}), (2, {"tags": ["b"]}), (3, {"tags": ["a"]}), (4, {})]
    mapping = infer_fields((p for _, p in points), {})
    flt = {"must": [{"key": "tags", "match": {"except": ["a"]}}]}
    assert [check_filter(qm.Filter.model_validate(flt), p, i, {}) for i, p in points] == [True, True, False, False]
    assert _prism_match(flt, points, mapping) == [False, True, False, False]


@pytest.mark.parametrize("flt, what", [
    ({"must": [{"is_null": {"key": "color"}}]}, "is_null"),
    ({"must": [{"key": "color", "is_null": True}]}, "is_null"),
    ({"must": [{"key": "a.b", "match": {"value": "x"}}]}, "nested payload keys"),
    ({"must": [{"key": "tags[]", "match": {"value": "x"}}]}, "nested payload keys"),
    ({"must": [{"nested": {"key": "a", "filter": {}}}]}, "nested"),
    ({"must": [{"has_vector": "v"}]}, "has_vector"),
    ({"must": [{"key": "color", "geo_radius": {"center": {"lat": 0, "lon": 0}, "radius": 1}}]}, "geo_radius"),
    ({"must": [{"key": "color", "values_count": {"gt": 1}}]}, "values_count"),
    ({"must": [{"key": "color", "match": {"phrase": "a b"}}]}, "phrase"),
    ({"must": [{"key": "color", "match": {"text": "red"}}]}, "needs a text field"),
])
def test_what_prism_cannot_filter_is_a_400_naming_it(flt, what):
    with pytest.raises(Unsupported, match=what):
        translate(flt, {"color": "keyword"})


@pytest.mark.parametrize("flt", [
    {"must": "x"}, {"bogus": []}, {"must": [{"key": "c"}]}, {"must": [{"key": "c", "match": {"value": 1.5}}]},
    {"must": [{"key": "c", "range": {"gt": "2024-01-01", "lt": 3}}]}, {"must": [{"key": "c", "range": {"gt": "soon"}}]},
    {"min_should": {"conditions": [], "min_count": "1"}}, {"must": [{"has_id": "7"}]},
    {"must": [{"key": "c", "match": {"any": [1.5]}}]},
])
def test_malformed_filters_are_400s(flt):
    with pytest.raises(BadFormat):
        translate(flt, {"c": "keyword"})


def test_min_count_below_one_is_out_of_range_and_bad_ids_refused():
    with pytest.raises(OutOfRange):
        translate({"min_should": {"conditions": [], "min_count": 0}}, {})
    with pytest.raises(InvalidRequest, match="not a valid UUID"):
        translate({"must": [{"has_id": ["nope"]}]}, {})


def test_constant_filters_fold():
    assert translate({}, {}) is None and translate({"should": []}, {}) is None
    assert translate({"must": [{"key": "ghost", "match": {"value": "x"}}]}, {}) == FALSE
    assert translate({"must_not": [{"key": "ghost", "match": {"value": "x"}}]}, {}) is None


# -- request shapes and collections ------------------------------------------------------------------------------
def test_shape_errors_are_400s_and_range_errors_422s():
    with pytest.raises(BadFormat, match="Extra inputs"):
        parse(QueryRequest, {"limt": 3}, "query")
    with pytest.raises(BadFormat):
        parse(QueryRequest, {"limit": "many"}, "query")
    with pytest.raises(OutOfRange):
        parse(QueryRequest, {"limit": 0}, "query")
    assert status_and_message(OutOfRange("x"))[0] == 422 and status_and_message(BadFormat("x"))[0] == 400


@pytest.mark.parametrize("model, body", [
    (PointsList, {"points": [{"id": 1, "vector": ["0.5", "1", "0", "0"]}]}),
    (PointsList, {"points": [{"id": 1, "vector": [True, False, 0, 0]}]}),
    (PointsBatch, {"batch": {"ids": [1], "vectors": [["1", 0, 0, 0]]}}),
    (PointsBatch, {"batch": {"ids": [1], "vectors": [[1, 0, False, 0]]}}),
    (UpdateVectors, {"points": [{"id": 1, "vector": ["1", 0, 0, 0]}]}),
])
def test_vectors_of_strings_or_bools_are_400s_not_numbers(model, body):
    """Review of issue 31: pydantic's lax mode read "0.5" as 0.5 and true as 1.0, so such a point was written."""
    with pytest.raises(BadFormat):
        parse(model, body, "upsert points")


def test_rrf_k_beyond_what_a_float_holds_is_a_4xx_not_an_overflow():
    with pytest.raises(InvalidRequest, match="rrf.k"):
        fusion.rrf([[("a", 0.5)]], 5, k=10**400)


def test_prism_errors_map_onto_qdrants_status_classes():
    assert status_and_message(CollectionNotFound("gone"), "c") == (404, "Not found: Collection `c` doesn't exist!")
    assert status_and_message(PointNotFound("No point with id 3 found"))[0] == 404
    assert status_and_message(CollectionExists("collection 'c' already exists"))[0] == 409
    assert status_and_message(InvalidRequest("vectors: expected 4 dimensions"))[1].startswith("Wrong input: ")
    assert status_and_message(ShardUnavailable("down"))[0] == 503
    with pytest.raises(TypeError):
        status_and_message(RuntimeError("not prism's"))


def test_collection_spec_maps_qdrant_parameters_onto_prisms():
    spec = collection_spec(parse(CreateCollection, {
        "vectors": {"size": 4, "distance": "Euclid"}, "shard_number": 3, "replication_factor": 2,
        "write_consistency_factor": 1, "hnsw_config": {"m": 8, "ef_construct": 64}, "on_disk_payload": True}, "c"))
    assert spec == {"spaces": {"default": {"dim": 4, "metric": "l2", "index": {
        "type": "HNSW", "params": {"M": 8, "efConstruction": 64}}}}, "shards": 3, "replicas": 2, "write_quorum": 1}
    named = collection_spec(parse(CreateCollection, {"vectors": {
        "text": {"size": 8, "distance": "Cosine", "hnsw_config": {"m": 0}},
        "image": {"size": 16, "distance": "Dot"}}, "hnsw_config": {"ef_construct": 50}}, "c"))
    assert named["spaces"]["text"] == {"dim": 8, "metric": "cosine", "index": {"type": "FLAT"}}
    assert named["spaces"]["image"]["index"] == {"type": "HNSW", "params": {"M": 16, "efConstruction": 50}}


@pytest.mark.parametrize("body, what", [
    ({"vectors": {"size": 4, "distance": "Manhattan"}}, "Manhattan"),
    ({"vectors": {"default": {"size": 4, "distance": "Dot"}}}, "reserved"),
    ({"vectors": {"size": 4, "distance": "Dot"}, "sparse_vectors": {"s": {}}}, "sparse_vectors"),
    ({"vectors": {"size": 4, "distance": "Dot", "multivector_config": {"comparator": "max_sim"}}}, "multivector"),
    ({"vectors": {"size": 4, "distance": "Dot"}, "quantization_config": {"scalar": {"type": "int8"}}}, "quantization"),
    ({"vectors": {"size": 4, "distance": "Dot", "datatype": "uint8"}}, "datatype"),
    ({}, "at least one dense vector"),
])
def test_collection_features_prism_lacks_are_400s(body, what):
    with pytest.raises(Unsupported, match=what):
        collection_spec(parse(CreateCollection, body, "c"))


# -- the package boundary (router/serving/qdrant/__init__.py) ------------------------------------------------------------------
ALLOWED = {"router.serving.qdrant", "router.collection.service", "router.serving.metrics", "router.schema.bodies", "router.collection.cursor", "router.filters.dsl",
           "router.schema.query", "cluster.collection_spec", "cluster.errors", "cluster.names"}
MAY_IMPORT_IT = {"router/serving/app.py", "router/serving/access.py", "router/serving/edge.py"}


def _imports(path):
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_the_qdrant_package_imports_prism_only_through_its_allowed_modules():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    package = sorted((root / "router" / "serving" / "qdrant").glob("*.py"))
    assert len(package) > 5, "the package moved: this test read nothing"  # router/qdrant moved under serving (#27)
    for path in package:
        for mod in _imports(path):
            if mod.split(".")[0] in ("router", "cluster", "shards", "deploy", "ray", "pymilvus", "elasticsearch"):
                assert any(mod == a or mod.startswith(a + ".") for a in ALLOWED), (path.name, mod)
    users = {str(p.relative_to(root)) for d in ("router", "cluster", "shards", "deploy") for p in (root / d).rglob("*.py")
             if "qdrant" not in p.parts and any(m.startswith("router.serving.qdrant") for m in _imports(p))}
    assert users == MAY_IMPORT_IT, users


def test_a_scroll_limit_is_bounded_like_a_query_limit():
    """Found by the issue 31 review: a scroll `limit` of 10**12 was taken, and the scroll read the whole collection
    into one answer. It is bounded as prism bounds a query's limit (10,000: a 422, Qdrant's class for out of range)."""
    from router.schema.query import MAX_LIMIT
    from router.serving.qdrant.models import ScrollRequest, parse

    assert parse(ScrollRequest, {"limit": MAX_LIMIT}, "scroll points").limit == MAX_LIMIT
    for limit in (MAX_LIMIT + 1, 10 ** 12):
        with pytest.raises(OutOfRange, match="limit"):
            parse(ScrollRequest, {"limit": limit}, "scroll points")
