"""The prism error tree. Milvus, Elasticsearch and Ray errors are translated into these at the boundary.

    PrismError                      base; carries an HTTP status for the ingress
    ├── InvalidRequest              422: bad input, names the field
    │   ├── FilterError             a malformed or untranslatable filter clause
    │   ├── ImageError              an image that cannot be read, fetched or decoded
    │   ├── ConfigError             a configuration value that cannot work (quorum, shard layout, ...)
    │   └── PayloadTooLarge         413
    │       └── ImageBudgetExceeded a request's images hold more pixels than images.max_request_pixels
    ├── CollectionNotFound          404
    ├── SpaceNotFound               404: unknown named vector space
    ├── CollectionExists            409
    ├── ShardUnavailable            503: a shard (all of its replicas) did not answer
    ├── ModelUnavailable            503: an encoder's weights are missing
    ├── MetadataUnavailable         503: a filter needs Elasticsearch and none is configured
    └── BackendError                502: Milvus / Elasticsearch failed on a write or an admin call
"""
from __future__ import annotations

MAX_MESSAGE = 500


def truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut to `limit` characters, marked with '...' where it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int = 200) -> str:
    """A short, one-line account of an exception for answers and logs (prism errors by their message)."""
    text = exc.message if isinstance(exc, PrismError) else f"{type(exc).__name__}: {exc}"
    return truncate(text, limit)


class PrismError(Exception):
    """Base of all prism errors."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(truncate(message))
        self.message = truncate(message)
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


class ImageBudgetExceeded(PayloadTooLarge):
    """The whole request is refused (not only the image that crossed the budget)."""


class CollectionNotFound(PrismError):
    status = 404
    code = "collection_not_found"


class SpaceNotFound(PrismError):
    status = 404
    code = "space_not_found"


class PointNotFound(PrismError):
    status = 404
    code = "point_not_found"


class CollectionExists(PrismError):
    status = 409
    code = "collection_exists"


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


class IndexRefused(BackendError):
    """Elasticsearch refused some documents of a bulk write; `accepted` are the ids it indexed all the same."""

    def __init__(self, message: str, *, accepted: list[str] | None = None, field: str | None = None):
        super().__init__(message, field=field)
        self.accepted = accepted or []
