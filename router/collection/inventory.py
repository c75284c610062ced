"""What one collection holds, read without a query: ids in order (keyset scan), counts, points by id and scroll
pages. A shard that cannot answer is a 503 here: a page or a count with a gap would be wrong, not partial.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from cluster.errors import ShardUnavailable
from router.collection.cursor import decode_cursor, encode_cursor
from router.collection.pipeline import split_answers
from router.filters.plan import SCAN_PAGE
from router.schema.common import select_payload
from router.schema.points import Record, RetrieveRequest, RetrieveResponse, ScrollRequest, ScrollResponse

if TYPE_CHECKING:
    from router.collection.coordinator import Coordinator
    from shards.api import StoredPoint


async def scan_page(coord: Coordinator, after: str, limit: int, dsl: dict[str, Any] | None = None,
                    max_examined: int | None = None) -> tuple[list[str], str | None]:
    """The first `limit` matching ids above `after`, over every shard, in id order (a keyset page: each shard's
    smallest ids, merged; parts of the filter Milvus cannot run are confirmed in Elasticsearch, widening the
    fetch until the page fills), examining at most `max_examined` ids when Elasticsearch must confirm the filter:
    (the page, the last id examined when the bound cut the page short, else None). A filter nothing matches then
    costs a request at most `max_examined` ids, not the whole collection."""
    expr, residual = coord.metadata.split(dsl)
    fetch = limit if residual is None else limit * coord.metadata.settings.postfilter_overfetch
    if residual is not None and max_examined is not None:
        fetch = min(fetch, max_examined)
    page: list[str] = []
    examined = 0
    while len(page) < limit:
        answers = await asyncio.gather(*(sh.read(lambda c, a=after: c.scan(a, fetch, expr)) for sh in coord.shards))
        union = sorted(set().union(*answers))
        merged = union[:fetch]  # every id up to merged[-1] is here: each shard gave its smallest
        if not merged:
            break
        keep = merged if residual is None else await coord.metadata.confirm(residual, merged)
        page.extend(i for i in merged if i in keep)
        examined += len(merged)
        if len(union) == len(merged) and all(len(a) < fetch for a in answers):
            break  # nothing left above merged[-1] on any shard
        after = merged[-1]
        if residual is not None and max_examined is not None and examined >= max_examined and len(page) < limit:
            return page, after
    return page[:limit], None


async def count(coord: Coordinator, dsl: dict[str, Any] | None = None) -> int:
    """Points matching `dsl` (all points without one): Elasticsearch counts when it is configured (it holds
    one document per point); without it the shards page through their matching ids."""
    if coord.metadata.store is not None:
        return await coord.metadata.count(dsl)
    total, after = 0, ""
    while True:
        ids = (await scan_page(coord, after, SCAN_PAGE, dsl))[0]
        total += len(ids)
        if len(ids) < SCAN_PAGE:
            return total
        after = ids[-1]


async def retrieve(coord: Coordinator, req: RetrieveRequest) -> RetrieveResponse:
    """Points by id with payload/vector selectors; a shard that cannot answer is a 503 naming it: its ids are
    never reported missing."""
    want_payload, spaces = req.returns()
    spaces = list(coord.config.spaces) if spaces is True else spaces
    for i, space in enumerate(spaces):
        coord.vectors.space(space, f"with_vectors[{i}]")
    rows, failed = await coord.fetch(req.ids, spaces)
    if failed:
        raise ShardUnavailable("; ".join(e.message for _, e in sorted(failed.items())), shards=sorted(failed))
    ids = list(dict.fromkeys(req.ids))
    return RetrieveResponse(
        points=[Record(id=i, payload=select_payload(rows[i].payload, req.with_payload) if want_payload else None,
                       vectors=rows[i].vectors if spaces else None) for i in ids if i in rows],
        missing=[i for i in ids if i not in rows])


async def scroll(coord: Coordinator, req: ScrollRequest, max_examined: int,
                 retrieve: Callable[[dict[str, Any]], Awaitable[RetrieveResponse]]) -> ScrollResponse:
    """A page of points in id order after the cursor (keyset paging: stable under concurrent writes), examining at
    most `max_examined` ids (limits.max_scroll_examined) when Elasticsearch must confirm the filter; the page's
    points read by `retrieve` (a retrieve request's body: PrismService.retrieve, with its checks)."""
    ids, stopped_at = await scan_page(coord, decode_cursor(req.cursor) if req.cursor else "", req.limit, req.filter,
                                      max_examined=max_examined)
    got = await retrieve({"ids": ids, "with_payload": req.model_dump()["with_payload"],
                          "with_vectors": req.with_vectors}) if ids else RetrieveResponse(points=[])
    if stopped_at is not None:  # the work bound, not the end: go on from the last id examined
        return ScrollResponse(points=got.points, next_cursor=encode_cursor(stopped_at), notes=[
            f"this page stopped after examining {max_examined} points (limits.max_scroll_examined) with {len(ids)} "
            f"of {req.limit} matches: pass next_cursor back for more; the scroll is complete when next_cursor is "
            "null"])
    return ScrollResponse(points=got.points, next_cursor=encode_cursor(ids[-1]) if len(ids) == req.limit else None)


async def fetch(coord: Coordinator, ids: Sequence[str], spaces: Sequence[str] = (),
                among: Sequence[int] | None = None) -> tuple[dict[str, StoredPoint], dict[int, ShardUnavailable]]:
    """Stored points (payload, the named spaces' vectors) by id, each asked of the shards that may hold it
    (Coordinator.by_id); the shards that could not answer, beside them."""
    by_shard = coord.by_id(list(dict.fromkeys(ids)), among)
    reads = [coord.shards[s].read(lambda c, ids=b: c.get(ids, list(spaces))) for s, b in by_shard.items()]
    answers = await asyncio.gather(*reads, return_exceptions=True)
    answered, failed = split_answers(list(by_shard), answers)
    rows: dict[str, StoredPoint] = {}  # an id no shard holds is absent
    for got in answered.values():
        rows.update(got)
    return rows, failed
