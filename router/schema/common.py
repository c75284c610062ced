"""What every area of the HTTP API v1 shares: the strict base model, `with_payload` selection, the error answer."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A request model: unknown fields are a 422, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class PayloadExclude(Strict):
    exclude: list[str]


def returns(with_payload: Any, with_vectors: bool | list[str]) -> tuple[bool, list[str] | bool]:
    """(whether an answer carries payloads, the spaces whose vectors it carries: True for all)."""
    return with_payload is not False and not (isinstance(with_payload, list) and not with_payload), with_vectors or []


def select_payload(payload: dict[str, Any], selector: bool | list[str] | PayloadExclude) -> dict[str, Any]:
    """The part of a payload that `with_payload` asks for."""
    if selector is True:
        return dict(payload)
    if isinstance(selector, PayloadExclude):
        return {k: v for k, v in payload.items() if k not in set(selector.exclude)}
    return {k: payload[k] for k in selector if k in payload}


class Error(BaseModel):
    """Every error answer: a stable code, a message for people, the field at fault where one is."""

    error: str = Field(description="invalid_request, invalid_filter, unauthenticated, forbidden, rate_limited, "
                                   "collection_not_found, shard_unavailable, ...")
    message: str
    field: str | None = None
    shards: list[int] | None = None  # shard_unavailable: which shards did not answer
