"""The filter oracle: whether a point matches a parsed filter, by Elasticsearch semantics over its raw payload.

Brute force in plain Python, independent of the Milvus translation and of Elasticsearch: the tests hold both
against it. It lives with the tests, not the product.
"""
from __future__ import annotations

from typing import Any

from cluster.errors import FilterError
from router.filters import NUMERIC, Bool, Exists, Ids, Match, Node, Range, Term, Terms, epoch_ms, tokens


def evaluate(node: Node, point_id: str, payload: dict[str, Any], mapping: dict[str, str]) -> bool:
    """Whether a point matches, by Elasticsearch semantics over its raw payload."""
    if isinstance(node, Bool):
        if not all(evaluate(c, point_id, payload, mapping) for c in node.must + node.filter):
            return False
        if any(evaluate(c, point_id, payload, mapping) for c in node.must_not):
            return False
        need = node.required_should
        return need == 0 or sum(evaluate(c, point_id, payload, mapping) for c in node.should) >= need
    if isinstance(node, Ids):
        return point_id in node.values
    values = _values(payload.get(node.field))
    if isinstance(node, Exists):
        return bool(values)
    ftype = mapping[node.field]
    if isinstance(node, Match):
        have = {t for v in values for t in tokens(v)}
        want = tokens(node.query)
        if not want:
            return False
        return all(t in have for t in want) if node.operator == "and" else any(t in have for t in want)
    conv = [c for c in (_comparable(v, ftype) for v in values) if c is not None]
    if isinstance(node, Term):
        return _comparable(node.value, ftype) in conv
    if isinstance(node, Terms):
        wanted = {_comparable(v, ftype) for v in node.values}
        return any(c in wanted for c in conv)
    if isinstance(node, Range):
        bounds = {k: _comparable(getattr(node, k), ftype) for k in ("gt", "gte", "lt", "lte")
                  if getattr(node, k) is not None}
        return any(_in_range(c, bounds) for c in conv)
    raise TypeError(node)


def _values(v: Any) -> list[Any]:
    if v is None:
        return []
    return [x for x in v if x is not None] if isinstance(v, list) else [v]


def _comparable(v: Any, ftype: str) -> Any:
    if ftype in NUMERIC:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    if ftype == "date":
        try:
            return epoch_ms(v) if isinstance(v, str) else None
        except FilterError:
            return None
    if ftype == "boolean":
        return v if isinstance(v, bool) else None
    return v if isinstance(v, str) else None


def _in_range(c: Any, bounds: dict[str, Any]) -> bool:
    return ((("gt" not in bounds) or c > bounds["gt"]) and (("gte" not in bounds) or c >= bounds["gte"])
            and (("lt" not in bounds) or c < bounds["lt"]) and (("lte" not in bounds) or c <= bounds["lte"]))
