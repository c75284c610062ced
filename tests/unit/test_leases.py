"""The move locks several ingress replicas share on the sequencers (router.replication.leases) and the way an ingress
takes them (router.collection.locks.shared): grant, conflict, expiry by a fake clock, release by the owner only."""
import asyncio

from router.collection.locks import shared
from router.replication.leases import LeaseTable, SharedLocks
from tests.clock import FakeClock


def test_a_grant_is_all_or_nothing_and_an_owner_renews_its_own():
    table = LeaseTable(FakeClock(100.0))
    assert table.grant("a", ["p1", "p2"], 10) == []
    assert table.grant("b", ["p3", "p2"], 10) == ["p2"]        # p2 is a's: b gets nothing, not even p3
    assert table.grant("c", ["p3"], 10) == []
    assert table.grant("a", ["p1"], 10) == [] and len(table) == 3
    assert table.conflicts("b", ["p1", "p2", "p3", "p4"]) == ["p1", "p2", "p3"]


def test_a_lease_runs_out_and_its_late_owner_learns_it_lost_the_ids():
    clock = FakeClock(100.0)
    table = LeaseTable(clock)
    table.grant("a", ["p1", "p2"], 10)
    clock.advance(9.9)
    assert table.grant("b", ["p1"], 10) == ["p1"] and table.next_expiry(["p1", "p9"]) == 110.0
    clock.advance(0.1)                                         # a crashed (or is slow): its lease is over
    assert len(table) == 0 and table.next_expiry(["p1"]) is None
    assert table.grant("b", ["p1"], 10) == []
    assert table.release("a", ["p1", "p2"]) == ["p1", "p2"]    # a is told; b keeps p1
    assert table.conflicts("a", ["p1"]) == ["p1"]


def test_only_the_owner_releases():
    table = LeaseTable(FakeClock(0.0))
    table.grant("a", ["p1"], 10)
    assert table.release("b", ["p1"]) == ["p1"]                # not b's: left alone
    assert table.conflicts("b", ["p1"]) == ["p1"]
    assert table.release("a", ["p1"]) == [] and len(table) == 0
    assert table.grant("b", ["p1"], 10) == []


def test_a_waiter_is_granted_when_the_holder_releases():
    async def run():
        locks = SharedLocks()
        assert await locks.take("a", ["p1", "p2"]) == []
        assert await locks.take("b", ["p2"], wait_s=0) == ["p2"]
        assert await locks.take("b", ["p2"], wait_s=0.01) == ["p2"]  # a bounded wait ends with the blockers
        waiter = asyncio.create_task(locks.take("b", ["p2", "p3"]))
        await asyncio.sleep(0)                                  # let it start waiting (one turn of the loop)
        assert not waiter.done()
        assert await locks.release("a", ["p1", "p2"]) == []
        assert await waiter == [] and locks.table.conflicts("a", ["p2", "p3"]) == ["p2", "p3"]
    asyncio.run(run())


class Host:
    """A sequencer's lock calls, counted (the in-process Sequencer answers the same)."""

    def __init__(self, locks: SharedLocks):
        self.locks, self.calls = locks, []

    async def lock(self, owner, ids, lease_s, wait_s):
        self.calls.append(("lock", sorted(ids), wait_s > 0))
        return await self.locks.take(owner, ids, lease_s, wait_s)

    async def unlock(self, owner, ids):
        self.calls.append(("unlock", sorted(ids)))
        return await self.locks.release(owner, ids)


def test_shared_asks_each_ring_shard_once_and_in_order_when_contended():
    async def run():
        hosts = [Host(SharedLocks()), Host(SharedLocks())]
        ring = {"a": 0, "b": 1, "c": 1}.__getitem__
        async with shared(hosts, ring, ["c", "a", "b"]):
            assert hosts[0].locks.table.conflicts("x", ["a"]) == ["a"]
            assert hosts[1].locks.table.conflicts("x", ["b", "c"]) == ["b", "c"]
        assert [len(h.locks.table) for h in hosts] == [0, 0]
        assert hosts[1].calls == [("lock", ["b", "c"], False), ("unlock", ["b", "c"])]
        await hosts[1].locks.take("other", ["b"])               # another ingress holds b
        for h in hosts:
            h.calls.clear()
        entered = asyncio.Event()

        async def second():
            async with shared(hosts, ring, ["a", "b"]):
                entered.set()
        task = asyncio.create_task(second())
        while len(hosts[1].calls) < 2:                          # tried both at once, gave a back, took a, waits for b
            await asyncio.sleep(0)
        assert not entered.is_set()
        await hosts[1].locks.release("other", ["b"])
        await task
        assert hosts[0].calls == [("lock", ["a"], False), ("unlock", ["a"]), ("lock", ["a"], True), ("unlock", ["a"])]
        assert hosts[1].calls == [("lock", ["b"], False), ("lock", ["b"], True), ("unlock", ["b"])]
        async with shared([None, None], ring, ["a"]):           # no sequencers (in process): nothing asked
            pass
    asyncio.run(run())


def test_shared_asks_again_after_a_bounded_wait_ends_unanswered():
    class Busy(Host):  # its waits end with the id still held elsewhere, twice
        async def lock(self, owner, ids, lease_s, wait_s):
            self.calls.append(("lock", sorted(ids), wait_s > 0))
            return ["a"] if len(self.calls) <= 3 else await self.locks.take(owner, ids, lease_s, wait_s)

    async def run():
        host = Busy(SharedLocks())
        async with shared([host], lambda pid: 0, ["a"]):
            assert host.locks.table.conflicts("x", ["a"]) == ["a"]
        assert host.calls == [("lock", ["a"], False), ("lock", ["a"], True), ("lock", ["a"], True),
                              ("lock", ["a"], True), ("unlock", ["a"])]
    asyncio.run(run())
