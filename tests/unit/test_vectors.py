"""Request vectors are validated before anything is searched or written (pure: no servers)."""
import asyncio

import pytest

from cluster.config import CollectionConfig
from cluster.errors import InvalidRequest
from router.models import Point, QueryRequest
from router.vectors import Vectors

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
