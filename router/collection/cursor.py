"""Scroll cursors: opaque to clients, an id to the server (where the next page starts). A cursor is client input:
what it decodes to is held to the id rule like any id."""
from __future__ import annotations

import base64
import json

from cluster.errors import InvalidRequest
from cluster.names import check_id


def encode_cursor(after: str) -> str:
    """An opaque scroll cursor: where the next page starts (after this id)."""
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["after"]
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest("cursor: not a cursor this API handed out (pass next_cursor back unchanged)",
                             field="cursor") from None
    if not isinstance(after, str):
        raise InvalidRequest("cursor: not a cursor this API handed out", field="cursor")
    return check_id(after, field="cursor") if after else after
