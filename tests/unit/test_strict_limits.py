"""Strict limits: each violation is a 422 naming the field and the limit (pure)."""
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import StrictLimits
from cluster.errors import InvalidRequest
from router.collection.limits import check_batch, check_filter, check_layout, check_query, check_write, filter_shape
from router.schema.query import BatchQueryRequest, QueryRequest

L = StrictLimits(max_limit=50, max_prefetch=2, max_prefetch_limit=100, max_ef=256, max_nprobe=64,
                 max_batch_queries=3, max_filter_depth=3, max_filter_clauses=6, max_upsert_points=10,
                 max_shards=4, max_replicas=2)


def q(**kw):
    return QueryRequest.model_validate({"prefetch": [{"space": "v", "vector": [1.0]}], **kw})


def nested(depth):
    f = {"term": {"a": 1}}
    for _ in range(depth):
        f = {"bool": {"must": [f]}}
    return f


def test_filter_shape():
    assert filter_shape(None) == (0, 0)
    assert filter_shape({"term": {"a": 1}}) == (0, 1)
    assert filter_shape(nested(3)) == (3, 4)
    assert filter_shape({"bool": {"must": [{"term": {"a": 1}}], "must_not": {"term": {"b": 2}},
                                  "should": [{"bool": {"filter": [{"exists": {"field": "c"}}]}}]}}) == (2, 5)


@pytest.mark.parametrize("kw,field,limit", [
    ({"limit": 51}, "limit", "max_limit"),
    ({"limit": 40, "offset": 11}, "limit", "max_limit"),
    ({"prefetch": [{"space": "v", "vector": [1.0]}] * 3}, "prefetch", "max_prefetch"),
    ({"prefetch": [{"space": "v", "vector": [1.0], "limit": 101}]}, "prefetch[0].limit", "max_prefetch_limit"),
    ({"fusion": {"window": 101}}, "fusion.window", "max_prefetch_limit"),
    ({"prefetch": [{"space": "v", "vector": [1.0], "params": {"ef": 257}}]}, "prefetch[0].params.ef", "max_ef"),
    ({"prefetch": [{"space": "v", "vector": [1.0], "params": {"nprobe": 65}}]}, "prefetch[0].params.nprobe",
     "max_nprobe"),
    ({"filter": nested(4)}, "filter", "max_filter_depth"),
    ({"prefetch": [{"space": "v", "vector": [1.0], "filter": {"bool": {"should": [{"term": {"a": i}}
                                                                                   for i in range(6)]}}}]},
     "prefetch[0].filter", "max_filter_clauses"),
])
def test_each_query_limit_names_field_and_limit(kw, field, limit):
    with pytest.raises(InvalidRequest) as exc:
        check_query(q(**kw), L)
    assert exc.value.field == field and limit in exc.value.message and exc.value.status == 422


def test_within_limits_passes():
    check_query(q(limit=50, filter=nested(3),
                  prefetch=[{"space": "v", "vector": [1.0], "limit": 100, "params": {"ef": 256}}]), L)
    check_write(10, L)
    check_filter(None, L, "filter")


def test_batch_write_and_layout_limits():
    batch = BatchQueryRequest.model_validate({"queries": [{"prefetch": [{"space": "v", "vector": [1.0]}]}] * 4})
    with pytest.raises(InvalidRequest, match="max_batch_queries"):
        check_batch(batch, L)
    batch = BatchQueryRequest.model_validate({"queries": [{"prefetch": [{"space": "v", "vector": [1.0]}],
                                                           "limit": 99}]})
    with pytest.raises(InvalidRequest) as exc:
        check_batch(batch, L)
    assert exc.value.field == "queries[0].limit"
    with pytest.raises(InvalidRequest, match="max_upsert_points") as exc:
        check_write(11, L)
    assert exc.value.field == "points"
    with pytest.raises(InvalidRequest) as exc:
        check_write(11, L, "ids")
    assert exc.value.field == "ids"
    for kw, field in (({"shards": 5}, "shards"), ({"replicas": 3}, "replicas")):
        cfg = CollectionConfig(name="c", spaces={"v": {"dim": 2}}, **kw)
        with pytest.raises(InvalidRequest) as exc:
            check_layout(cfg, L)
        assert exc.value.field == field and f"max_{field}" in exc.value.message


def test_values_no_index_accepts_are_left_to_the_index_bounds_check():
    # ef = 100000000 is refused by check_search_params naming Milvus's own range (1..32768), not as a policy limit
    check_query(q(prefetch=[{"space": "v", "vector": [1.0], "params": {"ef": 100_000_000}}]), L)


def test_source_text_is_bounded_per_document_and_per_request():
    from router.collection.limits import check_documents
    from router.schema.points import Point, VectorUpdate

    cfg = CollectionConfig(name="d", spaces={"t": {"dim": 384, "encoder": "minilm", "source": "body"},
                                             "v": {"dim": 2}})
    lim = StrictLimits(max_document_chars=10, max_request_document_chars=25)
    check_documents([Point(id="a", payload={"body": "x" * 10, "other": "y" * 1000})], cfg, lim)  # other: not embedded
    check_documents([Point(id="a", payload={"body": "x" * 99}, vectors={"t": [0.1] * 384})], cfg, lim)  # given
    with pytest.raises(InvalidRequest, match=r"points\[1\].payload.body: 11 characters .*limits.max_document_chars"):
        check_documents([Point(id="a", payload={"body": "x"}), Point(id="b", payload={"body": "x" * 11})], cfg, lim)
    with pytest.raises(InvalidRequest, match="limits.max_request_document_chars") as exc:
        check_documents([Point(id=str(i), payload={"body": "x" * 9}) for i in range(3)], cfg, lim)
    assert exc.value.field == "points"
    with pytest.raises(InvalidRequest, match=r"points\[0\].sources.body"):
        check_documents([VectorUpdate(id="a", sources={"body": "x" * 11})], cfg, lim, sources=True)
