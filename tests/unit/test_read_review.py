"""Review of issue 29's read selection (pure): a replica slow once is read again once its estimate is old, a hedge
never goes to a replica that may not be read by choice, and a caller cancelled while a hedged read waits leaves no
attempt running and no load behind."""
import asyncio
import random
import time
from collections import Counter

import pytest

from router.replication.replica_set import EWMA_FORGET_S, ReplicaSet
from router.replication.replicas import ReplicatedShard
from shards.api import ScoredId, SearchSpec
from tests.clock import FakeClock

SPEC = [SearchSpec("v", [1.0, 0.0], 1)]


class Held:
    """A replica whose searches wait until released; counts what it was asked, from its own side."""

    def __init__(self, replica):
        self.replica = replica
        self.release = asyncio.Event()
        self.calls, self.waiting = 0, 0

    async def search_many(self, specs):
        self.calls += 1
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        return [[ScoredId(f"r{self.replica}", 1.0)] for _ in specs]


async def until(cond, within_s: float = 5.0):
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0)  # a yield to the loop, not a timed wait


@pytest.mark.parametrize("policy", ["spread", "sticky"])
def test_a_replica_slow_once_is_read_again_once_its_estimate_is_old(policy):
    clock = FakeClock(1000.0)
    rs = ReplicaSet(0, 2, key="t/0", clock=clock, read_replicas=policy, rng=random.Random(3))
    slow = rs.preference[0]  # sticky would read it first, were it not slow
    fast = 1 - slow
    rs.on_success(slow, 0.500)  # one GC pause
    for _ in range(5):
        rs.on_success(fast, 0.005)
    assert all(rs.read_order()[0] == fast for _ in range(100))
    clock.advance(EWMA_FORGET_S + 1)  # reads went elsewhere meanwhile: nothing refreshed its 500 ms
    rs.on_success(fast, 0.005)
    firsts = Counter(rs.read_order()[0] for _ in range(400))
    assert firsts[slow] > 0, firsts  # tried again
    rs.on_success(slow, 0.004)  # it recovered: a fresh estimate, not 0.8 x 500 ms + 0.2 x 4 ms
    assert rs.states[slow].ewma_ms == pytest.approx(4.0)
    firsts = Counter(rs.read_order()[0] for _ in range(400))
    assert firsts[slow] >= (100 if policy == "spread" else 400), firsts


def hedging_shard(clients, clock):
    rs = ReplicatedShard(0, clients, key="t/0", clock=clock, hedge=True, rng=random.Random(5))
    for r in range(len(clients)):
        for _ in range(12):
            rs.state.observe_latency(r, 1e-6)  # p95 of a microsecond: any read is hedged at once
    return rs


@pytest.mark.parametrize("unreadable", ["verifying", "diverged", "behind", "dead"])
def test_a_hedge_never_goes_to_a_replica_that_may_not_be_read_by_choice(unreadable):
    async def scenario():
        clients = [Held(0), Held(1)]
        rs = hedging_shard(clients, FakeClock(1000.0))
        st = rs.state.states[1]
        if unreadable == "dead":
            rs.state.on_failure(1, "gone", fatal=True)
        elif unreadable == "behind":  # lacks a write replica 0 applied (it missed its quorum, being replayed)
            rs.state.applied(0, rs.state.next_seq())
        else:
            st.agreement = unreadable
        task = asyncio.ensure_future(rs.search(SPEC))
        await until(lambda: clients[0].waiting == 1)
        deadline = time.monotonic() + 0.2  # the hedge would fire after ~1 us: give it ample time to show
        while time.monotonic() < deadline and clients[1].calls == 0:
            await asyncio.sleep(0.005)  # poll: the hedge must not show within the deadline
        clients[0].release.set()
        clients[1].release.set()
        got = await task
        return clients, rs, got

    clients, rs, got = asyncio.run(scenario())
    assert clients[1].calls == 0 and rs.hedged == 0
    assert got == [[ScoredId("r0", 1.0)]]


def test_hedging_still_works_between_two_agreeing_replicas():
    async def scenario():
        clients = [Held(0), Held(1)]
        rs = hedging_shard(clients, FakeClock(1000.0))
        task = asyncio.ensure_future(rs.search(SPEC))
        await until(lambda: clients[0].calls + clients[1].calls == 2)  # the first, then its hedge
        for c in clients:
            if c.calls:
                c.release.set()
                break
        got = await task
        await until(lambda: sum(c.waiting for c in clients) == 0)  # the loser was cancelled
        return rs, got

    rs, got = asyncio.run(scenario())
    assert rs.hedged == 1 and len(got) == 1
    assert [st.outstanding for st in rs.state.states] == [0, 0]


def test_a_caller_cancelled_before_its_hedge_fires_leaves_no_attempt_nor_load():
    async def scenario():
        clients = [Held(0), Held(1)]
        rs = ReplicatedShard(0, clients, key="t/0", clock=FakeClock(1000.0), hedge=True, rng=random.Random(5))
        for r in (0, 1):
            for _ in range(12):
                rs.state.observe_latency(r, 30.0)  # p95 of 30 s: the hedge is far off
        task = asyncio.ensure_future(rs.search(SPEC))
        await until(lambda: sum(c.waiting for c in clients) == 1)
        assert sum(st.outstanding for st in rs.state.states) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(5):
            await asyncio.sleep(0)  # let the cancelled attempt unwind (its finally)
        # checked inside the loop: asyncio.run cancels whatever is left when it returns
        assert [c.waiting for c in clients] == [0, 0]  # nothing still asking the replica
        assert [st.outstanding for st in rs.state.states] == [0, 0]

    asyncio.run(scenario())
