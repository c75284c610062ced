"""The prism error tree. Milvus, Elasticsearch and Ray errors are translated into these at the boundary.

    PrismError                      base; carries an HTTP status for the ingress
    ├── InvalidRequest              422: bad input, names the field
    │   ├── FilterError             a malformed or untranslatable filter clause
    │   ├── ImageError              an image that cannot be read, fetched or decoded
    │   ├── ConfigError             a configuration value that cannot work (quorum, shard layout, ...)
    │   ├── PayloadTooLarge         413
    │   │   └── ImageBudgetExceeded a request's images hold more pixels than images.max_request_pixels
    │   └── UnsupportedMediaType    415: a JSON body not labelled application/json
    ├── Forbidden                   403: the key's scope does not hold a collection the request reaches
    │                               (a restore's source, an alias's target): the path alone does not name it
    ├── CollectionNotFound          404
    ├── SpaceNotFound               404: unknown named vector space
    ├── SnapshotNotFound            404: no such (complete) snapshot of the collection
    ├── CollectionExists            409: the name is taken (by a collection or an alias)
    ├── CollectionAliased           409: a collection an alias points to cannot be deleted
    ├── ShardUnavailable            503: a shard (all of its replicas) did not answer
    ├── ModelUnavailable            503: an encoder's weights are missing
    ├── MetadataUnavailable         503: a filter needs Elasticsearch and none is configured
    └── BackendError                502: Milvus / Elasticsearch failed on a write or an admin call
        ├── IndexRefused            Elasticsearch refused some documents of a bulk write
        └── WriteRefused            a reachable Milvus refused a write (the data, not the server's state)

Messages never carry the credentials of a URI (`https://user:secret@es:9200` reads `https://***@es:9200`): backend
errors quote their endpoint, and an operator may have put a password in it.
"""
from __future__ import annotations

import re

MAX_MESSAGE = 500
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@'\"]+@")


def redact(text: str) -> str:
    """`text` with the user-info part of every URI in it (`user:password@`) replaced by `***@`."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


def truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut to `limit` characters, marked with '...' where it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int = 200) -> str:
    """A short, one-line account of an exception for answers and logs (prism errors by their message)."""
    text = exc.message if isinstance(exc, PrismError) else f"{type(exc).__name__}: {exc}"
    return truncate(redact(text), limit)


class PrismError(Exception):
    """Base of all prism errors."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None):
        message = truncate(redact(message))
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidRequest(PrismError):
    status = 422
    code = "invalid_request"


class FilterError(InvalidRequest):
    code = "invalid_filter"


class ImageError(InvalidRequest):
    code = "invalid_image"


class ConfigError(InvalidRequest):
    code = "invalid_config"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class ImageBudgetExceeded(PayloadTooLarge):
    """The whole request is refused (not only the image that crossed the budget)."""


class Forbidden(PrismError):
    status = 403
    code = "forbidden"


class CollectionNotFound(PrismError):
    status = 404
    code = "collection_not_found"


class SpaceNotFound(PrismError):
    status = 404
    code = "space_not_found"


class PointNotFound(PrismError):
    status = 404
    code = "point_not_found"


class SnapshotNotFound(PrismError):
    status = 404
    code = "snapshot_not_found"


class CollectionExists(PrismError):
    status = 409
    code = "collection_exists"


class CollectionAliased(PrismError):
    status = 409
    code = "collection_aliased"


class ShardUnavailable(PrismError):
    status = 503
    code = "shard_unavailable"

    def __init__(self, message: str, *, shards: list[int] | None = None, cause: str = "unavailable"):
        super().__init__(message)
        self.shards = shards or []
        self.cause = cause  # timeout | error | unavailable: what a query's coverage reports

    def to_dict(self) -> dict:
        return {**super().to_dict(), "shards": self.shards}


class ModelUnavailable(PrismError):
    status = 503
    code = "model_unavailable"


class MetadataUnavailable(PrismError):
    status = 503
    code = "metadata_unavailable"


class BackendError(PrismError):
    status = 502
    code = "backend_error"


class WriteRefused(BackendError):
    """A reachable Milvus refused a write for what it holds (a value it cannot store), not because it is down: the
    same write would be refused again, so it is not retried or replayed (router.replication.replicas: it ends nowhere)."""

    code = "write_refused"


class IndexRefused(BackendError):
    """Elasticsearch refused some documents of a bulk write; `accepted` are the ids it indexed all the same."""

    def __init__(self, message: str, *, accepted: list[str] | None = None, field: str | None = None):
        super().__init__(message, field=field)
        self.accepted = accepted or []
