"""Key routing's values: the key of a point (one value of its payload field, as a string the ring hashes) and the
key values a filter pins. A filter pins the key when, at its top level, a term or terms clause on the key field must
hold: the clause itself, or one in `filter`/`must` of a bool (at any depth of such conjunctions). `should` and
`must_not` never pin: a document can match without them. Strings are compared as the filter DSL compares them
(router.filters.dsl): a number given for a keyword is its string, an integer field's value is its integer."""
from __future__ import annotations

import math
from typing import Any, Mapping

from cluster.errors import InvalidRequest

KEY_TYPES = ("keyword", "integer")  # field types a collection can route by: exact values with one spelling each
MAX_DEPTH = 64  # as the filter DSL's nesting bound: a deeper filter is refused there anyway


def key_string(value: Any, key_type: str = "keyword", path: str = "key") -> str:
    """The one spelling of a key value that the ring hashes; InvalidRequest for a value the field cannot hold."""
    if key_type not in KEY_TYPES:
        raise InvalidRequest(f"key routing needs a {' or '.join(KEY_TYPES)} field, not {key_type!r}", field=path)
    if isinstance(value, bool) or value is None:
        raise InvalidRequest(f"{path}: a {key_type} key value, got {value!r}", field=path)
    if key_type == "keyword":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and math.isfinite(value):
            return str(value)  # what the filter DSL makes of a number given for a keyword field
        raise InvalidRequest(f"{path}: a keyword key is a string, got {value!r}", field=path)
    if isinstance(value, str):
        try:
            return str(int(value.strip()))  # "05" and 5 are one key, as the integer field stores them
        except ValueError:
            raise InvalidRequest(f"{path}: an integer key is a whole number, got {value!r}", field=path) from None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value))
    raise InvalidRequest(f"{path}: an integer key is a whole number, got {value!r}", field=path)


def key_of(payload: Mapping[str, Any] | None, field: str, key_type: str = "keyword", path: str = "payload") -> str:
    """The key of a point from its payload; InvalidRequest (422) naming the field when it is absent or not one value."""
    fp = f"{path}.{field}"
    if not isinstance(payload, Mapping) or payload.get(field) is None:
        raise InvalidRequest(f"{fp}: this collection routes points by {field!r}; every point needs a value for it",
                             field=fp)
    value = payload[field]
    if isinstance(value, list):
        if len(value) != 1:
            raise InvalidRequest(f"{fp}: the routing key holds exactly one value, got {len(value)}", field=fp)
        value = value[0]
    return key_string(value, key_type, fp)


def pinned_keys(dsl: Any, field: str, key_type: str = "keyword") -> frozenset[str] | None:
    """The key values a filter allows (one of them must hold), or None when it does not pin the key. An empty set: the
    filter asks for two different keys at once, so no point matches it."""
    found: frozenset[str] | None = None
    for values in _pins(dsl, field, key_type, 0):
        found = values if found is None else found & values
    return found


def _clauses(body: Any) -> list:
    return [body] if isinstance(body, dict) else body if isinstance(body, list) else []


def _pins(clause: Any, field: str, key_type: str, depth: int):
    """Each set of key values that `clause` requires (a malformed clause pins nothing: the DSL refuses it anyway)."""
    if depth > MAX_DEPTH or not isinstance(clause, dict) or len(clause) != 1:
        return
    kind, body = next(iter(clause.items()))
    if kind == "bool" and isinstance(body, dict):
        for key in ("filter", "must"):
            for sub in _clauses(body.get(key)):
                yield from _pins(sub, field, key_type, depth + 1)
        return
    if kind not in ("term", "terms") or not isinstance(body, dict) or len(body) != 1 or field not in body:
        return
    arg = body[field]
    if kind == "term":
        if isinstance(arg, dict):
            if set(arg) != {"value"}:
                return
            arg = arg["value"]
        values = [arg]
    else:
        if not isinstance(arg, list) or not arg:
            return
        values = arg
    try:
        yield frozenset(key_string(v, key_type) for v in values)
    except InvalidRequest:
        return
