"""Qdrant filters -> prism's filter DSL (router.filters.dsl' Elasticsearch subset), which prism plans as it plans its
own: pushed into Milvus where it translates, else answered by Elasticsearch. Pure.

Semantics are Qdrant's (qdrant-client 1.20.0's local mode, local/payload_filters.py), with prism's mapping
(every payload field is typed on first sight, router.filters.mapping) standing in for the payload's own types:

- must: all; must_not: none; should: at least one (an empty `should` restricts nothing); min_should: at least
  `min_count` of its conditions. Each group is its own bool clause (a should beside must would only score).
- match value / any: exact, and typed: a string matches keyword values, an integer integer (or float) values, a
  bool boolean values; another type never matches. Arrays match when an element does. A field no point has yet
  (unmapped) matches nothing.
- match except: the field holds a value that is not in the list (a missing or null field does not match). For an
  array field prism can only say "no element is in the list", where Qdrant says "some element is not".
- match text / text_any: every / any query token is a token of the text (lowercased words, Qdrant's default
  tokenizer and prism's). Needs a `text` field: declare one with a payload index of type text before upserting.
- range: numbers on integer and float fields; datetimes (RFC 3339 strings) on date fields; other fields never.
- is_empty: the field is missing, null or []; has_id: the listed ids.
Refused with a 400 naming the clause (errors.Unsupported): is_null (prism does not index nulls), nested keys
(`a.b`, `a[]`), `nested`, geo, values_count, has_vector, slice, and the other match kinds.
"""
from __future__ import annotations

from typing import Any

from router.filters.dsl import _DATE_RE, tokens
from router.serving.qdrant.errors import BadFormat, OutOfRange, Unsupported
from router.serving.qdrant.ids import to_prism

TRUE: dict[str, Any] = {"bool": {}}
FALSE: dict[str, Any] = {"ids": {"values": []}}
NUMBERS = frozenset({"integer", "float"})
_FIELD_KINDS = ("match", "range", "is_empty", "is_null", "values_count", "geo_bounding_box", "geo_radius",
                "geo_polygon")


def translate(flt: Any, mapping: dict[str, str], path: str = "filter") -> dict[str, Any] | None:
    """The prism filter of a Qdrant filter (None: it restricts nothing)."""
    if flt is None:
        return None
    node = _filter(flt, mapping, path)
    return None if node == TRUE else node


def _conditions(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _filter(flt: Any, mapping: dict[str, str], path: str) -> dict[str, Any]:
    if not isinstance(flt, dict) or not set(flt) <= {"must", "should", "must_not", "min_should"}:
        raise BadFormat(f"{path}: a filter is an object of must, should, must_not, min_should (got {_show(flt)})")
    parts: list[dict[str, Any]] = []
    for i, c in enumerate(_conditions(flt.get("must"), path)):
        parts.append(_condition(c, mapping, f"{path}.must[{i}]"))
    not_parts = [_condition(c, mapping, f"{path}.must_not[{i}]")
                 for i, c in enumerate(_conditions(flt.get("must_not"), path))]
    should = [_condition(c, mapping, f"{path}.should[{i}]") for i, c in enumerate(_conditions(flt.get("should"), path))]
    if should:
        parts.append({"bool": {"should": should, "minimum_should_match": 1}})
    ms = flt.get("min_should")
    if ms is not None:
        if not isinstance(ms, dict) or set(ms) != {"conditions", "min_count"} or not isinstance(ms["conditions"], list):
            raise BadFormat(f"{path}.min_should: expected {{conditions: [...], min_count: n}}")
        n = ms["min_count"]
        if isinstance(n, bool) or not isinstance(n, int):
            raise BadFormat(f"{path}.min_should.min_count: expected an integer, got {_show(n)}")
        if n < 1:
            raise OutOfRange(f"{path}.min_should.min_count: value {n} invalid, must be 1 or larger")
        conds = [_condition(c, mapping, f"{path}.min_should.conditions[{i}]") for i, c in enumerate(ms["conditions"])]
        parts.append({"bool": {"should": conds, "minimum_should_match": n}} if len(conds) >= n else FALSE)
    parts = [p for p in parts if p != TRUE]
    if FALSE in parts:
        return FALSE
    if any(p == FALSE for p in not_parts):
        not_parts = [p for p in not_parts if p != FALSE]
    if TRUE in not_parts:
        return FALSE
    if not parts and not not_parts:
        return TRUE
    if len(parts) == 1 and not not_parts:
        return parts[0]
    return {"bool": {**({"filter": parts} if parts else {}), **({"must_not": not_parts} if not_parts else {})}}


def _condition(c: Any, mapping: dict[str, str], path: str) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise BadFormat(f"{path}: a condition is an object, got {_show(c)}")
    if "key" in c:
        kinds = [k for k in c if k != "key"]
        if len(kinds) != 1 or kinds[0] not in _FIELD_KINDS:
            raise BadFormat(f"{path}: a field condition is {{key, one of {', '.join(_FIELD_KINDS)}}}, got {_show(c)}")
        return _field(c["key"], kinds[0], c[kinds[0]], mapping, path)
    if set(c) <= {"must", "should", "must_not", "min_should"}:
        return _filter(c, mapping, path)
    if set(c) == {"has_id"}:
        if not isinstance(c["has_id"], list):
            raise BadFormat(f"{path}.has_id: expected a list of point ids")
        return {"ids": {"values": [to_prism(v, f"{path}.has_id[{i}]") for i, v in enumerate(c["has_id"])]}}
    if set(c) == {"is_empty"} or set(c) == {"is_null"}:
        kind = next(iter(c))
        arg = c[kind]
        if not isinstance(arg, dict) or set(arg) != {"key"}:
            raise BadFormat(f"{path}.{kind}: expected {{key: field}}")
        return _field(arg["key"], kind, True, mapping, path)
    kind = next(iter(c))
    if kind in ("nested", "has_vector", "slice"):
        raise Unsupported(f"{path}: `{kind}` conditions are not supported by prism's Qdrant API yet")
    raise BadFormat(f"{path}: unknown condition {_show(c)}")


def _key(key: Any, path: str) -> str:
    if not isinstance(key, str) or not key:
        raise BadFormat(f"{path}.key: expected a payload key, got {_show(key)}")
    if any(ch in key for ch in '.[]"'):
        raise Unsupported(f"{path}.key: nested payload keys ({key!r}) are not supported by prism's Qdrant API yet; "
                          "filter on top-level keys")
    return key


def _field(key: Any, kind: str, arg: Any, mapping: dict[str, str], path: str) -> dict[str, Any]:
    field = _key(key, path)
    ftype = mapping.get(field)
    if kind == "is_empty":
        if not isinstance(arg, bool):
            raise BadFormat(f"{path}.is_empty: expected true or false")
        has = {"exists": {"field": field}} if ftype else FALSE  # a field no point has is empty everywhere
        return has if arg is False else ({"bool": {"must_not": [has]}} if ftype else TRUE)
    if kind == "is_null":
        raise Unsupported(f"{path}: is_null is not supported by prism's Qdrant API yet (prism does not index null "
                          "values); is_empty matches missing, null and empty values")
    if kind == "match":
        return _match(field, ftype, arg, path)
    if kind == "range":
        return _range(field, ftype, arg, path)
    raise Unsupported(f"{path}: `{kind}` conditions are not supported by prism's Qdrant API yet")


def _typed(value: Any, ftype: str | None) -> bool:
    """Whether a match operand can equal a value of a field of this prism type (Qdrant compares types too)."""
    if isinstance(value, bool):
        return ftype == "boolean"
    if isinstance(value, int):
        return ftype in NUMBERS
    return ftype == "keyword" or ftype == "date" and bool(_DATE_RE.match(value))


def _match(field: str, ftype: str | None, m: Any, path: str) -> dict[str, Any]:
    p = f"{path}.match"
    if not isinstance(m, dict) or len(m) != 1:
        raise BadFormat(f"{p}: expected one of value, any, except, text, text_any (got {_show(m)})")
    kind, arg = next(iter(m.items()))
    if kind == "value":
        if isinstance(arg, float) or not isinstance(arg, (str, int)):
            raise BadFormat(f"{p}.value: expected a string, an integer or a bool, got {_show(arg)}")
        if ftype == "text" and isinstance(arg, str):
            raise Unsupported(f"{p}: exact match on {field!r}, a text field (strings over 256 characters are mapped "
                              "as text), is not supported; use match text")
        return {"term": {field: arg}} if _typed(arg, ftype) else FALSE
    if kind in ("any", "except"):
        if not isinstance(arg, list) or any(isinstance(v, float) or not isinstance(v, (str, int)) for v in arg):
            raise BadFormat(f"{p}.{kind}: expected a list of strings or of integers, got {_show(arg)}")
        if ftype == "text" and any(isinstance(v, str) for v in arg):
            raise Unsupported(f"{p}: exact match on {field!r}, a text field, is not supported; use match text")
        values = [v for v in arg if _typed(v, ftype)]
        hit = {"terms": {field: values}} if values else FALSE
        if kind == "any":
            return hit
        if ftype is None:
            return FALSE
        has = {"exists": {"field": field}}
        return has if hit == FALSE else {"bool": {"filter": [has], "must_not": [hit]}}
    if kind in ("text", "text_any"):
        if not isinstance(arg, str):
            raise BadFormat(f"{p}.{kind}: expected a string")
        if ftype in ("keyword", "date"):
            raise Unsupported(f"{p}: full-text match on {field!r} needs a text field, and it is mapped as {ftype}: "
                              "create a payload index of type text for it before upserting points that have it")
        if ftype != "text" or not tokens(arg):
            return FALSE
        return {"match": {field: {"query": arg, "operator": "and" if kind == "text" else "or"}}}
    raise Unsupported(f"{p}: match {kind!r} is not supported by prism's Qdrant API yet")


def _range(field: str, ftype: str | None, r: Any, path: str) -> dict[str, Any]:
    p = f"{path}.range"
    if not isinstance(r, dict) or not set(r) <= {"lt", "lte", "gt", "gte"}:
        raise BadFormat(f"{p}: a range takes lt, lte, gt, gte (got {_show(r)})")
    bounds = {k: v for k, v in r.items() if v is not None}
    strings = [isinstance(v, str) for v in bounds.values()]
    if any(strings) and not all(strings) or any(isinstance(v, bool) for v in bounds.values()):
        raise BadFormat(f"{p}: bounds are all numbers or all datetimes, got {_show(r)}")
    if any(not isinstance(v, (int, float, str)) for v in bounds.values()):
        raise BadFormat(f"{p}: bounds are numbers or datetimes, got {_show(r)}")
    if not bounds:
        return {"exists": {"field": field}} if ftype in NUMBERS else FALSE
    if all(strings):
        bad = next((v for v in bounds.values() if not _DATE_RE.match(v)), None)
        if bad is not None:
            raise BadFormat(f"{p}: {bad!r} is not a datetime prism reads (RFC 3339, e.g. 2024-05-01T12:00:00Z)")
        return {"range": {field: bounds}} if ftype == "date" else FALSE
    return {"range": {field: bounds}} if ftype in NUMBERS else FALSE


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
