"""Dynamic metadata mapping: payload fields nobody declared are mapped on first sight, as Elasticsearch's dynamic
mapping would, so they can be filtered without a declaration. Pure.

First sight: bool -> boolean, int -> integer, float -> float (a field holding ints and floats in the batch that
first shows it -> float), ISO-8601 date strings -> date, other strings -> keyword, or text when longer than
Elasticsearch's default keyword limit (256). Lists map by their elements. Objects nested inside a payload, empty
lists, nulls and field names outside FIELD_RE stay unmapped (stored and returned, not filterable). Declared mappings
always win; after a field is mapped, a value of another type is refused by `router.filters.dsl.normalise_meta` (422).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from router.filters.dsl import _DATE_RE, epoch_ms
from cluster.errors import FilterError

KEYWORD_MAX = 256  # Elasticsearch's dynamic template maps longer strings as text only (ignore_above: 256)
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


def _scalar_type(v: Any) -> str | None:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        if _DATE_RE.match(v):
            try:
                epoch_ms(v)
                return "date"
            except FilterError:
                pass
        return "text" if len(v) > KEYWORD_MAX else "keyword"
    return None


def value_type(v: Any) -> str | None:
    """The type a value maps to on first sight (None: it maps to nothing)."""
    if isinstance(v, list):
        kinds = {_scalar_type(x) for x in v if x is not None}
        if kinds == {"integer", "float"}:
            return "float"
        if kinds <= {"keyword", "text"} and kinds:
            return "text" if "text" in kinds else "keyword"
        return kinds.pop() if len(kinds) == 1 else None
    return _scalar_type(v)


def infer_fields(payloads: Iterable[dict[str, Any]], mapping: dict[str, str]) -> dict[str, str]:
    """The fields these payloads bring that `mapping` lacks, with the type each maps to (the first value that maps
    decides; ints beside floats make a float; a keyword beside a longer string makes text)."""
    new: dict[str, str] = {}
    for payload in payloads:
        for field, v in payload.items():
            if field in mapping or v is None or not FIELD_RE.match(field):
                continue
            kind = value_type(v)
            if kind is None:
                continue
            seen = new.get(field)
            if seen is None:
                new[field] = kind
            elif {seen, kind} == {"integer", "float"}:
                new[field] = "float"
            elif {seen, kind} == {"keyword", "text"}:
                new[field] = "text"
    return new
