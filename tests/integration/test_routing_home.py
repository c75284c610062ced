"""Where a point lives, kept in its Elasticsearch document (issue 28): a vector-routed update that moves a point
touches only its old and new shards, a document without the record falls back to a broadcast, an Elasticsearch
outage refuses the write before any shard changes, and the reserved field cannot be written, mapped, filtered on
or read back. Real milvus-lite shards (two replicas each, every replica read) and a real noida-db it owns."""
from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import numpy as np
import pytest

from cluster.collection_spec import SHARD_FIELD, CollectionConfig
from cluster.config import MilvusConfig
from cluster.errors import InvalidRequest, MetadataUnavailable, PrismError
from cluster.services import free_port, start_elasticsearch
from router.collection import placing
from router.collection.coordinator import Coordinator
from router.metadata.store import MetadataStore
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.local import local_shards, replica_specs, stop_local_shards
from tests.integration.routing_support import count_calls, held_search

SHARDS, DIM = 4, 4
AXES = np.eye(DIM, dtype=np.float32)  # centroid k is axis k, owned by shard k: a point near axis k lives on k
_n = itertools.count()


def near(k: int, i: int = 0) -> list[float]:
    v = AXES[k] + 0.05 * np.random.default_rng(100 * k + i).standard_normal(DIM)
    return [float(x) for x in v]


def point(pid: str, k: int, i: int = 0, **payload) -> Point:
    return Point(id=pid, payload={"title": f"rain {pid}", **payload}, vectors={"v": near(k, i)})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(coordinator over 4 trained vector-routed shards x 2 replicas, its store, shard calls counter, stop, restart):
    one for the module (each costs 8 milvus-lite collections), each test with ids of its own"""
    tmp_path = tmp_path_factory.mktemp("home")
    port, es_dir = free_port(), tmp_path / "es"
    es = {"h": start_elasticsearch(es_dir, port)}
    cfg = placing.checked(CollectionConfig(
        name=f"home{next(_n)}", shards=SHARDS, replicas=2, metadata={"title": "text", "n": "integer"},
        spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}, "words": {"kind": "bm25", "fields": ["title"]}},
        routing={"method": "vector", "space": "v", "centroids": SHARDS}))
    store = MetadataStore(es["h"].uri, timeout_s=5)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path / "milvus", None))
    placement = placing.placement_of(cfg).trained(AXES, np.arange(SHARDS))
    coord = Coordinator.from_clients(cfg, clients, metadata=store, placement=placement)
    calls = count_calls(coord)

    def restart():
        es["h"] = start_elasticsearch(es_dir, port)

    yield coord, store, calls, es["h"].stop, restart
    stop_local_shards(clients, drop=True)
    es["h"].stop()


def layout(coord, prefix: str) -> dict[str, list[int]]:
    """id -> the shards holding it, for the ids starting with `prefix`, read from every replica (which must agree
    on the ids and the vectors)."""
    async def read():
        out: dict[str, list[int]] = {}
        for s, sh in enumerate(coord.shards):
            seen = []
            for c in sh.clients:
                ids = await c.ids()
                got = await c.get(ids, ["v"]) if ids else {}
                seen.append({i: tuple(np.round(p.vectors["v"], 4)) for i, p in got.items()})
            assert all(x == seen[0] for x in seen), f"replicas of shard {s} disagree"
            for pid in seen[0]:
                if pid.startswith(prefix):
                    out.setdefault(pid, []).append(s)
        return out
    return asyncio.run(read())


def recorded(store, coord, pid):
    return store.sources(coord.config.name, [pid])[pid].get(SHARD_FIELD)


def test_a_move_touches_only_the_old_and_new_shards_and_the_record_follows(world):
    coord, store, calls, _, _ = world
    asyncio.run(coord.upsert([point(f"m{k}{i}", k, i) for k in range(SHARDS) for i in range(3)]))
    assert all(where == [int(pid[1])] for pid, where in layout(coord, "m").items())
    assert recorded(store, coord, "m00") == [0]
    calls.clear()
    asyncio.run(coord.upsert([point("m00", 2, 7)]))  # its new vector belongs to shard 2
    assert calls == {(2, "upsert"): 1, (0, "delete"): 1}  # no shard but the old and the new one is asked
    assert layout(coord, "m")["m00"] == [2]
    assert recorded(store, coord, "m00") == [2, 0]  # the old home stays named until the next write
    calls.clear()
    asyncio.run(coord.upsert([point("m00", 2, 8)]))
    assert calls == {(2, "upsert"): 1, (0, "delete"): 1} and recorded(store, coord, "m00") == [2]
    calls.clear()
    asyncio.run(coord.upsert([point(f"m1{i}", 1, 10 + i) for i in range(3)]))  # updates that stay: no delete
    assert calls == {(1, "upsert"): 1}
    got = asyncio.run(coord.query(QueryRequest(prefetch=[{"space": "v", "vector": near(2, 8)}], limit=20,
                                               probe="all", cache=False)))
    assert [h.id for h in got.hits].count("m00") == 1
    assert all(len(where) == 1 for where in layout(coord, "m").values())


def test_a_document_without_the_record_falls_back_to_every_shard(world):
    coord, store, calls, _, _ = world
    asyncio.run(coord.upsert([point("f-old", 0), point("f-other", 1)]))
    store.upsert(coord.config.name, [("f-old", {"title": "rain f-old"})])  # as written before prism kept the record
    calls.clear()
    asyncio.run(coord.upsert([point("f-old", 3)]))
    assert calls == {(3, "upsert"): 1, (0, "delete"): 1, (1, "delete"): 1, (2, "delete"): 1}
    assert layout(coord, "f") == {"f-old": [3], "f-other": [1]}
    assert recorded(store, coord, "f-old") == [3, 0, 1, 2]  # where it may have been, until the next write
    calls.clear()
    asyncio.run(coord.upsert([point("f-old", 3, 1)]))
    assert calls == {(3, "upsert"): 1, (0, "delete"): 1, (1, "delete"): 1, (2, "delete"): 1}
    calls.clear()
    asyncio.run(coord.upsert([point("f-old", 3, 2)]))
    assert calls == {(3, "upsert"): 1} and recorded(store, coord, "f-old") == [3]


def test_with_elasticsearch_down_a_move_is_refused_before_any_shard_changes(world):
    coord, store, calls, stop, restart = world
    asyncio.run(coord.upsert([point("oa", 0), point("ob", 1)]))
    before = layout(coord, "o")
    stop()
    calls.clear()
    try:
        with pytest.raises(MetadataUnavailable):
            asyncio.run(coord.upsert([point("oa", 2)]))
    finally:
        restart()
    assert not calls  # refused where the record is read: nothing written anywhere
    assert layout(coord, "o") == before == {"oa": [0], "ob": [1]}
    asyncio.run(coord.upsert([point("oa", 2)]))
    assert layout(coord, "o") == {"oa": [2], "ob": [1]}


def test_the_reserved_field_cannot_be_written_mapped_filtered_or_read(world):
    coord, store, calls, _, _ = world
    asyncio.run(coord.upsert([point("ra", 0)]))
    calls.clear()
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(coord.upsert([point("rb", 1), point("rc", 2, **{SHARD_FIELD: [1]})]))
    assert err.value.field == f"points[1].payload.{SHARD_FIELD}" and SHARD_FIELD in str(err.value)
    assert not calls and store.sources(coord.config.name, ["rb", "rc"]) == {}  # nothing written
    assert SHARD_FIELD not in coord.config.metadata
    with pytest.raises(InvalidRequest):
        asyncio.run(coord.map_fields({SHARD_FIELD: "integer"}))
    for spec in ({"metadata": {SHARD_FIELD: "integer"}}, {"lexical": {"w": {"fields": [SHARD_FIELD]}}}):
        with pytest.raises(ValueError, match="reserved"):
            CollectionConfig(name="x", spaces={"v": {"dim": DIM}}, **spec)
    with pytest.raises(PrismError) as err:  # not mapped, so no filter can name it
        asyncio.run(coord.query(QueryRequest(prefetch=[{"space": "v", "vector": near(0)}], cache=False,
                                             filter={"term": {SHARD_FIELD: 0}})))
    assert err.value.status == 422
    for prefetch in ({"space": "v", "vector": near(0)}, {"space": "words", "text": "ra"}):  # shards; ES
        got = asyncio.run(coord.query(QueryRequest(prefetch=[prefetch], with_payload=True, cache=False)))
        assert got.hits[0].id == "ra" and got.hits[0].payload == {"title": "rain ra"}


def test_verify_names_the_recorded_home_of_a_point_on_two_shards(world):
    coord, store, _, _, _ = world
    asyncio.run(coord.upsert([point("va", 0), point("vb", 1)]))
    asyncio.run(coord.upsert([point("va", 3)]))
    (row,) = asyncio.run(coord.shards[3].read(lambda c: c.export(["va"])))
    row.vectors["v"] = near(1)  # an old copy, left on shard 1, that its own vector places there
    asyncio.run(coord.shards[1].upsert([row]))
    report = asyncio.run(coord.verify())
    assert report.drift and [(m.id, m.shard, m.placement) for m in report.sample_misplaced] == [("va", 1, 3)]


def test_a_routed_query_the_catalog_changed_under_runs_again_by_the_placement_it_has_now(world, monkeypatch):
    """Several ingress replicas: a rebalance in another process (it writes the catalog, then moves points) cannot
    count this process's queries; a query routed by the old placement whose shard lost the point meanwhile runs
    again by the placement the catalog has now (Coordinator._routed)."""
    coord, store, _, _, _ = world
    asyncio.run(coord.upsert([point("ix", 0)]))
    old = coord.placement
    new = old.trained(AXES, (np.arange(SHARDS) + 1) % SHARDS)  # the other ingress's training: axis k on shard k + 1
    catalog = {"stamp": 1}

    def stamp():  # as rebalance.catalog_stamp: the stamp read, then the placement adopted from the catalog
        seen = catalog["stamp"]
        if seen == 2:
            coord.placement = new
        return seen

    shard = coord.shards[0]
    real = shard.search
    hold, gate, entered = held_search(shard)

    async def scenario():
        monkeypatch.setattr(shard, "search", hold)
        query = asyncio.create_task(coord.query(QueryRequest(prefetch=[{"space": "v", "vector": near(0)}], probe=1,
                                                             limit=1, cache=False)))
        await entered.wait()  # routed by the old placement, waiting at shard 0
        monkeypatch.setattr(shard, "search", real)
        catalog["stamp"] = 2  # the other ingress switches placements, copies the point, deletes the old copy
        (row,) = await shard.read(lambda c: c.export(["ix"]))
        await coord.shards[1].upsert([row])
        await shard.delete(["ix"])
        gate.set()
        return await query

    coord.placement_stamp = stamp
    try:
        answer = asyncio.run(scenario())
    finally:
        coord.placement_stamp, coord.placement = None, old
        asyncio.run(coord.delete(["ix"]))
    assert answer.coverage.routed == [1] and [h.id for h in answer.hits] == ["ix"]


def _refusing(monkeypatch, coord, shard: int, unavailable: int | None = None):
    """Every replica of `shard` refuses upserts as a Milvus refusing a value does (WriteRefused); replica 1 of
    `unavailable` fails them as an unreachable one does (that shard misses its quorum: the write rolls forward)."""
    from cluster.errors import ShardUnavailable, WriteRefused

    async def refuse(*a, **kw):
        raise WriteRefused(f"shard {shard}: Milvus refused the rows")

    async def down(*a, **kw):
        raise ShardUnavailable(f"shard {unavailable} replica 1 is down", shards=[unavailable])

    for c in coord.shards[shard].clients:
        monkeypatch.setattr(c, "upsert", refuse)
    if unavailable is not None:
        monkeypatch.setattr(coord.shards[unavailable].clients[1], "upsert", down)


def _misplaced(coord, prefix: str) -> list:
    """verify's misplaced points among the ids starting with `prefix` (the module's other tests plant their own)."""
    return [m for m in asyncio.run(coord.verify(sample=1000)).sample_misplaced if m.id.startswith(prefix)]


def test_a_batch_one_shard_refuses_leaves_each_point_on_one_shard(world, monkeypatch):
    """A move whose new copy landed loses its old copy even when another shard of the batch refused its rows; the
    refused point keeps its old copy (and its document follows the shards)."""
    from cluster.errors import WriteRefused

    coord, store, _, _, _ = world
    asyncio.run(coord.upsert([point("wa", 0), point("wb", 0)]))
    _refusing(monkeypatch, coord, 2)
    with pytest.raises(WriteRefused):
        asyncio.run(coord.upsert([point("wa", 1, 1), point("wb", 2, 1)]))  # wa to shard 1, wb to (refusing) 2
    monkeypatch.undo()
    assert layout(coord, "w") == {"wa": [1], "wb": [0]}
    assert _misplaced(coord, "w") == [] and set(store.sources(coord.config.name, ["wa", "wb"])) == {"wa", "wb"}


def test_a_quorum_miss_beside_a_refusal_loses_no_point(world, monkeypatch):
    """One shard of a batch misses its quorum (its rows roll forward) while another refuses its rows: the points
    moving to the refusing shard keep their old copies (deleting them would lose the points)."""
    from cluster.errors import PrismError

    coord, store, _, _, _ = world
    asyncio.run(coord.upsert([point("qa", 0), point("qb", 0)]))
    _refusing(monkeypatch, coord, 2, unavailable=1)
    with pytest.raises(PrismError):
        asyncio.run(coord.upsert([point("qa", 1, 1), point("qb", 2, 1)]))  # qa to 1 (quorum miss), qb to 2 (refused)
    monkeypatch.undo()
    coord.shards[1].state.states[1].next_probe_at = float("-inf")  # its probe due now rather than in seconds
    asyncio.run(coord.shards[1].heal())  # the replica that missed qa gets it replayed
    assert layout(coord, "q") == {"qa": [1], "qb": [0]}
    assert _misplaced(coord, "q") == [] and set(store.sources(coord.config.name, ["qa", "qb"])) == {"qa", "qb"}


def test_hash_routing_keeps_no_record_and_asks_nothing_more(world, tmp_path):
    """Under hash routing the ring says where a point lives: an update asks Elasticsearch for nothing (no multi-get),
    its document holds the payload only, and only the owning shard is written (no delete anywhere)."""
    _, store, _, _, _ = world
    cfg = placing.checked(CollectionConfig(name=f"hashed{next(_n)}", shards=SHARDS, metadata={"title": "text"},
                                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}}))
    store.ensure_index(cfg)
    es_calls: Counter = Counter()
    hashed = MetadataStore(store.url, timeout_s=5)
    for kind in ("upsert", "sources", "set_field", "delete"):
        def counted_es(*a, _real=getattr(hashed, kind), _kind=kind, **kw):
            es_calls[_kind] += 1
            return _real(*a, **kw)
        setattr(hashed, kind, counted_es)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path / "milvus", None))
    coord = Coordinator.from_clients(cfg, clients, metadata=hashed)
    calls = count_calls(coord)
    try:
        asyncio.run(coord.upsert([point("h1", 0)]))
        owner = coord.by_shard(["h1"])
        es_calls.clear(), calls.clear()
        asyncio.run(coord.upsert([point("h1", 2, 3)]))  # another vector: under hash routing it stays put
        assert es_calls == {"upsert": 1} and calls == {(s, "upsert"): 1 for s in owner}
        assert store.sources(cfg.name, ["h1"])["h1"] == {"title": "rain h1"}
    finally:
        stop_local_shards(clients, drop=True)
        store.drop_index(cfg.name)


def test_two_quick_moves_and_deletes_by_a_stale_record_leave_one_copy_or_none(world):
    """A -> B -> C by two writes at once (one ingress orders them by the point's lock): one copy, where the
    record says; a delete by id, and one by filter, of a point whose record names the wrong shard remove it
    everywhere (deletes ask every shard of a routed collection)."""
    coord, store, _, _, _ = world
    asyncio.run(coord.upsert([point("ta", 0), point("tb", 1), point("tc", 2)]))

    async def twice():
        await asyncio.gather(coord.upsert([point("ta", 1, 1)]), coord.upsert([point("ta", 2, 2)]))
    asyncio.run(twice())
    home = layout(coord, "ta")["ta"]
    assert len(home) == 1 and recorded(store, coord, "ta")[0] == home[0]
    for pid in ("tb", "tc"):  # the record names shard 3, the point sits elsewhere
        store.set_field(coord.config.name, SHARD_FIELD, {pid: [3]})
    asyncio.run(coord.delete(["tb"]))
    asyncio.run(coord.delete_by_filter({"ids": {"values": ["tc"]}}))
    assert layout(coord, "t") == {"ta": home} and store.sources(coord.config.name, ["tb", "tc"]) == {}
