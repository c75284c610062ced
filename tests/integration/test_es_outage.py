"""Elasticsearch down: what keeps working, what is refused (503 naming it), and that nothing diverges. A real
noida-db stopped by process group and started again on the same port and data dir; real milvus-lite shards."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.errors import MetadataUnavailable
from cluster.services import free_port, start_elasticsearch
from router.collection.coordinator import Coordinator
from router.metadata.steps import STORE_THREADS
from router.metadata.store import MetadataStore
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.local import local_shards, replica_specs, stop_local_shards

DIM = 8
_n = itertools.count()


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def points(ids: list[str], tag: str = "a") -> list[Point]:
    return [Point(id=i, payload={"tag": tag, "note": f"note {i} about rain"}, vectors={"v": unit(k)})
            for k, i in enumerate(ids)]


def query(**extra) -> QueryRequest:
    return QueryRequest(prefetch=[{"space": "v", "vector": unit(3)}], fusion={"method": "none"}, limit=5,
                        cache=False, **extra)


@pytest.fixture
def world(tmp_path):
    """A coordinator over 2 milvus-lite shards and a noida-db it owns: (coordinator, restart, stop)."""
    port, es_dir = free_port(), tmp_path / "es"
    es = {"h": start_elasticsearch(es_dir, port)}
    cfg = CollectionConfig(name=f"out{next(_n)}", shards=2, metadata={"tag": "keyword", "note": "text"},
                           spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}})
    store = MetadataStore(es["h"].uri, timeout_s=5)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path / "milvus", None))
    coord = Coordinator.from_clients(cfg, clients, metadata=store)

    def stop():
        es["h"].stop()

    def restart():
        es["h"] = start_elasticsearch(es_dir, port)

    yield coord, restart, stop
    stop_local_shards(clients, drop=True)
    es["h"].stop()


def ids_of(answer) -> list[str]:
    return [h.id for h in answer.hits]


def test_an_elasticsearch_outage_refuses_what_needs_it_keeps_the_rest_and_loses_nothing(world):
    coord, restart, stop = world
    held = [f"p{i}" for i in range(12)]
    asyncio.run(coord.upsert(points(held)))
    before = {"plain": ids_of(asyncio.run(coord.query(query()))),
              "pushdown": ids_of(asyncio.run(coord.query(query(filter={"term": {"tag": "a"}})))),
              "residual": ids_of(asyncio.run(coord.query(query(filter={"match": {"note": "rain"}}))))}
    assert len(before["plain"]) == 5 and before["pushdown"] == before["plain"] == before["residual"]
    stop()

    # No Elasticsearch needed: unfiltered queries and filters Milvus runs answer as before, complete.
    for kind, req in (("plain", query()), ("pushdown", query(filter={"term": {"tag": "a"}}))):
        answer = asyncio.run(coord.query(req))
        assert ids_of(answer) == before[kind] and not answer.partial, kind
    assert sorted(asyncio.run(coord.fetch(held))[0]) == sorted(held)  # points by id come from the shards
    # Elasticsearch needed: a 503 naming it, for the query, the count and every write; nothing changes.
    refused = [lambda: coord.query(query(filter={"match": {"note": "rain"}})), lambda: coord.count(),
               lambda: coord.upsert(points(["new1", "new2"], tag="b")), lambda: coord.delete(["p0", "p1"]),
               lambda: coord.delete_by_filter({"term": {"tag": "a"}}), lambda: coord.verify()]
    for call in refused:
        with pytest.raises(MetadataUnavailable, match="Elasticsearch at http://127.0.0.1:.* is unreachable") as e:
            asyncio.run(call())
        assert e.value.status == 503
    rows, failed = asyncio.run(coord.fetch(held + ["new1", "new2"]))
    assert not failed and sorted(rows) == sorted(held)  # the refused upsert wrote no shard, the delete deleted none

    restart()  # same port, same data: the client reconnects by itself
    report = asyncio.run(coord.verify())
    assert not report.drift and report.shard_points == report.elasticsearch_documents == 12, report
    assert ids_of(asyncio.run(coord.query(query(filter={"match": {"note": "rain"}})))) == before["residual"]
    assert asyncio.run(coord.count()) == 12
    asyncio.run(coord.delete(["p0"]))
    asyncio.run(coord.upsert(points(["new1"], tag="b")))
    assert asyncio.run(coord.count({"term": {"tag": "b"}})) == 1 and not asyncio.run(coord.verify()).drift


def test_verify_names_the_points_the_two_stores_disagree_on(world):
    coord, _, _ = world
    asyncio.run(coord.upsert(points(["a1", "a2", "a3", "a4"])))
    store: MetadataStore = coord.metadata.store
    store.delete(coord.config.name, ["a2"])  # behind prism's back: a shard point Elasticsearch lost
    store.upsert(coord.config.name, [("ghost", {"tag": "a"})])  # and a document no shard holds
    report = asyncio.run(coord.verify())
    assert report.drift and report.shard_points == 4 and report.elasticsearch_documents == 4
    assert (report.missing_in_elasticsearch, report.sample_missing) == (1, ["a2"])
    assert (report.extra_in_elasticsearch, report.sample_extra) == (1, ["ghost"])


def test_a_hung_elasticsearch_holds_its_own_writes_and_never_the_shards_reads(world):
    """Elasticsearch that takes writes in and does not answer (as a loaded noida-db did under the 200k snapshot
    bench's writer) holds those writes, never the shard calls: with more writes hung in it than the event loop's
    default pool has threads, an unfiltered query and points by id (shards only) still answer."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    coord, _, _ = world
    held = [f"p{i}" for i in range(12)]
    asyncio.run(coord.upsert(points(held)))
    want = ids_of(asyncio.run(coord.query(query())))
    store, release, entered = coord.metadata.store, threading.Event(), threading.Semaphore(0)
    real_upsert = store.upsert

    def hung_upsert(*args, **kwargs):
        entered.release()
        release.wait(120)  # bounded: a broken fix fails the test below, not the run
        return real_upsert(*args, **kwargs)

    store.upsert = hung_upsert
    default_threads = ThreadPoolExecutor()._max_workers  # what asyncio.to_thread's pool gets on this machine
    writes = default_threads + 2

    async def scenario():
        hung = [asyncio.create_task(coord.upsert(points([f"w{i}"], tag="w"))) for i in range(writes)]
        with ThreadPoolExecutor(1) as waiter:  # not the default pool: the hung writes may hold it
            for _ in range(min(default_threads, STORE_THREADS)):  # as many hung as both pools have room for
                assert await asyncio.get_running_loop().run_in_executor(waiter, entered.acquire, True, 60)
        try:
            answer = await asyncio.wait_for(coord.query(query()), 30)
            rows, failed = await asyncio.wait_for(coord.fetch(held), 30)
        finally:
            release.set()
        await asyncio.gather(*hung)
        return answer, rows, failed

    answer, rows, failed = asyncio.run(scenario())
    assert ids_of(answer) == want and not answer.partial
    assert sorted(rows) == sorted(held) and not failed
    assert asyncio.run(coord.count({"term": {"tag": "w"}})) == writes  # the hung writes all landed once released
