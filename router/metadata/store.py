"""The metadata store: one Elasticsearch index per collection, through the official client.

Payload selectors are served from the shards (Milvus keeps the full payload beside each vector); Elasticsearch
keeps the full payload too, indexed by the collection's mapping, and decides the filters shards cannot.
A write with wait=true (the default) waits for a refresh (`refresh="wait_for"`): once acknowledged, it is
filterable; with wait=false it becomes filterable at the next refresh (1 s by default).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cluster.collection_spec import CollectionConfig
from cluster.config import ClusterConfig
from cluster.errors import (
    BackendError, CollectionExists, FilterError, IndexRefused, InvalidRequest, MetadataUnavailable,
)

INDEX_PREFIX = "prism-"
_ES_TYPES = {"keyword": "keyword", "float": "double", "integer": "long", "date": "date", "text": "text",
             "boolean": "boolean"}
PAGE = 10_000


def index_name(collection: str) -> str:
    return INDEX_PREFIX + collection.lower()


def index_mapping(cfg: CollectionConfig) -> dict[str, Any]:
    """The mapping of a collection's index. Unmapped payload fields stay in _source (returned, never indexed):
    only mapped fields are filterable."""
    return {"dynamic": False, "properties": {f: {"type": _ES_TYPES[t]} for f, t in cfg.metadata.items()}}


class MetadataStore:
    """Index, delete, count and filter point payloads in Elasticsearch (or an ES-API server such as noida-db)."""

    def __init__(self, url: str, *, api_key: str | None = None, username: str | None = None,
                 password: str | None = None, timeout_s: float = 30.0):
        from elasticsearch import Elasticsearch

        auth: dict[str, Any] = {}
        if api_key:
            auth["api_key"] = api_key
        elif username:
            auth["basic_auth"] = (username, password or "")
        self.url = url
        self.es = Elasticsearch(url, request_timeout=timeout_s, **auth)

    def _call(self, what: str, fn, *args, **kwargs):
        from elasticsearch import ApiError, BadRequestError, ConnectionError as Unreachable

        try:
            return fn(*args, **kwargs)
        except Unreachable as exc:  # refused, reset or timed out (ConnectionTimeout is one): Elasticsearch is down
            raise MetadataUnavailable(f"Elasticsearch at {self.url} is unreachable ({what}): {exc}; queries whose "
                                      "filters or lexical spaces need it, counts and writes are refused until it "
                                      "answers (vector queries with filters Milvus runs go on)") from exc
        except ApiError as exc:
            if exc.meta.status == 503:  # up, but no shard of the index can answer
                raise MetadataUnavailable(f"Elasticsearch at {self.url} cannot serve {what}: {exc}") from exc
            if isinstance(exc, BadRequestError) and "query" in kwargs:  # the filter's fault: a 4xx
                raise FilterError(f"Elasticsearch refused this filter: {exc}", field="filter") from exc
            raise BackendError(f"Elasticsearch {what} failed at {self.url}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - Elasticsearch errors become typed prism errors here
            raise BackendError(f"Elasticsearch {what} failed at {self.url}: {exc}") from exc

    def ping(self) -> bool:
        try:
            return bool(self.es.info())
        except Exception:  # noqa: BLE001
            return False

    def ensure_index(self, cfg: CollectionConfig) -> None:
        """The index of a collection prism knows (its catalog): made if it is missing, used as it is if not."""
        if not self._call("exists", self.es.indices.exists, index=index_name(cfg.name)):
            self.create_index(cfg)

    def create_index(self, cfg: CollectionConfig) -> None:
        """A new collection's index. One that exists already is refused (409), never adopted: its documents are
        someone else's (another prism on this cluster, a name differing only in case, a leftover)."""
        name = index_name(cfg.name)
        if self._call("exists", self.es.indices.exists, index=name):
            raise CollectionExists(f"Elasticsearch index {name!r} exists already and prism never adopts an index it "
                                   f"did not make for this collection: delete it, or choose another name",
                                   field="name")
        self._call("create index", self.es.indices.create, index=name, mappings=index_mapping(cfg))

    def put_mapping(self, collection: str, fields: dict[str, str]) -> None:
        """Map fields added to the collection's metadata mapping (dynamic mapping: before any document has them)."""
        self._call("put mapping", self.es.indices.put_mapping, index=index_name(collection),
                   properties={f: {"type": _ES_TYPES[t]} for f, t in fields.items()})

    def drop_index(self, collection: str) -> None:
        name = index_name(collection)
        if self._call("exists", self.es.indices.exists, index=name):
            self._call("delete index", self.es.indices.delete, index=name)

    def upsert(self, collection: str, points: Sequence[tuple[str, dict[str, Any]]], wait: bool = True) -> None:
        """Index the payloads; `wait`: return once filters see them (refresh=wait_for), else at the next refresh."""
        from elasticsearch import helpers

        if not points:
            return
        actions = [{"_op_type": "index", "_index": index_name(collection), "_id": pid, "_source": payload}
                   for pid, payload in points]
        ok, errors = self._call("bulk index", helpers.bulk, self.es, actions,
                                refresh="wait_for" if wait else False, raise_on_error=False)
        if errors:
            refused = {str(next(iter(e.values())).get("_id")) for e in errors}
            raise IndexRefused(f"Elasticsearch refused {len(errors)} of {len(points)} documents: "
                               f"{str(errors[:2])[:300]}", accepted=[p for p, _ in points if p not in refused])

    def set_field(self, collection: str, field: str, values: dict[str, Any], wait: bool = True) -> None:
        """Set one field of existing documents (a partial update: the rest of each is kept); ids without a document
        are skipped, any other refusal raised."""
        from elasticsearch import helpers

        actions = [{"_op_type": "update", "_index": index_name(collection), "_id": pid, "doc": {field: v}}
                   for pid, v in values.items()]
        if not actions:
            return
        _, errors = self._call("bulk update", helpers.bulk, self.es, actions,
                               refresh="wait_for" if wait else False, raise_on_error=False)
        errors = [e for e in errors if next(iter(e.values())).get("status") != 404]  # no document: nothing to set
        if errors:
            raise BackendError(f"Elasticsearch refused {len(errors)} of {len(actions)} updates of {field!r}: "
                               f"{str(errors[:2])[:300]}")

    def delete(self, collection: str, ids: Iterable[str], wait: bool = True) -> None:
        from elasticsearch import helpers

        actions = [{"_op_type": "delete", "_index": index_name(collection), "_id": i} for i in ids]
        if actions:
            self._call("bulk delete", helpers.bulk, self.es, actions, refresh="wait_for" if wait else False,
                       raise_on_error=False)

    def count(self, collection: str, query: dict[str, Any]) -> int:
        return int(self._call("count", self.es.count, index=index_name(collection), query=query)["count"])

    def ids(self, collection: str, query: dict[str, Any], limit: int = PAGE) -> list[str]:
        res = self._call("search", self.es.search, index=index_name(collection), query=query, size=limit,
                         source=False, track_total_hits=False)
        return [h["_id"] for h in res["hits"]["hits"]]

    def lexical(self, collection: str, fields: Sequence[tuple[str, float]], text: str, filters: dict[str, Any] | None,
                limit: int, with_source: bool) -> list[tuple[str, float, dict[str, Any] | None]]:
        """BM25 top `limit` over `fields` (each with its boost; scores add up, as `most_fields`), with the filter in
        filter context (it restricts, it does not score): [(id, score, payload or None)]."""
        query: dict[str, Any] = {"bool": {
            "should": [{"match": {f: {"query": text, "boost": b}}} for f, b in fields], "minimum_should_match": 1,
            **({"filter": [filters]} if filters else {})}}
        res = self._call("search", self.es.search, index=index_name(collection), query=query, size=limit,
                         source=with_source, track_total_hits=False)
        return [(h["_id"], float(h["_score"]), h.get("_source") if with_source else None)
                for h in res["hits"]["hits"]]

    def sources(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored document (`_source`) of each of `ids` that has one, by a multi-get: real time (a document
        indexed without waiting for a refresh is seen, where a search would miss it until the next refresh)."""
        if not ids:
            return {}
        res = self._call("multi-get", self.es.mget, index=index_name(collection), ids=list(ids))
        return {d["_id"]: d.get("_source") or {} for d in res["docs"] if d.get("found")}

    def confirm(self, collection: str, query: dict[str, Any], ids: Sequence[str]) -> set[str]:
        """The subset of `ids` that match `query`."""
        if not ids:
            return set()
        q = {"bool": {"filter": [query, {"ids": {"values": list(ids)}}]}}
        return set(self.ids(collection, q, limit=len(ids)))


def metadata_store(config: ClusterConfig) -> MetadataStore | None:
    """The configured metadata store, or None when Elasticsearch is off (filters then push down only)."""
    es = config.elasticsearch
    if es.mode == "off":
        return None
    if not es.url:
        raise InvalidRequest("elasticsearch: no url (the bundled server is started by `prism up`)",
                             field="elasticsearch.url")
    store = MetadataStore(es.url, api_key=es.api_key, username=es.username, password=es.password)
    if not store.ping():
        raise BackendError(f"Elasticsearch at {es.url!r} does not answer")
    return store
