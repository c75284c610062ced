"""Who may call what, and how often: the route policy, token-bucket rate limits and the guard the HTTP middleware
asks before any endpoint runs. Pure: no framework, clock injected.

Rate limits are kept in memory per ingress replica, per key (per client address when auth is off); a configured
rate is the whole cluster's, so each of `replicas` ingress replicas enforces rate / replicas.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cluster.auth import KeySource, Principal, Role
from cluster.config import ClusterConfig

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_POINT_READS = frozenset({"get", "scroll", "count"})
_POINT_WRITES = frozenset({"delete", "vectors"})
MAX_TRACKED = 100_000  # buckets kept; the least recently used go first (a new bucket starts full, so that is safe)


def route_access(method: str, path: str, metrics_open: bool = True) -> tuple[Role | None, str | None]:
    """(the role a request needs, or None when the route is open; the collection it touches, if any).

    Paths prism does not serve need a valid key as well (then 404): only the routes named here are open."""
    if path in OPEN_PATHS or (path == "/metrics" and metrics_open):
        return None, None
    parts = path.strip("/").split("/")
    if parts[:2] != ["v1", "collections"] or len(parts) < 3 or not parts[2]:
        return "read", None
    name, rest = parts[2], parts[3:]
    if not rest:
        return ("read" if method in ("GET", "HEAD") else "admin"), name
    if rest in (["reshard"], ["verify"]):
        return "admin", name
    if rest[0] == "points":
        if method == "GET" or (len(rest) == 2 and rest[1] in _POINT_READS):
            return "read", name
        if len(rest) == 1 or (len(rest) == 2 and rest[1] in _POINT_WRITES):
            return "write", name
        return "admin", name
    return "read", name


class TokenBuckets:
    """One token bucket per key: `rate` tokens a second, holding at most `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = MAX_TRACKED):
        self.rate, self.burst, self.clock, self.max_tracked = rate, max(1.0, burst), clock, max_tracked
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def take(self, key: str) -> float:
        """0.0 when a token was taken; else the seconds until one will be there (nothing is taken)."""
        now = self.clock()
        tokens, when = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)
        return wait


@dataclass(frozen=True)
class Refusal:
    """An answer the guard gives instead of the endpoint's."""

    status: int
    error: str
    message: str
    retry_after_s: float | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.status == 401:
            return [(b"www-authenticate", b'Bearer realm="prism"')]
        if self.retry_after_s is not None:
            return [(b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode())]
        return []


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class Guard:
    """Authentication, authorization and rate limits for one ingress replica."""

    def __init__(self, keys: KeySource, *, read_per_s: float | None = None, write_per_s: float | None = None,
                 burst_s: float = 1.0, replicas: int = 1, metrics_open: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.keys, self.metrics_open = keys, metrics_open
        share = max(1, replicas)
        self.buckets = {
            cls: TokenBuckets(rate / share, rate / share * burst_s, clock)
            for cls, rate in (("read", read_per_s), ("write", write_per_s)) if rate
        }

    @property
    def auth_on(self) -> bool:
        return len(self.keys.refresh()) > 0

    def check(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
              client: str | None) -> Principal | Refusal | None:
        """The caller (None when auth is off or the route is open), or why the request is refused."""
        role, collection = route_access(method, path, self.metrics_open)
        if role is None:
            return None
        ring = self.keys.refresh()
        principal: Principal | None = None
        if len(ring):
            key = presented_key(headers)
            if key is None:
                return Refusal(401, "unauthenticated", "this endpoint needs an API key: send "
                               "`Authorization: Bearer <key>` or `X-API-Key: <key>`")
            principal = ring.verify(key)
            if principal is None:
                return Refusal(401, "unauthenticated", "the API key is not valid (unknown, revoked or mistyped)")
            if not principal.allows(role, collection):
                what = (f"collection {collection!r}" if collection and principal.collections is not None
                        and collection not in principal.collections else f"role {role!r}")
                return Refusal(403, "forbidden", f"key {principal.key_id} ({principal.role}) may not use this "
                               f"endpoint: it needs {what}")
        bucket = self.buckets.get("read" if role == "read" else "write")
        if bucket is not None:
            wait = bucket.take(principal.key_id if principal else f"addr:{client}")
            if wait > 0:
                return Refusal(429, "rate_limited", f"{'read' if role == 'read' else 'write'} rate limit reached; "
                               f"retry in {wait:.2f}s", retry_after_s=wait)
        return principal


def build_guard(cfg: ClusterConfig, replicas: int = 1) -> Guard:
    """API keys (config, PRISM_API_KEYS, the keys file) and rate limits of one ingress replica."""
    rl = cfg.auth.rate_limits
    return Guard(KeySource(cfg.auth.keys, cfg.keys_file), read_per_s=rl.read_per_s, write_per_s=rl.write_per_s,
                 burst_s=rl.burst_s, replicas=replicas, metrics_open=cfg.auth.metrics == "open")
