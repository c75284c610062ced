"""`prism verify` for one collection: the ids the shards hold against Elasticsearch's documents, every shard's
replicas against each other (digests after a full rescan), and every point against its placement (a copy on a
shard the collection's routing does not put it on). Reads only; what it finds is reported, and anti-entropy
(router.replication.antientropy) repairs replicas."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cluster.errors import InvalidRequest
from router.collection import placing
from router.schema.collections import MisplacedPoint, ReplicaDifference, VerifyResponse
from router.filters.plan import SCAN_PAGE

if TYPE_CHECKING:
    from router.collection.coordinator import Coordinator


async def verify_collection(coord: Coordinator, sample: int = 100, list_extra_up_to: int = 10_000) -> VerifyResponse:
    """Compare the ids the shards hold with Elasticsearch's documents: every shard id is looked up there a page
    at a time; documents no shard holds are counted (and listed while the collection is small enough to name
    every id in one query). Writes in flight while it runs can show as drift: run it again to tell."""
    coord.metadata.require("verify")  # a 503 naming Elasticsearch when it is not configured
    held, missing, after, known = 0, [], "", []
    while True:
        ids = await coord.scan(after, SCAN_PAGE)
        held += len(ids)
        missing += await coord.metadata.unindexed(ids) if ids else []
        if held <= list_extra_up_to:
            known += ids
        if len(ids) < SCAN_PAGE:
            break
        after = ids[-1]
    documents = await coord.metadata.documents()
    extra = documents - (held - len(missing))
    listed = await coord.metadata.extra_documents(known, sample) if extra > 0 and held <= list_extra_up_to else []
    replicas = await verify_replicas(coord, sample)
    misplaced = await misplaced_points(coord)
    return VerifyResponse(collection=coord.config.name, shard_points=held, elasticsearch_documents=documents,
                          missing_in_elasticsearch=len(missing), extra_in_elasticsearch=extra,
                          sample_missing=missing[:sample], sample_extra=listed, replicas_equal=not replicas,
                          replica_differences=replicas, misplaced=len(misplaced), sample_misplaced=misplaced[:sample],
                          drift=bool(missing or extra or replicas or misplaced))


async def misplaced_points(coord: Coordinator) -> list[MisplacedPoint]:
    """Every copy of a point on a shard that is not its placement's: the ring decides from the id alone (hash,
    untrained vector routing); otherwise each point's stored payload (key) or routing-space vector (vector) does,
    read from the shard that holds the copy, a page at a time; then the copies of a point on two shards that
    pass that check (_duplicates)."""
    placement = coord.placement
    held = await asyncio.gather(*(sh.read(lambda c: c.ids(), scan=True) for sh in coord.shards))
    spaces = [placement.space] if placement.method == "vector" and placement.ready else []
    out = []
    for shard, ids in enumerate(held):
        ids = sorted(ids)
        if placing.by_ring(placement):
            out += [MisplacedPoint(id=i, shard=shard, placement=coord.shard_of(i)) for i in ids
                    if coord.shard_of(i) != shard]
            continue
        for k in range(0, len(ids), SCAN_PAGE):
            rows = await coord.shards[shard].read(lambda c, page=ids[k : k + SCAN_PAGE]: c.get(page, spaces))
            for pid in ids[k : k + SCAN_PAGE]:
                row = rows.get(pid)
                if row is None:  # deleted since the ids were listed
                    continue
                try:
                    home: int | None = placement.shard_of(pid, row.vectors, row.payload)
                except InvalidRequest:
                    home = None
                if home != shard:
                    out.append(MisplacedPoint(id=pid, shard=shard, placement=home))
    return out + await _duplicates(coord, held, {(m.id, m.shard) for m in out})


async def _duplicates(coord: Coordinator, held: list, reported: set[tuple[str, int]]) -> list[MisplacedPoint]:
    """The copies of points found on more than one shard that their own contents do not give away (a move whose
    old copy was never deleted: each copy agrees with its own key or vector). The shard the point's Elasticsearch
    document names (SHARD_FIELD), else under key routing its stored key's owner, is its home and the other copies
    are reported; without either, every copy, placement unknown."""
    shards_of: dict[str, list[int]] = {}
    for shard, ids in enumerate(held):
        for pid in ids:
            shards_of.setdefault(pid, []).append(shard)
    twice = {pid: [s for s in where if (pid, s) not in reported] for pid, where in shards_of.items()
             if len(where) > 1}
    twice = {pid: where for pid, where in sorted(twice.items()) if len(where) > 1}
    placement, known = coord.placement, None
    if twice and not placing.by_ring(placement):
        known = await coord.metadata.placed(list(twice))
    out = []
    for pid, where in twice.items():
        home: int | None = None
        if known is not None and pid in known:
            recorded, payload = known[pid]
            if recorded is not None:  # the shard its document names (writes and moves keep it)
                home = recorded[0]
            elif placement.method == "key":
                try:
                    home = placement.shard_of(pid, None, payload)
                except InvalidRequest:
                    home = None
        out += [MisplacedPoint(id=pid, shard=s, placement=home) for s in where if home is None or s != home]
    return out


async def verify_replicas(coord: Coordinator, sample: int = 100) -> list[ReplicaDifference]:
    """Every shard's replicas compared with each other by digest after a full rescan (ids and contents), between
    writes (router.replication.repair.Repairs.compare_replicas)."""
    found = await asyncio.gather(*(sh.compare_replicas() for sh in coord.shards if len(sh.clients) > 1))
    out = []
    for c in found:
        for r, why in sorted(c.unanswered.items()):
            out.append(ReplicaDifference(shard=c.shard, replica=r, reference=c.reference, error=why))
        for r, ids in sorted(c.differing.items()):
            if ids:
                out.append(ReplicaDifference(shard=c.shard, replica=r, reference=c.reference,
                                             differing=len(ids), ids=ids[:sample]))
    return out
