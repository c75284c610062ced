"""Result and embedding caches through the service on real milvus-lite: hits, invalidation by writes and by TTL,
`cache: false`, partial answers never cached; the per-request stage breakdown."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster.config import ClusterConfig
from cluster.errors import BackendError
from router.collection.service import PrismService
from tests.clock import FakeClock

DIM = 8


def vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture
def service(tmp_path):
    calls: list[list[str]] = []

    async def encode(name, texts, document=False):  # a stand-in encoder that counts what reaches it
        calls.append(list(texts))
        return [(vec(sum(map(ord, t))), False) for t in texts]

    clock = FakeClock(0.0)
    svc = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"},
                                     cache={"results_ttl_s": 10.0}), encode=encode, clock=clock)
    svc.encoders = {"minilm": {"available": True, "dim": DIM, "modalities": ["text"]}}
    spec = {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}, "shards": 2}
    asyncio.run(svc.create_collection("c", spec))
    asyncio.run(svc.upsert("c", {"points": [{"id": f"p{i}", "vectors": {"v": vec(i)}} for i in range(50)]}))
    svc.calls, svc.clock = calls, clock
    yield svc
    svc.close()


def q(seed=1, **kw):
    return {"prefetch": [{"space": "v", "vector": vec(seed)}], "fusion": {"method": "none"}, "limit": 3, **kw}


def test_a_repeated_query_is_answered_from_the_cache_and_a_write_invalidates_it(service):
    first = asyncio.run(service.query("c", q()))
    again = asyncio.run(service.query("c", q()))
    assert (first.cached, again.cached) == (False, True)
    assert [h.id for h in again.hits] == [h.id for h in first.hits] and [h.score for h in again.hits] == \
        [h.score for h in first.hits]
    # A write, then the same query: answered afresh and it sees the new point.
    asyncio.run(service.upsert("c", {"points": [{"id": "new", "vectors": {"v": vec(1)}}]}))
    after = asyncio.run(service.query("c", q()))
    assert after.cached is False and "new" in [h.id for h in after.hits]
    asyncio.run(service.delete_points("c", {"ids": ["new"]}))
    assert "new" not in [h.id for h in asyncio.run(service.query("c", q())).hits]


def test_ttl_cache_false_and_equivalent_spellings(service):
    asyncio.run(service.query("c", q()))
    assert asyncio.run(service.query("c", {**q(), "with_payload": True})).cached  # the default, spelled out
    assert asyncio.run(service.query("c", q(cache=False))).cached is False
    service.clock.advance(10.5)
    assert asyncio.run(service.query("c", q())).cached is False  # expired
    assert service.results.stats.expired == 1


def test_a_partial_answer_is_never_cached(service, monkeypatch):
    coord = service.coordinator("c")
    client = coord.shards[1].clients[0]

    async def broken(specs):
        raise BackendError("injected: shard 1 down")

    monkeypatch.setattr(client, "search_many", broken)
    for _ in range(2):
        answer = asyncio.run(service.query("c", q(seed=7)))
        assert answer.partial is True and answer.cached is False
    monkeypatch.undo()
    coord.shards[1].state.on_success(0)  # it answers again
    assert asyncio.run(service.query("c", q(seed=7))).partial is False


def test_query_texts_are_embedded_once(service):
    asyncio.run(service.create_collection("t", {"spaces": {"v": {"dim": DIM, "encoder": "minilm", "source": "d",
                                                                 "index": {"type": "FLAT"}}}}))
    asyncio.run(service.upsert("t", {"points": [{"id": "a", "payload": {"d": "red kettle"}}]}))
    service.calls.clear()
    body = {"prefetch": [{"space": "v", "text": "a red kettle"}], "fusion": {"method": "none"}, "cache": False}
    asyncio.run(service.query("t", body))
    asyncio.run(service.query("t", body))
    assert service.calls == [["a red kettle"]] and service.embeddings.stats.hits == 1


def test_debug_says_where_the_time_went(service):
    answer = asyncio.run(service.query("c", q(seed=3, debug=True, cache=False)))
    assert set(answer.timings_ms) == {"plan", "embed", "fan_out", "merge_fuse", "hydrate"}
    assert sum(answer.timings_ms.values()) <= answer.took_ms + 0.01
    assert asyncio.run(service.query("c", q(seed=3))).timings_ms is None
