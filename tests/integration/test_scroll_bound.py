"""A scroll whose filter Elasticsearch must confirm (an ES-only clause) does a bounded amount of work per request:
at most `limits.max_scroll_examined` ids are examined, the page may then be short, the answer says so and hands
back a cursor that goes on where it stopped; following the cursors still lists every match exactly once."""
from __future__ import annotations

import asyncio

import numpy as np

from cluster.config import ClusterConfig
from router.collection.service import PrismService

N, BOUND = 150, 40


def service(tmp_path, es_uri) -> PrismService:
    cfg = ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "external", "url": es_uri},
                        limits={"max_scroll_examined": BOUND})
    from router.metadata.store import metadata_store

    return PrismService(cfg, metadata=metadata_store(cfg))


def test_a_scroll_with_an_unmatched_residual_filter_is_bounded_per_request(tmp_path, es_server):
    svc = service(tmp_path, es_server.uri)
    rng = np.random.default_rng(3)

    async def scenario():
        await svc.create_collection("bounded", {"spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}, "shards": 3,
                                                "metadata": {"title": "text"}})
        pts = [{"id": f"p{i:03d}", "payload": {"title": "match me" if i % 37 == 0 else "plain words"},
                "vectors": {"v": rng.standard_normal(4).tolist()}} for i in range(N)]
        await svc.upsert("bounded", {"points": pts})
        pages, cursor = [], None
        while True:
            body = {"filter": {"match": {"title": "nowhere"}}, "limit": 5, **({"cursor": cursor} if cursor else {})}
            page = await svc.scroll("bounded", body)
            pages.append(page)
            cursor = page.next_cursor
            if cursor is None:
                break
        found, cursor = [], None
        while True:
            body = {"filter": {"match": {"title": "match"}}, "limit": 5, **({"cursor": cursor} if cursor else {})}
            page = await svc.scroll("bounded", body)
            found += [p.id for p in page.points]
            cursor = page.next_cursor
            if cursor is None:
                break
        return pages, found

    try:
        pages, found = asyncio.run(scenario())
    finally:
        asyncio.run(svc.delete_collection("bounded"))
        svc.close()
    assert all(not p.points for p in pages)
    # every request examined at most BOUND ids: N ids take at least N / BOUND requests, each but the last saying so
    assert len(pages) >= N // BOUND, len(pages)
    assert all(any("max_scroll_examined" in n for n in p.notes) for p in pages[:-1]), [p.notes for p in pages]
    assert found == [f"p{i:03d}" for i in range(N) if i % 37 == 0]
