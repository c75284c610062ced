"""Scroll, count and dynamic metadata mapping against brute force, on real Milvus (lite and server) and noida-db."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.errors import InvalidRequest
from router.collection.coordinator import Coordinator
from router.filters.dsl import parse_filter
from router.metadata.store import MetadataStore, index_name
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.api import PointRow
from shards.local import local_shards, replica_specs, stop_local_shards
from tests.oracle import evaluate

DIM = 8
_n = itertools.count()
COLORS = ("red", "green", "blue")
WORDS = ("waterproof", "boots", "trail", "jacket", "wool", "light")


def make_points(n: int, seed: int, prefix: str = "p") -> list[Point]:
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n):
        v = rng.standard_normal((2, DIM))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        vectors = {"a": v[0].tolist(), "b": v[1].tolist()}
        if i % 5 == 0:
            vectors.pop("b")  # some points live in one space only: a scroll lists them once all the same
        elif i % 7 == 0:
            vectors.pop("a")
        pts.append(Point(id=f"{prefix}{rng.integers(10**6):06d}-{i}", vectors=vectors, payload={
            "color": COLORS[int(rng.integers(3))], "n": i, "title": " ".join(rng.choice(WORDS, 2))}))
    return pts


def open_world(milvus, uri, es_uri, path):
    """A 3-shard collection over two spaces with declared metadata, its Elasticsearch index and its shards."""
    cfg = CollectionConfig(name=f"sc{next(_n)}", shards=3, metadata={"color": "keyword", "n": "integer",
                                                                       "title": "text"},
                           spaces={"a": {"dim": DIM, "index": {"type": "FLAT"}},
                                   "b": {"dim": DIM, "index": {"type": "FLAT"}}})
    store = MetadataStore(es_uri)
    store.ensure_index(cfg)
    return cfg, store, local_shards(cfg, replica_specs(cfg, milvus, path, uri))


def close_world(cfg, store, clients):
    stop_local_shards(clients, drop=True)
    store.drop_index(cfg.name)


@pytest.fixture
def world(milvus_backend, es_server, tmp_path):
    milvus, uri = milvus_backend
    made = open_world(milvus, uri, es_server.uri, tmp_path)
    yield made
    close_world(*made)


@pytest.fixture(scope="module", params=["lite", "server"])
def loaded(request, es_server, tmp_path_factory):
    """One collection per backend holding make_points(150, 1), shared by the read-only scroll/count checks."""
    from cluster.config import MilvusConfig

    if request.param == "lite":
        milvus, uri = MilvusConfig(mode="lite"), None
    else:
        uri = request.getfixturevalue("milvus_server").uri
        milvus = MilvusConfig(mode="server", uri=uri)
    cfg, store, clients = open_world(milvus, uri, es_server.uri, tmp_path_factory.mktemp("scroll"))
    pts = make_points(150, 1)
    asyncio.run(Coordinator.from_clients(cfg, clients, metadata=store).upsert(pts))
    yield cfg, store, clients, pts
    close_world(cfg, store, clients)


async def scroll_all(coord: Coordinator, dsl, limit: int) -> list[str]:
    out, after = [], ""
    while True:
        page = await coord.scan(after, limit, dsl)
        out += page
        if len(page) < limit:
            return out
        after = page[-1]


def test_export_pages_hold_every_point_whole_in_id_order(loaded):
    """ShardApi.export_page (a snapshot's copy) in keyset pages holds every point whole, once, in id order, on
    both backends: none short before the end, a point in one space only kept whole, vectors float32."""
    _, _, clients, pts = loaded
    want = {p.id: p for p in pts}
    got = {}
    for s, row in enumerate(clients):
        c = row[0]
        # On one shard, a second, small segment whose ids sort first: a query reduced per segment stops where
        # that segment's rows end (the server does; lite does not), and a page must go on past it.
        extra = [PointRow(id=f"p0-{k}", payload={"n": -1}, vectors={"a": [float(k)] * DIM}) for k in range(2 * (s == 0))]
        if extra:
            c.target.backend.flush(c.target.names["a"])  # the loaded points sealed (3 s of this test's 4 on a server)
            asyncio.run(c.upsert(extra))
        try:
            page = pages(c, 40)
        finally:
            if extra:
                asyncio.run(c.delete([p.id for p in extra]))
        assert [r.id for r in page] == sorted(r.id for r in page) and not got.keys() & {r.id for r in page}
        got.update({r.id: r for r in page})
    assert got.keys() == want.keys() | {"p0-0", "p0-1"}
    for pid, p in want.items():
        r = got[pid]
        assert r.payload == p.payload and r.vectors.keys() == p.vectors.keys()
        assert all(v.dtype == np.float32 and np.array_equal(v, np.asarray(p.vectors[s], np.float32))
                   for s, v in r.vectors.items())


def test_export_decodes_by_column_as_pymilvus_does_by_row(loaded):
    """shards.backend.page_rows (a copy's page decoded by column) takes its column path on this pymilvus and
    answers exactly what pymilvus' own per-row decoding of the same answer does: ids, vectors bit for bit,
    payloads and metas; fails if a pymilvus upgrade moves the columns (the copy would fall back to rows)."""
    from shards.backend import ID_FIELD, META_FIELD, PAYLOAD_FIELD, VECTOR_FIELD, page_rows

    _, _, clients, _ = loaded
    shard = clients[0][0].target
    rows = shard.backend.client.query(shard.names["a"], filter='id > ""', limit=1000,
                                      output_fields=[ID_FIELD, VECTOR_FIELD, PAYLOAD_FIELD, META_FIELD],
                                      consistency_level="Strong")
    assert {fd.field_name for fd in rows._lazy_field_data} >= {VECTOR_FIELD, PAYLOAD_FIELD, META_FIELD}
    got = page_rows(rows)
    want = [(str(r[ID_FIELD]), np.asarray(r[VECTOR_FIELD], np.float32), r[PAYLOAD_FIELD], r[META_FIELD]) for r in rows]
    assert len(got) == len(want) > 10 and all(m for *_, m in want)
    for (gid, gv, gp, gm), (wid, wv, wp, wm) in zip(got, want):
        assert (gid, gp, gm) == (wid, wp, wm) and gv.dtype == np.float32 and np.array_equal(gv, wv)


def pages(c, size: int) -> list:
    got, after = [], ""
    while True:
        page = asyncio.run(c.export_page(after, size))
        got += page
        if len(page) < size:
            return got
        after = page[-1].id


FILTERS = [None, {"term": {"color": "red"}},                                   # none, pushdown
           {"match": {"title": "boots"}},                                      # Elasticsearch only
           {"bool": {"filter": [{"range": {"n": {"gte": 40}}}], "must_not": [{"match": {"title": "wool"}}]}},
           # constants: an empty id list (nothing), an empty bool (everything), nothing beside something
           {"ids": {"values": []}}, {"bool": {}},
           {"bool": {"should": [{"ids": {"values": []}}, {"term": {"color": "red"}}], "minimum_should_match": 1}}]


@pytest.mark.parametrize("dsl", FILTERS, ids=["all", "pushdown", "es", "mixed", "nothing", "everything", "or_nothing"])
def test_scroll_and_count_equal_brute_force(loaded, dsl):
    cfg, store, clients, pts = loaded
    coord = Coordinator.from_clients(cfg, clients, metadata=store)
    node = parse_filter(dsl, cfg.metadata) if dsl else None
    want = sorted(p.id for p in pts if node is None or evaluate(node, p.id, p.payload, cfg.metadata))
    for limit in (1, 7, 1000):
        assert asyncio.run(scroll_all(coord, dsl, limit)) == want
    assert asyncio.run(coord.count(dsl)) == len(want)
    if dsl is None or "term" in dsl:  # without Elasticsearch, shards count what they can filter themselves
        bare = Coordinator.from_clients(cfg, clients)
        assert asyncio.run(bare.count(dsl)) == len(want)


def test_a_scroll_under_concurrent_upserts_returns_every_lasting_point_exactly_once(world):
    cfg, store, clients = world
    coord = Coordinator.from_clients(cfg, clients, metadata=store)
    lasting = make_points(200, 2)
    asyncio.run(coord.upsert(lasting))

    async def run():
        seen: list[str] = []
        stop = asyncio.Event()

        async def writer():
            k = 0
            while not stop.is_set():  # new points everywhere in the id order, and rewrites of lasting ones
                # wait=False: acknowledged at once, so writes land between pages on the server too
                await coord.upsert(make_points(10, 100 + k, prefix="p") + lasting[k * 5:(k + 1) * 5], wait=False)
                k += 1

        async def reader():
            after = ""
            while True:
                page = await coord.scan(after, 13)
                seen.extend(page)
                if len(page) < 13:
                    break
                after = page[-1]  # each scan waits on the shards' threads, so the writer runs between pages
            stop.set()

        version0 = coord.version
        await asyncio.gather(writer(), reader())
        assert coord.version - version0 >= 4, "the writer never ran during the scroll"
        return seen

    seen = asyncio.run(run())
    assert len(seen) == len(set(seen))                      # nothing twice
    assert {p.id for p in lasting} <= set(seen)              # every point that existed throughout
    assert seen == sorted(seen)


def test_dynamic_mapping_filters_equal_brute_force_and_conflicts_write_nothing(world):
    cfg, store, clients = world
    cfg.metadata.clear()  # nothing declared
    coord = Coordinator.from_clients(cfg, clients, metadata=store)
    saved = []
    coord.on_mapping = saved.append
    rng = np.random.default_rng(3)
    pts = []
    for i in range(60):
        v = rng.standard_normal(DIM)
        pts.append(Point(id=f"d{i:03d}", vectors={"a": (v / np.linalg.norm(v)).tolist()}, payload={
            "brand": ["acme", "zen", "orb"][i % 3], "stock": i % 7, "price": round(float(rng.uniform(1, 99)), 2),
            "sale": i % 2 == 0, "added": f"2024-0{1 + i % 9}-1{i % 10}", "spec": {"nested": i}}))
    asyncio.run(coord.upsert(pts[:30]))
    asyncio.run(coord.upsert(pts[30:]))
    assert cfg.metadata == {"brand": "keyword", "stock": "integer", "price": "float", "sale": "boolean",
                            "added": "date"}
    assert saved == [cfg.metadata]  # recorded once, for the service to persist
    es_map = store.es.indices.get_mapping(index=index_name(cfg.name))[index_name(cfg.name)]["mappings"]
    assert {f: m["type"] for f, m in es_map["properties"].items()}.items() >= {
        "brand": "keyword", "stock": "long", "price": "double", "sale": "boolean", "added": "date"}.items()
    queries = [{"term": {"brand": "zen"}}, {"range": {"stock": {"gte": 3, "lt": 6}}},
               {"range": {"price": {"gt": 50}}}, {"term": {"sale": True}},
               {"range": {"added": {"gte": "2024-05-01"}}},
               {"bool": {"must": [{"terms": {"brand": ["acme", "orb"]}}], "must_not": [{"term": {"sale": False}}]}}]
    probe = pts[0].vectors["a"]
    for dsl in queries:
        node = parse_filter(dsl, cfg.metadata)
        want = sorted(p.id for p in pts if evaluate(node, p.id, p.payload, cfg.metadata))
        assert asyncio.run(coord.count(dsl)) == len(want), dsl
        req = QueryRequest.model_validate({"prefetch": [{"space": "a", "vector": probe, "limit": 100}],
                                           "fusion": {"method": "none"}, "filter": dsl, "limit": 100})
        got = asyncio.run(coord.query(req))
        assert sorted(h.id for h in got.hits) == want, dsl
    before = dict(cfg.metadata)
    bad = [Point(id="x1", vectors={"a": probe}, payload={"brand": "new", "colour": "red"}),
           Point(id="x2", vectors={"a": probe}, payload={"stock": "many"})]
    with pytest.raises(InvalidRequest) as exc:
        asyncio.run(coord.upsert(bad))
    assert exc.value.field == "points[1].payload.stock"
    assert cfg.metadata == before                       # not even `colour` was mapped
    assert asyncio.run(coord.fetch(["x1", "x2"]))[0] == {}
    assert not store.ids(cfg.name, {"ids": {"values": ["x1", "x2"]}})
