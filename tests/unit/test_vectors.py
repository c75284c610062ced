"""Request vectors are validated before anything is searched or written (pure: no servers)."""
import asyncio

import pytest
from pydantic import ValidationError

from cluster.collection_spec import CollectionConfig
from cluster.errors import InvalidRequest
from router.schema.points import Point
from router.schema.query import QueryRequest
from router.encoding.vectors import Vectors

CFG = CollectionConfig(name="z", shards=1, spaces={"c": {"dim": 3, "metric": "cosine"}, "l": {"dim": 3, "metric": "l2"}})


def test_a_zero_vector_on_a_cosine_space_is_refused_naming_the_field():
    v = Vectors(CFG)
    with pytest.raises(InvalidRequest, match="zero vector") as err:
        v.validate_query(QueryRequest(prefetch=[{"space": "c", "vector": [0, 0, 0]}]))
    assert err.value.field == "prefetch[0].vector" and err.value.status == 422
    with pytest.raises(InvalidRequest, match="zero vector") as err:
        asyncio.run(v.prepare_points([Point(id="a", vectors={"c": [0.0, 0.0, 0.0]})]))
    assert err.value.field == "points[0].vectors.c"


def test_a_zero_vector_is_an_ordinary_point_under_l2():
    v = Vectors(CFG)
    v.validate_query(QueryRequest(prefetch=[{"space": "l", "vector": [0, 0, 0]}]))
    rows, _, failed = asyncio.run(v.prepare_points([Point(id="a", vectors={"l": [0.0, 0.0, 0.0]})]))
    assert [r.id for r in rows] == ["a"] and not failed


@pytest.mark.parametrize("index, params, needle", [
    ("HNSW", {"ef": 100_000_000}, "prefetch[0].params.ef: must be an integer in 1..32768"),
    ("HNSW", {"ef": 0}, "1..32768"),
    ("HNSW", {"ef": 12.5}, "must be an integer"),
    ("HNSW", {"nprobe": 8}, "prefetch[0].params.nprobe: a HNSW index takes ef"),
    ("IVF_FLAT", {"nprobe": 70_000}, "1..65536"),
    ("FLAT", {"ef": 64}, "a FLAT index takes no search params"),
])
def test_search_params_are_those_the_index_reads_within_milvus_bounds(index, params, needle):
    cfg = CollectionConfig(name="p", shards=1, spaces={"v": {"dim": 3, "index": {"type": index}}})
    with pytest.raises(InvalidRequest) as err:
        Vectors(cfg).validate_query(QueryRequest(prefetch=[{"space": "v", "vector": [1, 0, 0], "params": params}]))
    assert needle in err.value.message and err.value.field.startswith("prefetch[0].params.")


def test_search_params_within_bounds_pass():
    cfg = CollectionConfig(name="p", shards=1, spaces={"v": {"dim": 3, "index": {"type": "HNSW"}}})
    Vectors(cfg).validate_query(QueryRequest(prefetch=[{"space": "v", "vector": [1, 0, 0], "params": {"ef": 128.0}}]))


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_a_component_beyond_float32_is_refused_in_writes_and_queries(value):
    """Issue 33 H3: 1e39 is finite in float64 and becomes inf in Milvus's float32: a 422 before any store sees it."""
    v = Vectors(CFG)
    with pytest.raises(InvalidRequest, match="float32") as err:
        asyncio.run(v.prepare_points([Point(id="a", vectors={"l": [value, 0.1, 0.2]})]))
    assert err.value.field == "points[0].vectors.l"
    # Queries are refused by the request model itself (a 422 at parsing), before any validation step runs.
    with pytest.raises(ValidationError, match="float32"):
        QueryRequest(prefetch=[{"space": "l", "vector": [0.1, value, 0.2]}])
    rows, _, _ = asyncio.run(v.prepare_points([Point(id="b", vectors={"l": [3.4e38, -3.4e38, 0.0]})]))
    assert rows[0].vectors["l"][0] == 3.4e38  # the edge of the range is a value like any other


def test_a_payload_larger_than_milvus_stores_is_refused_before_any_store():
    from router.encoding.vectors import MAX_PAYLOAD_BYTES

    v = Vectors(CFG)
    big = {"text": "x" * MAX_PAYLOAD_BYTES}
    with pytest.raises(InvalidRequest, match="bytes") as err:
        asyncio.run(v.prepare_points([Point(id="a", payload=big, vectors={"l": [1.0, 0.0, 0.0]})]))
    assert err.value.field == "points[0].payload"
    fits = {"text": "x" * (MAX_PAYLOAD_BYTES - 100)}
    rows, _, _ = asyncio.run(v.prepare_points([Point(id="a", payload=fits, vectors={"l": [1.0, 0.0, 0.0]})]))
    assert rows[0].payload == fits
