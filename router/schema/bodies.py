"""What an HTTP request must be before prism reads it: who it is addressed to (the Host allow-list), how its
body is labelled (JSON bodies must say `application/json`) and what the JSON may hold. Pure: bytes in, values
or InvalidRequest out.

- Host: a browser lets any web page send requests to 127.0.0.1, and DNS rebinding lets a page read the answers
  under its own host name. A server bound to loopback therefore answers only requests addressed to a loopback
  name; `allowed_hosts` (config) widens or narrows that (`*` = any; `*.example.com` = its subdomains).
- Content-Type: a page may POST `text/plain` across origins without asking the browser first; it may not send
  `application/json` that way. So a JSON body labelled otherwise is a 415, and a cross-site page cannot write.
- JSON: nesting is bounded before parsing, by a scan linear in the body's length (`json_too_deep`); the
  literals `NaN` and `Infinity` are refused (Python's parser takes them; nothing downstream can); so are lone
  surrogates (`"\\ud800"`), which no store can encode. A number beyond a double (`1e400`) parses as an infinity,
  which the request models (allow_inf_nan=False) and the filter and payload checks refuse.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from cluster.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

# A request body nesting deeper than this is refused before it is parsed.
MAX_JSON_DEPTH = 64
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays and objects of a JSON text nest deeper than `limit`, found without parsing it (brackets
    inside strings do not count). Linear in len(raw) whatever it holds, and in C: escaped backslashes and quotes
    go first (bytes.replace, left to right as the JSON lexer reads them), then a running parity of the quotes
    that are left tells which bytes lie inside strings, and the brackets outside are summed (numpy). An
    unterminated string hides the brackets after it: such a body is not JSON, and the parser says so."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    import numpy as np

    text = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    outside = np.bitwise_xor.accumulate((text == ord('"')).view(np.uint8)) == 0
    brackets = text[outside & ((text | 0x20) == ord("{")) | outside & ((text | 0x20) == ord("}"))]
    if len(brackets) <= limit:
        return False
    steps = np.where((brackets | 0x20) == ord("{"), 1, -1).astype(np.int32)
    return bool(np.cumsum(steps).max() > limit)


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"malformed JSON body: {name} is not a number JSON allows", field="body")


def parse_json(raw: bytes, what: str = "body") -> Any:
    """The JSON value of a request body (None for an empty one); InvalidRequest naming `what` otherwise."""
    if json_too_deep(raw):
        raise InvalidRequest(f"request {what} nests arrays/objects deeper than {MAX_JSON_DEPTH} levels", field=what)
    try:
        value = json.loads(raw or b"null", parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON {what}: {exc}", field=what) from None
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message.replace("body", what, 1), field=what) from None
    if _SURROGATE_ESCAPE.search(raw):
        try:  # only bodies that escape a surrogate at all pay for this walk
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(f"malformed JSON {what}: a lone surrogate ({exc.object[exc.start]!r}) is not text "
                                 "any store can keep; escape characters outside the BMP as surrogate pairs",
                                 field=what) from None
    return value


def check_json_content_type(content_type: str | None, body: bytes) -> None:
    """A non-empty body must be labelled `application/json` (or `application/<something>+json`)."""
    if not body:
        return
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(f"a JSON body must be sent as Content-Type: application/json, not "
                               f"{media or 'without a Content-Type'!r}", field="content-type")


async def read_json(request: Any, max_bytes: int) -> Any:
    """A request's JSON body (anything with `await body()` and `headers`: Starlette's Request): at most `max_bytes`
    (a 413), a JSON content type (a 415), then parse_json's rules. The edge also bounds the bytes as they arrive."""
    raw = await request.body()
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body of {len(raw)} bytes exceeds {max_bytes} bytes")
    check_json_content_type(request.headers.get("content-type"), raw)
    return parse_json(raw)

def allowed_hosts(bound: str, configured: Iterable[str] | None) -> tuple[str, ...] | None:
    """The host names requests may be addressed to: the configured list, else loopback names when bound to a
    loopback address, else None (any: a server bound to a public address is reached under names it cannot know;
    keys protect it, and a browser cannot send one across sites)."""
    from cluster.auth import is_loopback

    if configured is not None:
        return tuple(h.strip().lower() for h in configured)
    return LOOPBACK_HOSTS if is_loopback(bound) else None


def host_allowed(host_header: str | None, allowed: tuple[str, ...] | None) -> bool:
    """Whether a request with this Host header may be answered. No Host header (HTTP/1.0, probes): yes, no
    browser sends one without it."""
    if allowed is None or host_header is None or "*" in allowed:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    for pattern in allowed:
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
        if host == pattern:
            return True
    return False
