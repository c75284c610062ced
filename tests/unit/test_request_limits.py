"""Bounds checked before a request is parsed or anything is written (pure)."""
import json

import pytest
from pydantic import ValidationError

from router.schema.bodies import MAX_JSON_DEPTH, json_too_deep
from router.schema.points import MAX_PAYLOAD_DEPTH, Point, object_depth


def nest(depth: int) -> dict:
    out: dict = {"leaf": 1}
    for _ in range(depth - 1):
        out = {"x": out}
    return out


def test_json_nesting_is_bounded_without_parsing():
    assert json_too_deep(b"[" * 5000 + b"]" * 5000)  # json.loads would raise RecursionError (a 500 before)
    assert not json_too_deep(json.dumps(nest(MAX_JSON_DEPTH)).encode())
    assert json_too_deep(json.dumps(nest(MAX_JSON_DEPTH + 1)).encode())
    # brackets inside strings (escaped quotes included) are text, not nesting
    assert not json_too_deep(json.dumps({"s": "[" * 500, "t": '\\"[{' * 100}).encode())
    # many shallow arrays (a bulk upsert) are not deep
    assert not json_too_deep(json.dumps({"points": [{"id": str(i), "vectors": {"v": [1.0, 2.0]}}
                                                    for i in range(1000)]}).encode())


def test_payload_objects_nest_at_most_as_deep_as_elasticsearch_indexes():
    assert object_depth({"a": [{"b": {"c": 1}}], "d": 2}) == (3, "a.b")
    Point(id="ok", payload=nest(MAX_PAYLOAD_DEPTH))
    with pytest.raises(ValidationError, match=f"at most {MAX_PAYLOAD_DEPTH}"):
        Point(id="deep", payload=nest(MAX_PAYLOAD_DEPTH + 1))
