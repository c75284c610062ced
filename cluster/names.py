"""The character rules for collection names, space names and point ids: one rule each, checked at every entry (HTTP
path and body, gRPC, the catalog, the CLI) before anything else looks at the value. Pure.

Collection names become file names (`catalog/<name>.json`, `milvus/<name>/`), Elasticsearch index names
(`prism-<name lower-cased>`) and Milvus collection names (`<collection>__<space>__s<shard>_r<replica>`), so:

- letters, digits and `_`, starting with a letter, at most 48 characters: no `/`, `.`, NUL or anything a path
  or an index name could read differently;
- no `__` in a collection or space name: `a__b` + `c` and `a` + `b__c` would name the same Milvus collection;
- names are case-sensitive, but two collections may not differ only in case (the Elasticsearch index is
  lower-cased, and some file systems fold case): the service refuses the second one.

Point ids may hold any character but control characters (C0, DEL, C1) and lone surrogates: they travel as Milvus
VARCHAR keys, Elasticsearch `_id`s, filter literals and cursor text, and must come back out of each unchanged. An id
has at most 256 characters and 512 bytes in UTF-8 (Elasticsearch refuses a longer `_id`; 128 emoji fit, 200 do not).
"""
from __future__ import annotations

import re

from cluster.errors import InvalidRequest

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,47}$"
NAME_RE = re.compile(NAME_PATTERN)
MAX_NAME_LENGTH = 48
MAX_ID_LENGTH = 256
MAX_ID_BYTES = 512  # Elasticsearch's bound on `_id` (UTF-8 bytes); past it a write fails in the store, not here
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def name_problem(name: object, what: str = "collection name") -> str | None:
    """Why `name` is not a valid collection (or space) name, or None when it is."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {type(name).__name__}"
    shown = repr(name if len(name) <= 60 else name[:57] + "...")
    if not NAME_RE.fullmatch(name):
        return (f"{what} {shown} is not valid: letters, digits and '_', starting with a letter, at most "
                f"{MAX_NAME_LENGTH} characters")
    if "__" in name:
        return f"{what} {shown} is not valid: '__' is reserved (it separates the parts of Milvus collection names)"
    return None


def check_name(name: object, field: str = "name", what: str = "collection name") -> str:
    """`name` when it is a valid collection name; else InvalidRequest (422) naming `field`."""
    problem = name_problem(name, what)
    if problem:
        raise InvalidRequest(problem, field=field)
    return name  # type: ignore[return-value]


def id_problem(value: object) -> str | None:
    """Why `value` is not a valid point id, or None when it is."""
    if not isinstance(value, str):
        return f"an id must be a string, got {type(value).__name__}"
    if not value:
        return "an id must not be empty"
    size = len(value.encode("utf-8", "surrogatepass"))  # a lone surrogate is refused below, by name
    if len(value) > MAX_ID_LENGTH or size > MAX_ID_BYTES:
        return (f"an id has at most {MAX_ID_LENGTH} characters and {MAX_ID_BYTES} bytes in UTF-8, got {len(value)} "
                f"characters, {size} bytes")
    bad = _BAD_ID_CHAR.search(value)
    if bad:
        ch = bad.group()
        kind = "a lone surrogate" if "\ud800" <= ch <= "\udfff" else "a control character"
        return f"id {value[:60]!r} holds {kind} (U+{ord(ch):04X}), which ids may not contain"
    return None


def check_id(value: object, field: str = "id") -> str:
    """`value` when it is a valid point id; else InvalidRequest (422) naming `field`."""
    problem = id_problem(value)
    if problem:
        raise InvalidRequest(problem, field=field)
    return value  # type: ignore[return-value]
