"""Safe literals for Milvus boolean expressions.

Neither milvus-lite 3.x nor the Milvus 2.3 server accepts expression templates (`{param}`), so values are
rendered here as literals with a strict quoting that both parsers read back to exactly the same string.
Nothing else in prism builds expression text from user values.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from cluster.errors import FilterError

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_STRING = 4096


def quote_string(value: str) -> str:
    """A double-quoted Milvus string literal; control characters other than \\n \\r \\t are refused."""
    if not isinstance(value, str):
        raise FilterError(f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_STRING:
        raise FilterError(f"string value longer than {MAX_STRING} characters")
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise FilterError(f"control character {ch!r} is not allowed in a filter value")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def literal(value: object) -> str:
    """A Milvus literal for a str, int, float or bool; anything else is refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"non-finite number {value!r} in a filter")
        return repr(value)
    if isinstance(value, str):
        return quote_string(value)
    raise FilterError(f"unsupported filter value {value!r}")


def list_literal(values: Iterable[object]) -> str:
    return "[" + ", ".join(literal(v) for v in values) + "]"


def ids_in(ids: Iterable[str]) -> str:
    return f"id in {list_literal(list(ids))}"
