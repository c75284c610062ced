"""One class over pymilvus' MilvusClient for both milvus-lite (a directory per shard replica) and a server."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from cluster.config import IndexConfig, SpaceConfig
from cluster.errors import BackendError, InvalidRequest
from shards.api import MAX_ID_LENGTH, ScoredId
from shards.expr import ids_in

log = logging.getLogger(__name__)

ID_FIELD = "id"
VECTOR_FIELD = "vec"
PAYLOAD_FIELD = "payload"
META_FIELD = "meta"  # the normalised filterable projection of the payload (router.filters.normalise_meta)
_METRICS = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
# Build defaults chosen for recall on collections of 10^4..10^6 points.
DEFAULT_BUILD_PARAMS: dict[str, dict[str, Any]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128},
    "IVF_PQ": {"nlist": 128, "m": 8, "nbits": 8},
    "GPU_CAGRA": {"intermediate_graph_degree": 64, "graph_degree": 32},
    "GPU_IVF_PQ": {"nlist": 128, "m": 8, "nbits": 8},
    "FLAT": {},
}
_QUERY_PAGE = 1000
# Milvus' Bounded reads may lag writes by up to common.gracefulTime (5 s by default). Within this window after
# this replica's own last write, reads use Strong (which waits for the next time tick, ~200 ms on a 2.3
# standalone); after it, Bounded is exact for everything written through prism and costs nothing extra.
STRONG_WINDOW_S = 6.0


class BackendSpec(BaseModel):
    """How a shard replica reaches Milvus. Picklable, so it travels to Ray actors."""

    kind: Literal["lite", "server"]
    uri: str
    token: str | None = None
    gpu: bool = False


def search_params(index: IndexConfig, limit: int, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Per-query search parameters with defaults that keep recall high at the requested limit."""
    params: dict[str, Any] = {}
    if index.type == "HNSW":
        params["ef"] = max(64, limit)
    elif index.type in ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "GPU_IVF_PQ"):
        params["nprobe"] = 16
    elif index.type == "GPU_CAGRA":
        params["itopk_size"] = max(64, limit)
    if overrides:
        params.update(overrides)
    if "ef" in params:
        params["ef"] = max(int(params["ef"]), limit)  # Milvus refuses ef < limit
    return params


def build_params(index: IndexConfig) -> dict[str, Any]:
    return {**DEFAULT_BUILD_PARAMS.get(index.type, {}), **index.params}


class MilvusBackend:
    """Collections holding (id, vec, payload JSON) rows; reads see this replica's own writes (see STRONG_WINDOW_S)."""

    def __init__(self, spec: BackendSpec, clock: Callable[[], float] = time.monotonic):
        from pymilvus import MilvusClient

        self.spec = spec
        self.clock = clock
        self._opened = clock()
        self._last_write: dict[str, float] = {}
        try:
            self.client = MilvusClient(uri=spec.uri, token=spec.token or "")
        except Exception as exc:  # noqa: BLE001 - translated at the boundary
            raise BackendError(f"cannot open Milvus at {spec.uri!r}: {exc}") from exc

    def close(self) -> None:
        """Close the client; for milvus-lite also stop its server process, which holds the .db directory."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
        if self.spec.kind == "lite":
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.spec.uri)

    # -- collections -------------------------------------------------------------------------------------------
    def has_collection(self, name: str) -> bool:
        return bool(self.client.has_collection(name))

    def ensure_collection(self, name: str, space: SpaceConfig) -> None:
        """Create the collection with its index (params really passed) unless it exists."""
        from pymilvus import DataType, MilvusClient

        if self.has_collection(name):
            self.client.load_collection(name)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH * 4)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=space.dim)
        schema.add_field(PAYLOAD_FIELD, DataType.JSON)
        schema.add_field(META_FIELD, DataType.JSON)
        index_params = self.client.prepare_index_params()
        params = build_params(space.index)
        # milvus-lite drops flat build params silently; it reads them only when nested under "params".
        wrapped = {"params": params} if (self.spec.kind == "lite" and params) else params
        index_params.add_index(
            field_name=VECTOR_FIELD, index_type=space.index.type, metric_type=_METRICS[space.metric], params=wrapped
        )
        try:
            self.client.create_collection(name, schema=schema, index_params=index_params)
        except Exception as exc:  # noqa: BLE001
            raise InvalidRequest(
                f"Milvus refused index {space.index.type!r} with params {params!r}: {exc}", field="index"
            ) from exc

    def describe_index(self, name: str) -> dict[str, Any]:
        return dict(self.client.describe_index(name, VECTOR_FIELD))

    def drop_collection(self, name: str) -> None:
        if self.has_collection(name):
            self.client.drop_collection(name)

    def consistency(self, name: str) -> str:
        """Strong while this replica's own recent writes may not be visible to a Bounded read yet."""
        if self.spec.kind == "lite":
            return "Strong"
        last = max(self._last_write.get(name, 0.0), self._opened)
        return "Strong" if self.clock() - last < STRONG_WINDOW_S else "Bounded"

    # -- writes ------------------------------------------------------------------------------------------------
    def upsert(self, name: str, rows: Sequence[dict[str, Any]]) -> int:
        if not rows:
            return 0
        self._last_write[name] = self.clock()
        res = self.client.upsert(name, list(rows))
        self._last_write[name] = self.clock()
        return int(res.get("upsert_count", len(rows))) if isinstance(res, dict) else len(rows)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self._last_write[name] = self.clock()
            self.client.delete(name, filter=ids_in(ids))
            self._last_write[name] = self.clock()

    # -- reads -------------------------------------------------------------------------------------------------
    def search(
        self,
        name: str,
        space: SpaceConfig,
        vectors: Sequence[Sequence[float]],
        limit: int,
        expr: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[list[ScoredId]]:
        """Top-`limit` per query vector, as ScoredIds with higher-is-better scores."""
        res = self.client.search(
            name,
            data=[list(map(float, v)) for v in vectors],
            limit=limit,
            filter=expr or "",
            output_fields=[ID_FIELD],
            search_params={"params": search_params(space.index, limit, params)},
            consistency_level=self.consistency(name),
        )
        sign = -1.0 if space.metric == "l2" else 1.0
        return [[ScoredId(str(h["id"]), sign * float(h["distance"])) for h in hits] for hits in res]

    def get(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        fields = [ID_FIELD, PAYLOAD_FIELD] + ([VECTOR_FIELD] if with_vectors else [])
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _QUERY_PAGE):
            chunk = list(ids[start : start + _QUERY_PAGE])
            rows = self.client.query(name, filter=ids_in(chunk), output_fields=fields,
                                     consistency_level=self.consistency(name))
            for row in rows:
                entry: dict[str, Any] = {"payload": row.get(PAYLOAD_FIELD) or {}}
                if with_vectors:
                    entry["vector"] = [float(x) for x in row[VECTOR_FIELD]]
                out[str(row[ID_FIELD])] = entry
        return out

    def ids(self, name: str, batch: int = _QUERY_PAGE) -> list[str]:
        """Every id in the collection (query iterator: no offset/limit window)."""
        it = self.client.query_iterator(name, batch_size=batch, filter='id != ""', output_fields=[ID_FIELD],
                                        consistency_level=self.consistency(name))
        out: list[str] = []
        try:
            while True:
                page = it.next()
                if not page:
                    return out
                out.extend(str(r[ID_FIELD]) for r in page)
        finally:
            it.close()

    def rows(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Full stored rows (vector, payload, meta) of `ids`: what a copy to another shard needs."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _QUERY_PAGE):
            chunk = list(ids[start : start + _QUERY_PAGE])
            for row in self.client.query(name, filter=ids_in(chunk), consistency_level=self.consistency(name),
                                         output_fields=[ID_FIELD, VECTOR_FIELD, PAYLOAD_FIELD, META_FIELD]):
                out[str(row[ID_FIELD])] = {"vector": [float(x) for x in row[VECTOR_FIELD]],
                                           "payload": row.get(PAYLOAD_FIELD) or {}, "meta": row.get(META_FIELD) or {}}
        return out

    def flush(self, name: str) -> None:
        """Seal growing segments so the server indexes them (milvus-lite persists on its own)."""
        if self.spec.kind == "server":
            self.client.flush(name)

    def pending_index_rows(self, name: str) -> int:
        """Rows not yet covered by the index (0 when fully built; always 0 on milvus-lite, which reports none)."""
        desc = self.describe_index(name)
        total, indexed = int(desc.get("total_rows", 0)), int(desc.get("indexed_rows", 0))
        return max(int(desc.get("pending_index_rows", 0)), total - indexed)

    def count(self, name: str) -> int:
        rows = self.client.query(name, filter="", output_fields=["count(*)"],
                                 consistency_level=self.consistency(name))
        return int(rows[0]["count(*)"]) if rows else 0
