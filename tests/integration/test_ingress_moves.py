"""Two ingress replicas moving the same points at once (issue 28): each moves them from shard A to a shard of its own
(A -> B and A -> C) many times over; the per-id locks on the sequencers they share order the moves, so every point
ends on exactly one shard, the one its Elasticsearch document names, with the last write's payload. Without them
both read the record [A], each deletes on A only, and the point stays on B and C.

Two coordinators in one process, each with its own per-point locks (as two ingress processes have), over the same
milvus-lite shards (two replicas each, every replica read) and the same in-process sequencers (the Ray actor is
that class over replica actors: tests/integration/test_sequencer.py), and the session's noida-db."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np

from cluster.collection_spec import SHARD_FIELD, CollectionConfig
from cluster.config import MilvusConfig
from router.collection import placing
from router.collection.coordinator import Coordinator
from router.metadata.store import MetadataStore
from router.replication.replicas import ReplicatedShard
from router.replication.sequencer import Journal, Sequencer
from router.schema.points import Point
from shards.local import local_shards, replica_specs, stop_local_shards

SHARDS, DIM, IDS, ROUNDS = 3, 4, 12, 4
_n = itertools.count()


def tenants(cfg: CollectionConfig) -> list[str]:
    """A key value owned by each shard, shard order."""
    placement, out = placing.placement_of(cfg), {}
    for k in range(1000):
        out.setdefault(placement.shard_of("x", None, {"tenant": f"t{k}"}), f"t{k}")
        if len(out) == SHARDS:
            return [out[s] for s in range(SHARDS)]
    raise AssertionError(out)


def points(ids: list[str], tenant: str, by: str, seed: int) -> list[Point]:
    v = np.random.default_rng(seed).standard_normal((len(ids), DIM))
    return [Point(id=pid, payload={"tenant": tenant, "by": by}, vectors={"v": v[k].tolist()})
            for k, pid in enumerate(ids)]


async def every_replica(coord: Coordinator) -> list[dict[str, dict]]:
    """Per shard, {id: payload}, which every replica of that shard must hold alike."""
    out = []
    for s, sh in enumerate(coord.shards):
        seen = []
        for c in sh.clients:
            ids = await c.ids()
            seen.append({pid: p.payload for pid, p in (await c.get(ids)).items()} if ids else {})
        assert all(x == seen[0] for x in seen), f"the replicas of shard {s} differ"
        out.append(seen[0])
    return out


def every_shard_once(shards: list[dict[str, dict]], ids: list[str]) -> list[int]:
    """The shards holding any of `ids`."""
    return [s for s in range(SHARDS) if any(pid in shards[s] for pid in ids)]


def check(shards: list[dict[str, dict]], docs: dict[str, dict], ids: list[str], r: int) -> None:
    """Each id on exactly one shard, the one its document names first, with the document's payload, which is
    the last write of one of the two moves of round `r`."""
    found = {pid: [s for s in range(SHARDS) if pid in shards[s]] for pid in ids}
    assert {pid: where for pid, where in found.items() if len(where) != 1} == {}, f"round {r}: on two shards"
    for pid in ids:
        [s] = found[pid]
        assert docs[pid][SHARD_FIELD][0] == s and s in (1, 2), (r, pid, docs[pid], s)
        assert shards[s][pid] == {k: v for k, v in docs[pid].items() if k != SHARD_FIELD}
        assert shards[s][pid]["by"] == f"{'a' if s == 1 else 'b'}{r}"


def test_two_ingresses_moving_the_same_points_to_different_shards_leave_one_copy_each(es_server, tmp_path):
    cfg = placing.checked(CollectionConfig(
        name=f"moves{next(_n)}", shards=SHARDS, replicas=2, write_quorum="all", metadata={"tenant": "keyword"},
        spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}}, routing={"method": "key", "field": "tenant"}))
    store = MetadataStore(es_server.uri, timeout_s=10)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path / "milvus", None))
    seqs = [Sequencer(ReplicatedShard(s, row, key=f"{cfg.name}/{s}", write_quorum=cfg.write_quorum,
                                      journal=Journal(tmp_path / "seq" / f"s{s}"))) for s, row in enumerate(clients)]
    locks = []
    for sq in seqs:  # every lock call counted (the hash collection below must make none)
        def counted(*a, _real=sq.lock, **kw):
            locks.append(a[1])
            return _real(*a, **kw)
        sq.lock = counted

    def ingress(c: CollectionConfig) -> Coordinator:
        return Coordinator.from_clients(c, clients, sequencers=seqs, metadata=MetadataStore(es_server.uri, timeout_s=10))

    a, b = ingress(cfg), ingress(cfg)
    home, there, elsewhere = tenants(cfg)
    ids = [f"m{i:02d}" for i in range(IDS)]
    try:
        async def rounds():
            for r in range(ROUNDS):
                for k in range(2):  # back on `home`, the record naming it alone (the second write drops the old home)
                    await a.upsert(points(ids, home, "home", 10 * r + k))
                await asyncio.gather(a.upsert(points(ids, there, f"a{r}", 100 + r)),  # two moves of every id at once
                                     b.upsert(points(ids[::-1], elsewhere, f"b{r}", 200 + r)))
                check(await every_replica(a), store.sources(cfg.name, ids), ids, r)
        asyncio.run(rounds())
        assert locks and all(sorted(x) == sorted(set(x)) for x in locks)
        locks.clear()  # a hash collection over the same shards asks no sequencer for a lock, new point or update
        hashed = ingress(placing.checked(cfg.model_copy(update={"routing": {"method": "hash"}})))
        asyncio.run(hashed.upsert(points(["h1"], home, "h", 1)))
        asyncio.run(hashed.upsert(points(["h1"], there, "h", 2)))
        assert locks == [] and all(len(sq.locks.table) == 0 for sq in seqs)
        only = Coordinator.from_clients(cfg, clients, sequencers=seqs, poll_sequencer=False,  # the only ingress
                                        metadata=MetadataStore(es_server.uri, timeout_s=10))
        asyncio.run(only.upsert(points(ids[:1], home, "only", 3)))  # a move: its own per-point locks order it
        assert locks == [] and every_shard_once(asyncio.run(every_replica(only)), ids[:1]) == [0]
    finally:
        for sq in seqs:
            sq.host.journal.close()
        stop_local_shards(clients, drop=True)
        store.drop_index(cfg.name)
