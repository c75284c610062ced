"""A collection's placement: where each point lives and which shards a query visits, under one of three methods.

- hash: the ring (cluster.ring) over point ids, today's placement; every query visits every shard.
- vector: the shard of a point's nearest coarse centroid in the routing space (a point without a vector there goes
  by the ring); a prefetch in that space visits the shards of its nearest centroids until `probe` distinct ones.
  Untrained (no centroids yet) it places and routes as hash.
- key: the ring's owner of the point's key value; a filter that pins the key visits only the owners of its values.

A Placement is immutable and round-trips through JSON (to_json/from_json) exactly, centroids included."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field as dc_field
from typing import Any, Mapping

import numpy as np

from cluster.errors import ConfigError, InvalidRequest
from cluster.ring import HashRing
from router.routing.keys import KEY_TYPES, key_of, pinned_keys
from router.routing.kmeans import METRICS, prepare, scores
from router.routing.settings import METHODS, check_probe

FORMAT = 1  # the JSON layout's version: from_json refuses another, rather than misread stored centroids
Probe = int | str  # an int >= 1, or "all"


@dataclass(frozen=True, eq=False)
class Placement:
    shards: int
    method: str = "hash"
    space: str | None = None  # vector: the routing space
    metric: str = "cosine"  # vector: the routing space's metric
    field: str | None = None  # key: the payload field
    key_type: str = "keyword"  # key: the field's type in the metadata mapping
    centroids: np.ndarray | None = None  # vector, once trained: k x dim float32 (unit rows for cosine and ip)
    owners: np.ndarray | None = None  # vector, once trained: the shard of each centroid
    version: int = 0  # 0 untrained; each training adds one
    _ring: HashRing = dc_field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise ConfigError(f"placement: shards must be an integer >= 1, got {self.shards!r}")
        if self.method not in METHODS:
            raise ConfigError(f"placement: method must be one of {list(METHODS)}, got {self.method!r}")
        if self.method == "vector" and not (isinstance(self.space, str) and self.space):
            raise ConfigError("placement: vector routing needs a space")
        if self.method == "vector" and self.metric not in METRICS:
            raise ConfigError(f"placement: metric must be one of {list(METRICS)}, got {self.metric!r}")
        if self.method == "key" and not (isinstance(self.field, str) and self.field):
            raise ConfigError("placement: key routing needs a field")
        if self.method == "key" and self.key_type not in KEY_TYPES:
            raise ConfigError(f"placement: a routing key is a {' or '.join(KEY_TYPES)} field, not {self.key_type!r}")
        trained = self.centroids is not None
        if trained != (self.owners is not None) or (trained and self.method != "vector"):
            raise ConfigError("placement: centroids and owners come together, and only with vector routing")
        if self.centroids is not None:
            c = np.ascontiguousarray(self.centroids, dtype=np.float32)
            o = np.asarray(self.owners, dtype=np.int64)
            if c.ndim != 2 or len(c) == 0 or not np.isfinite(c).all():
                raise ConfigError(f"placement: centroids must be a non-empty finite k x dim array, got {c.shape}")
            if o.shape != (len(c),) or (o < 0).any() or (o >= self.shards).any():
                raise ConfigError(f"placement: owners must be {len(c)} shard numbers in 0..{self.shards - 1}")
            object.__setattr__(self, "centroids", c)
            object.__setattr__(self, "owners", o)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ConfigError(f"placement: version must be an integer >= 0, got {self.version!r}")
        object.__setattr__(self, "_ring", HashRing(range(self.shards)))  # the same ring as the coordinator's

    # -- building ----------------------------------------------------------------------------------------------
    @classmethod
    def from_setting(cls, routing: Mapping[str, Any] | None, shards: int, *, metric: str = "cosine",
                     key_type: str = "keyword") -> "Placement":
        """An untrained placement for a validated `routing` setting (router.routing.settings.check_routing)."""
        routing = routing or {"method": "hash"}
        method = routing.get("method", "hash")
        if method == "vector":
            return cls(shards, "vector", space=routing["space"], metric=metric)
        if method == "key":
            return cls(shards, "key", field=routing["field"], key_type=key_type)
        return cls(shards, method)

    def trained(self, centroids: np.ndarray, owners: np.ndarray) -> "Placement":
        """This placement with new centroids and their shards (kmeans.train, balance.assign), one version on."""
        if self.method != "vector":
            raise ConfigError(f"placement: only vector routing trains centroids, this one routes by {self.method}")
        c = prepare(centroids, self.metric)
        return Placement(self.shards, "vector", space=self.space, metric=self.metric, centroids=c, owners=owners,
                         version=self.version + 1)

    @property
    def ready(self) -> bool:
        """Whether points are placed by this method already (vector routing: once centroids are trained)."""
        return self.method != "vector" or self.centroids is not None

    # -- where a point lives -----------------------------------------------------------------------------------
    def shard_of(self, point_id: str, vectors: Mapping[str, Any] | None = None,
                 payload: Mapping[str, Any] | None = None) -> int:
        """The shard a point lives on. `vectors`: its vectors by space; `payload`: its payload (key routing needs
        the key field there: InvalidRequest naming it otherwise)."""
        if self.method == "key":
            return int(self._ring.get(key_of(payload, self.field, self.key_type)))
        if self.method == "vector" and self.centroids is not None:
            v = (vectors or {}).get(self.space)
            if v is not None:
                return int(self.nearest_shards(np.asarray(v, dtype=np.float32)[None, :])[0])
        return int(self._ring.get(str(point_id)))

    def nearest_shards(self, matrix: np.ndarray) -> np.ndarray:
        """The shard of each row's nearest centroid (rows: vectors in the routing space), for batches of writes."""
        x = self._rows(matrix)
        return self.owners[scores(x, self.centroids, self.metric).argmax(axis=1)]

    # -- which shards a query visits ---------------------------------------------------------------------------
    def routes(self, space: str) -> bool:
        """Whether a prefetch in `space` visits fewer than every shard (a trained vector placement's own space)."""
        return self.method == "vector" and self.centroids is not None and space == self.space

    def visit(self, vector: Any, probe: Probe) -> tuple[int, ...]:
        """The shards a prefetch (one vector in the routing space) visits, nearest first: the owners of its nearest
        centroids until `probe` distinct shards; every shard for probe "all", probe >= shards, or no routing."""
        return self.visit_many(np.asarray(vector, dtype=np.float32)[None, :], probe)[0]

    def visit_many(self, matrix: Any, probe: Probe) -> list[tuple[int, ...]]:
        """visit() for each row of `matrix`, scored against the centroids in one product."""
        probe = check_probe(probe)
        every = tuple(range(self.shards))
        if self.centroids is None or probe == "all" or probe >= self.shards:
            return [every] * len(np.asarray(matrix))
        x = self._rows(matrix)
        order = np.argsort(-scores(x, self.centroids, self.metric), axis=1, kind="stable")
        out = []
        for row in self.owners[order]:
            seen: list[int] = []
            for s in row:
                if int(s) not in seen:
                    seen.append(int(s))
                    if len(seen) == probe:
                        break
            out.append(tuple(seen))  # fewer than probe when fewer shards own centroids: all that hold any
        return out

    def pinned(self, dsl: Any) -> tuple[int, ...] | None:
        """Key routing: the shards (ascending) that can hold a match of the filter `dsl`, or None when it does not
        pin the key (or the collection does not route by key). () when it asks for two keys at once."""
        if self.method != "key" or dsl is None:
            return None
        keys = pinned_keys(dsl, self.field, self.key_type)
        return None if keys is None else tuple(sorted({int(self._ring.get(k)) for k in keys}))

    def _rows(self, matrix: Any) -> np.ndarray:
        x = prepare(matrix, self.metric)
        if x.shape[1] != self.centroids.shape[1]:
            raise InvalidRequest(f"a vector in space {self.space!r} has {self.centroids.shape[1]} dimensions, "
                                 f"got {x.shape[1]}", field=self.space)
        return x

    # -- JSON --------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "method": self.method, "shards": self.shards,
                               "version": self.version}
        if self.method == "vector":
            out.update(space=self.space, metric=self.metric, centroids=None, owners=None)
            if self.centroids is not None:
                # little-endian float32 bytes: exact, and a quarter of the size of decimal text
                out["centroids"] = {"dtype": "<f4", "shape": list(self.centroids.shape),
                                    "data": base64.b64encode(self.centroids.astype("<f4").tobytes()).decode()}
                out["owners"] = [int(s) for s in self.owners]
        elif self.method == "key":
            out.update(field=self.field, key_type=self.key_type)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Placement":
        """The placement to_dict() wrote; ConfigError on anything else (a stored placement is never guessed at)."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(f"placement: expected a JSON object of format {FORMAT}")
        known = {"format", "method", "shards", "version", "space", "metric", "centroids", "owners", "field",
                 "key_type"}
        if set(data) - known:
            raise ConfigError(f"placement: unknown keys {sorted(set(data) - known)}")
        c, owners = data.get("centroids"), data.get("owners")
        if c is not None:
            try:
                if c["dtype"] != "<f4" or set(c) != {"dtype", "shape", "data"}:
                    raise ValueError(c["dtype"])
                raw = np.frombuffer(base64.b64decode(c["data"], validate=True), dtype="<f4")
                c = raw.reshape([int(n) for n in c["shape"]]).astype(np.float32)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"placement: unreadable centroids ({type(exc).__name__}: {exc})") from None
        if owners is not None and (not isinstance(owners, list) or
                                   not all(isinstance(s, int) and not isinstance(s, bool) for s in owners)):
            raise ConfigError("placement: owners must be a list of shard numbers")
        return cls(data.get("shards"), data.get("method"), space=data.get("space"),
                   metric=data.get("metric", "cosine"), field=data.get("field"),
                   key_type=data.get("key_type", "keyword"), centroids=c,
                   owners=None if owners is None else np.asarray(owners, dtype=np.int64),
                   version=data.get("version", 0))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Placement":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"placement: not JSON ({exc})") from None
        return cls.from_dict(data)
