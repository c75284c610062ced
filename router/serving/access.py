"""Who may call what, and how often: the route policy, token-bucket rate limits and the guard the HTTP middleware
asks before any endpoint runs. Pure: no framework, clock injected.

Rate limits are kept in memory per ingress replica, per key (per client address when auth is off); a configured
rate is the whole cluster's, so each of `replicas` ingress replicas enforces rate / replicas (with autoscaling,
rate / its maximum: never more than the configured rate in all, less while fewer replicas run).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cluster.auth import KeyRing, KeySource, Principal, Role, is_loopback
from cluster.config import ClusterConfig
from cluster.names import name_problem
from router.serving.qdrant.policy import qdrant_access

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_POINT_READS = frozenset({"get", "scroll", "count"})
_POINT_WRITES = frozenset({"delete", "vectors"})
_QUERIES = ([], ["batch"], ["image"])
MAX_TRACKED = 100_000  # buckets kept; the least recently used go first (a new bucket starts full, so that is safe)


def route_access(method: str, path: str, metrics_open: bool = True) -> tuple[Role | None, str | None]:
    """(the role a request needs, or None when the route is open; the collection it names, if any).

    Deny by default: every route prism serves is listed here with its role; anything else (an unknown path, a
    method a route does not take) needs admin, then answers 404/405. The collection is the raw path segment:
    Guard.check holds it to the name rule before anything else."""
    if path in OPEN_PATHS or (path == "/metrics" and metrics_open):
        return None, None
    if path == "/metrics":
        return "read", None
    parts = path.split("/")[1:]
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]  # one trailing slash (Starlette redirects it): the same route
    if parts[0] == "qdrant":
        return qdrant_access(method, parts[1:])  # type: ignore[return-value]
    if parts[:2] == ["v1", "aliases"]:  # listing reads; creating, switching, deleting one is admin's
        return ("read" if parts == ["v1", "aliases"] and method in ("GET", "HEAD") else "admin"), None
    if parts[:2] != ["v1", "collections"]:
        return "admin", None
    if len(parts) == 2:
        return ("read" if method in ("GET", "HEAD") else "admin"), None
    name, rest = parts[2], parts[3:]
    read = method in ("GET", "HEAD")
    if not rest:
        return ("read" if read else "admin"), name
    if rest in (["reshard"], ["rebalance"]) and method == "POST" or rest == ["verify"] and read:
        return "admin", name
    if rest[0] == "points":
        if rest == ["points"]:
            return ("write" if method == "POST" else "admin"), name
        if len(rest) == 2:
            if read:
                return "read", name  # GET .../points/{id}
            if method == "POST" and rest[1] in _POINT_READS:
                return "read", name
            if method == "POST" and rest[1] in _POINT_WRITES:
                return "write", name
        return "admin", name
    if rest[0] == "query" and rest[1:] in _QUERIES and method == "POST":
        return "read", name
    return "admin", name


class TokenBuckets:
    """One token bucket per key: `rate` tokens a second, holding at most `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = MAX_TRACKED):
        self.rate, self.burst, self.clock, self.max_tracked = rate, max(1.0, burst), clock, max_tracked
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def take(self, key: str, cost: float = 1.0) -> float:
        """0.0 when `cost` tokens were taken; else the seconds until one will be there (nothing is taken).

        A request costing more than one token (a batch: one per query) is admitted while one token is there and
        leaves the bucket in debt: the key's next requests wait until the debt is paid, so a batch of n costs what
        n single requests cost, even above the burst."""
        now = self.clock()
        tokens, when = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= cost
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
    field: str | None = None

    def body(self) -> dict[str, str]:
        return {"error": self.error, "message": self.message, **({"field": self.field} if self.field else {})}

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.status == 401:
            return [(b"www-authenticate", b'Bearer realm="prism"')]
        if self.retry_after_s is not None:
            return [(b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode())]
        return []


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer <key>`, `X-API-Key: <key>` or `api-key: <key>` (Qdrant's header)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name in (b"x-api-key", b"api-key") and value.strip():
            return value.decode("latin-1").strip()
    return None


class Guard:
    """Authentication, authorization and rate limits for one ingress replica.

    Whether keys are required is decided at start (`required`; default: whether there were keys) and only ever
    turns on: once keys were required (or any key was seen), an empty key set refuses every request instead of
    opening the API. A collection named in the path is held to the name rule before any key is looked at."""

    def __init__(self, keys: KeySource, *, read_per_s: float | None = None, write_per_s: float | None = None,
                 burst_s: float = 1.0, replicas: int = 1, metrics_open: bool = True, required: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.keys, self.metrics_open = keys, metrics_open
        self.required = bool(required) or len(keys.refresh()) > 0
        share = max(1, replicas)
        self.buckets = {
            cls: TokenBuckets(rate / share, rate / share * burst_s, clock)
            for cls, rate in (("read", read_per_s), ("write", write_per_s)) if rate
        }

    def _ring(self) -> KeyRing:
        ring = self.keys.refresh()
        if len(ring):
            self.required = True
        return ring

    @property
    def auth_on(self) -> bool:
        self._ring()
        return self.required

    def identify(self, headers: list[tuple[bytes, bytes]]) -> Principal | None:
        """The key's principal on an open route (which needs none): None without a valid key."""
        key = presented_key(headers)
        return self._ring().verify(key) if key else None

    def check(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
              client: str | None, cost: int = 1) -> Principal | Refusal | None:
        """The caller (None when auth is off or the route is open), or why the request is refused. `cost`: the
        tokens it takes from its rate bucket (a batch: one per query)."""
        role, collection = route_access(method, path, self.metrics_open)
        if role is None:
            return None
        if collection is not None:
            problem = name_problem(collection)
            if problem:
                return Refusal(422, "invalid_request", problem, field="name")
        ring = self._ring()
        principal: Principal | None = None
        if self.required:
            key = presented_key(headers)
            if key is None:
                return Refusal(401, "unauthenticated", "this endpoint needs an API key: send "
                               "`Authorization: Bearer <key>`, `X-API-Key: <key>` or `api-key: <key>`"
                               + ("" if len(ring) else " (none is configured: create one with `prism keys create`)"))
            principal = ring.verify(key)
            if principal is None:
                why = (" (the keys file cannot be read: the ingress log says why)" if self.keys.problem else "")
                return Refusal(401, "unauthenticated", "the API key is not valid (unknown, revoked or mistyped)"
                               + why)
            if not principal.allows(role, collection):
                what = (f"collection {collection!r}" if collection and principal.collections is not None
                        and collection not in principal.collections else f"role {role!r}")
                return Refusal(403, "forbidden", f"key {principal.key_id} ({principal.role}) may not use this "
                               f"endpoint: it needs {what}")
        return self.charge(rate_key(principal, client), role, cost) or principal

    def charge(self, who: str, role: Role, cost: int = 1) -> Refusal | None:
        """Take `cost` tokens from `who`'s read or write bucket (None: taken, or no limit)."""
        kind = "read" if role == "read" else "write"
        bucket = self.buckets.get(kind)
        if bucket is None or cost <= 0:
            return None
        wait = bucket.take(who, cost)
        if wait > 0:
            return Refusal(429, "rate_limited", f"{kind} rate limit reached; retry in {wait:.2f}s",
                           retry_after_s=wait)
        return None


def rate_key(principal: Principal | None, client: str | None) -> str:
    """Whose bucket a request draws on: its key's, else (auth off) its client address's."""
    return principal.key_id if principal else f"addr:{client}"


def build_guard(cfg: ClusterConfig) -> Guard:
    """API keys (config, PRISM_API_KEYS, the keys file) and rate limits of one ingress replica.

    Keys are required when there are some at start, and also without any when the API is bound to a non-loopback
    address and `insecure` is not set (a Serve config on 0.0.0.0 with an empty PRISM_API_KEYS: `prism up` refuses
    that before starting; here the API answers 401 until a key exists). Rates are the cluster's: each replica
    enforces its share, rate / the most ingress replicas there may be. A keys file that exists, even one holding
    no key (every key revoked), makes keys required on loopback too: a restart must not open the API."""
    rl = cfg.auth.rate_limits
    replicas = max(cfg.ingress_replicas, cfg.ingress_max_replicas or 0)
    keys = KeySource(cfg.auth.keys, cfg.keys_file)
    return Guard(keys, read_per_s=rl.read_per_s, write_per_s=rl.write_per_s,
                 burst_s=rl.burst_s, replicas=replicas, metrics_open=cfg.auth.metrics == "open",
                 required=not cfg.insecure and (not is_loopback(cfg.host) or keys.file_exists))
