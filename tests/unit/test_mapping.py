"""Dynamic metadata mapping: first sight as Elasticsearch maps it; later conflicts refused (pure)."""
import pytest

from cluster.errors import InvalidRequest
from router.filters.dsl import normalise_meta
from router.filters.mapping import KEYWORD_MAX, infer_fields, value_type


@pytest.mark.parametrize("value,kind", [
    (True, "boolean"), (3, "integer"), (2.5, "float"), ("red", "keyword"), ("x" * (KEYWORD_MAX + 1), "text"),
    ("2024-05-01", "date"), ("2024-05-01T10:00:00Z", "date"), ("2024-13-45", "keyword"), (["a", "b"], "keyword"),
    ([1, 2.5], "float"), ([1, 2], "integer"), ([], None), ([None], None), ({"nested": 1}, None), ([1, "a"], None),
    (None, None),
])
def test_value_types(value, kind):
    assert value_type(value) == kind


def test_infer_only_what_is_new_and_mappable():
    mapping = {"brand": "keyword"}
    new = infer_fields([{"brand": "acme", "price": 10, "tags": ["a"], "obj": {"x": 1}, "bad name": 1, "n": None},
                        {"price": 12.5, "when": "2024-01-02", "note": "short"},
                        {"note": "y" * 300}], mapping)
    assert new == {"price": "float", "tags": "keyword", "when": "date", "note": "text"}
    assert infer_fields([{"brand": 1}], mapping) == {}  # declared wins: checked by normalise_meta instead


def test_later_values_of_another_type_are_refused():
    mapping = {"n": "integer", "b": "boolean", "d": "date", "k": "keyword", "f": "float"}
    normalise_meta({"n": 3, "b": False, "d": "2024-01-01", "k": ["x"], "f": 2}, mapping)
    for payload, field in (({"n": "3"}, "n"), ({"n": 3.5}, "n"), ({"b": 1}, "b"), ({"d": "soon"}, "d"),
                           ({"k": 5}, "k"), ({"f": "x"}, "f")):
        with pytest.raises(InvalidRequest) as exc:
            normalise_meta(payload, mapping, "points[0].payload")
        assert exc.value.field == f"points[0].payload.{field}"
