"""Races between two ingress replicas on a key-routed collection (issue 28, adversarial): a delete or a delete by
filter racing a move of the same id, two updates of one id at once (one changes the key, one the payload only), a
batch naming one id twice, an ingress cut off mid-move whose lease then runs out, a key change that stays on its
shard, ids with odd characters. After each, every replica of every shard is compared with the others and with
Elasticsearch: an id Elasticsearch holds lives on exactly one shard, the one its document names first, with the
document's payload; an id it does not hold is on no shard.

Two coordinators in one process over the same milvus-lite shards (two replicas each) and the same in-process
sequencers, with the session's noida-db (as tests/integration/test_ingress_moves.py). A move is held at a point by
a gate on one coordinator's shard call; the other's arrival at the move locks is seen by the sequencer's lock calls,
never by time."""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cluster.collection_spec import SHARD_FIELD, CollectionConfig
from cluster.config import MilvusConfig
from cluster.errors import InvalidRequest
from router.collection import placing
from router.collection.coordinator import Coordinator
from router.metadata.store import MetadataStore
from router.replication.leases import MOVE_LEASE_S, SharedLocks
from router.replication.replicas import ReplicatedShard
from router.replication.sequencer import Journal, Sequencer
from router.schema.points import Point
from shards.local import local_shards, replica_specs, stop_local_shards

SHARDS, DIM = 3, 4
ODD = ['o "q" \\ /x?#&%20', "ü ñ 漢字 🙂", "a'b\"c]}{", "sp ace+plus=eq", "-", "x" * 60]
_seed = itertools.count()


class Cluster:
    """One key-routed collection's shards, sequencers (lock calls watched, their lease clock movable) and ES."""

    def __init__(self, es_uri: str, root: Any):
        self.cfg = placing.checked(CollectionConfig(
            name="races", shards=SHARDS, replicas=2, write_quorum="all", metadata={"tenant": "keyword"},
            spaces={"v": {"dim": DIM, "index": {"type": "FLAT"}}}, routing={"method": "key", "field": "tenant"}))
        self.es_uri = es_uri
        self.store = MetadataStore(es_uri, timeout_s=10)
        self.store.ensure_index(self.cfg)
        self.clients = local_shards(self.cfg, replica_specs(self.cfg, MilvusConfig(mode="lite"), root / "milvus", None))
        self.skew = 0.0  # added to the leases' clock: a lease is made to run out without waiting for it
        self.seqs = [Sequencer(ReplicatedShard(s, row, key=f"races/{s}", write_quorum="all",
                                               journal=Journal(root / "seq" / f"s{s}")))
                     for s, row in enumerate(self.clients)]
        self.asked: list[str] = []  # every id a lock call asked for
        self.on_ask: Callable[[], None] = lambda: None
        for sq in self.seqs:
            async def watched(owner, ids, *a, _real=sq.lock, **kw):
                self.asked.extend(ids)
                self.on_ask()
                return await _real(owner, ids, *a, **kw)
            sq.lock = watched
        self.tenant = self._tenants()

    def renew_locks(self) -> None:
        """Fresh lock tables (an asyncio.Condition serves one event loop: each test runs its own)."""
        for sq in self.seqs:
            sq.locks = SharedLocks(clock=lambda: time.monotonic() + self.skew)

    def _tenants(self) -> list[list[str]]:
        """Key values owned by each shard (two per shard), shard order."""
        placement, out = placing.placement_of(self.cfg), {s: [] for s in range(SHARDS)}
        for k in range(1000):
            out[placement.shard_of("x", None, {"tenant": f"t{k}"})].append(f"t{k}")
        return [out[s][:2] for s in range(SHARDS)]

    def ingress(self) -> Coordinator:
        return Coordinator.from_clients(self.cfg, self.clients, sequencers=self.seqs,
                                        metadata=MetadataStore(self.es_uri, timeout_s=10))

    async def check(self, ids: list[str]) -> dict[str, tuple[int, dict]]:
        """Every replica of a shard alike; each id Elasticsearch holds on one shard, the one its document names
        first, with its payload; the others on none. Returns id -> (shard, payload) for those that live."""
        shards = []
        for s, row in enumerate(self.clients):
            seen = []
            for c in row:
                got = await c.get(ids)
                seen.append({pid: p.payload for pid, p in got.items()})
            assert all(x == seen[0] for x in seen), f"the replicas of shard {s} differ: {seen}"
            shards.append(seen[0])
        docs = self.store.sources(self.cfg.name, ids)
        out = {}
        for pid in ids:
            where = [s for s in range(SHARDS) if pid in shards[s]]
            if pid not in docs:
                assert where == [], f"{pid!r}: no document, yet on shards {where}"
                continue
            doc = docs[pid]
            assert len(where) == 1, f"{pid!r} on shards {where} (document: {doc})"
            assert doc.get(SHARD_FIELD, [None])[0] == where[0], f"{pid!r} on {where}, its document: {doc}"
            assert shards[where[0]][pid] == {k: v for k, v in doc.items() if k != SHARD_FIELD}, pid
            out[pid] = (where[0], shards[where[0]][pid])
        return out

    def close(self) -> None:
        for sq in self.seqs:
            sq.host.journal.close()
        stop_local_shards(self.clients, drop=True)
        self.store.drop_index(self.cfg.name)


@pytest.fixture(scope="module")
def cluster(es_server, tmp_path_factory):
    c = Cluster(es_server.uri, tmp_path_factory.mktemp("races"))
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _fresh_locks(cluster):
    cluster.renew_locks()


def pts(ids: list[str], tenant: str, by: str) -> list[Point]:
    v = np.random.default_rng(next(_seed)).standard_normal((len(ids), DIM))
    return [Point(id=pid, payload={"tenant": tenant, "by": by}, vectors={"v": v[k].tolist()})
            for k, pid in enumerate(ids)]


class Gate:
    """Holds a coordinator's shard call until `go` is set; `reached` once the call has been made."""

    def __init__(self) -> None:
        self.reached, self.go = asyncio.Event(), asyncio.Event()

    def hold(self, obj: Any, name: str) -> None:
        real = getattr(obj, name)

        async def gated(*a, **kw):
            self.reached.set()
            await self.go.wait()
            return await real(*a, **kw)
        setattr(obj, name, gated)


async def racing(cluster: Cluster, held: asyncio.Task, gate: Gate, other: Callable[[], Any], ids: list[str]):
    """`held` stopped at its gate, `other` run until it is done or asks the move locks for one of `ids` (then it
    must wait for `held`); then `held` let go, and both awaited."""
    await gate.reached.wait()
    asked = asyncio.Event()
    cluster.on_ask = lambda: asked.set() if set(ids) & set(cluster.asked) else None
    cluster.asked.clear()
    second = asyncio.ensure_future(other())
    waiting = asyncio.ensure_future(asked.wait())
    await asyncio.wait([second, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    gate.go.set()
    return await asyncio.gather(held, second)


def test_a_delete_racing_a_move_leaves_no_copy(cluster):
    ids = ["del-1", ODD[0]]
    a, b = cluster.ingress(), cluster.ingress()
    t0, t1 = cluster.tenant[0][0], cluster.tenant[1][0]

    async def go():
        await a.upsert(pts(ids, t0, "first"))
        gate = Gate()
        gate.hold(a.shards[1], "upsert")  # the move 0 -> 1: Elasticsearch written, the new copy not yet
        move = asyncio.ensure_future(a.upsert(pts(ids, t1, "moved")))
        await racing(cluster, move, gate, lambda: b.delete(ids), ids)
        assert await cluster.check(ids) == {}
    asyncio.run(go())


def test_a_delete_by_filter_racing_a_move_leaves_no_copy(cluster):
    ids = ["dbf-1", ODD[1]]
    a, b = cluster.ingress(), cluster.ingress()
    t0, t1 = cluster.tenant[0][1], cluster.tenant[2][1]

    async def go():
        await a.upsert(pts(ids, t0, "first"))
        gate = Gate()
        gate.hold(a.shards[2], "upsert")
        move = asyncio.ensure_future(a.upsert(pts(ids, t1, "moved")))
        await racing(cluster, move, gate, lambda: b.delete_by_filter({"term": {"tenant": t1}}), ids)
        assert await cluster.check(ids) == {}
    asyncio.run(go())


def test_a_key_change_and_a_payload_update_at_once_leave_one_copy(cluster):
    ids = ["upd-1", "upd-2", ODD[2], ODD[3]]
    a, b = cluster.ingress(), cluster.ingress()
    t0, t1 = cluster.tenant[0][0], cluster.tenant[1][0]

    async def go():
        for r in range(3):
            await a.upsert(pts(ids, t0, "home"))
            await asyncio.gather(a.upsert(pts(ids, t1, f"key{r}")), b.upsert(pts(ids[::-1], t0, f"payload{r}")))
            placed = await cluster.check(ids)
            assert set(placed) == set(ids)
            for pid, (s, payload) in placed.items():
                assert (s, payload) in ((1, {"tenant": t1, "by": f"key{r}"}), (0, {"tenant": t0, "by": f"payload{r}"}))
    asyncio.run(go())


def test_a_batch_naming_one_id_twice_is_refused_whole(cluster):
    a = cluster.ingress()
    t0, t1 = cluster.tenant[0][0], cluster.tenant[2][0]

    async def go():
        batch = pts(["dup-1"], t0, "one") + pts(["dup-1"], t1, "two") + pts(["dup-2"], t1, "x")
        with pytest.raises(InvalidRequest, match="twice"):
            await a.upsert(batch)
        assert await cluster.check(["dup-1", "dup-2"]) == {}
    asyncio.run(go())


def test_an_ingress_cut_off_mid_move_whose_lease_runs_out_leaves_one_copy_after_the_next_write(cluster):
    ids = ["crash-1", ODD[4]]
    a, b = cluster.ingress(), cluster.ingress()
    t0, t1, t2 = cluster.tenant[0][1], cluster.tenant[1][1], cluster.tenant[2][1]

    class Dead:
        """A's sequencers as a process that died sees them: its locks are never given back."""

        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        async def unlock(self, owner, ids):
            raise ConnectionError("the ingress died")

    async def go():
        await a.upsert(pts(ids, t0, "first"))
        for sh in a.shards:
            sh.sequencer = Dead(sh.sequencer)
        gate = Gate()
        gate.hold(a.shards[0], "delete")  # the move 0 -> 1: the new copy acknowledged, the old one not yet deleted
        move = asyncio.ensure_future(a.upsert(pts(ids, t1, "cut")))
        await gate.reached.wait()
        move.cancel()
        with pytest.raises(asyncio.CancelledError):
            await move
        assert all(len(sq.locks.table) for sq in {cluster.seqs[a.shard_of(pid)] for pid in ids})  # held on
        cluster.skew += MOVE_LEASE_S + 1  # ... until the lease runs out
        await b.upsert(pts(ids, t2, "after"))
        placed = await cluster.check(ids)
        assert placed == {pid: (2, {"tenant": t2, "by": "after"}) for pid in ids}
    asyncio.run(go())


def test_a_key_change_that_stays_on_its_shard_and_odd_ids_moving_leave_one_copy(cluster):
    ids = ["same-1", *ODD[4:]]
    a, b = cluster.ingress(), cluster.ingress()
    (s0a, s0b), (s1, _), (s2, _) = cluster.tenant

    async def go():
        await a.upsert(pts(ids, s0a, "first"))
        await b.upsert(pts(ids, s0b, "same shard"))  # another key of shard 0: no move
        assert await cluster.check(ids) == {pid: (0, {"tenant": s0b, "by": "same shard"}) for pid in ids}
        await asyncio.gather(a.upsert(pts(ids, s1, "a")), b.upsert(pts(ids[::-1], s2, "b")))
        placed = await cluster.check(ids)
        assert set(placed) == set(ids) and all(s in (1, 2) for s, _ in placed.values())
        await b.delete(ids)
        assert await cluster.check(ids) == {}
    asyncio.run(go())
