"""Qdrant point ids <-> prism ids, reversibly. Pure.

Qdrant ids are unsigned 64-bit integers or UUIDs, ordered integers first (numerically), then UUIDs (by value);
prism ids are strings, ordered as strings (scroll pages go in that order). So:

- an integer n is stored as its 20-digit zero-padded decimal string (`42` -> `00000000000000000042`): string order
  is numeric order, and 20 digits hold 2^64 - 1;
- a UUID is stored as `uuid:` + its canonical lowercase hyphenated form: `u` sorts after every digit, so every
  UUID comes after every integer, and canonical strings order as the UUIDs' values do;
- a stored id of any other form (written through prism's own API, e.g. `sku-1`) is shown as that string; it
  cannot be addressed through the Qdrant API (which takes only integers and UUIDs).
"""
from __future__ import annotations

import re
import uuid
from typing import Any

from cluster.errors import InvalidRequest

WIDTH = 20
MAX_UINT = 2**64 - 1
UUID_PREFIX = "uuid:"
_HYPHENATED = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# The spellings Qdrant's server parses (simple, hyphenated, braced, URN); Python's UUID() alone takes more.
_UUID_FORMS = re.compile(rf"(?:[0-9a-fA-F]{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED})")
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DIGITS = re.compile(r"[0-9]{20}")


def id_problem(value: Any) -> str | None:
    """Why `value` is not a Qdrant point id, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"point id {value!r} is neither an unsigned integer nor a UUID"
    if isinstance(value, int):
        return None if 0 <= value <= MAX_UINT else f"point id {value} is not an unsigned 64-bit integer"
    return None if _UUID_FORMS.fullmatch(value) else f"point id {value[:60]!r} is not a valid UUID"


def to_prism(value: Any, field: str = "id") -> str:
    """The prism id of a Qdrant id; InvalidRequest (a 4xx) for anything else."""
    problem = id_problem(value)
    if problem:
        raise InvalidRequest(problem, field=field)
    if isinstance(value, int):
        return f"{value:0{WIDTH}d}"
    return UUID_PREFIX + str(uuid.UUID(value))


def from_prism(stored: str) -> int | str:
    """The Qdrant id of a stored prism id (an id of neither form comes back as the string it is)."""
    if _DIGITS.fullmatch(stored):
        n = int(stored)
        return n if n <= MAX_UINT else stored
    if stored.startswith(UUID_PREFIX) and _CANONICAL.fullmatch(stored[len(UUID_PREFIX):]):
        return stored[len(UUID_PREFIX):]
    return stored

