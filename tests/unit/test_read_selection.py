"""Replica selection for reads: the pure policy (router.replication.selection), the readable rules around it
(ReplicaSet.read_order), and the outstanding counts the read path keeps (router.replication.reads)."""
import asyncio
import random
from collections import Counter

import pytest

from cluster.config import BatchSettings, ClusterConfig
from cluster.errors import ConfigError
from router.replication.replica_set import ReplicaSet
from router.replication.replicas import ReplicatedShard
from router.replication.selection import Load, spread
from shards.api import ScoredId, SearchSpec
from tests.clock import FakeClock

PICKS = 3000


def firsts(candidates, loads, seed=7, n=PICKS):
    rng = random.Random(seed)
    return Counter(spread(candidates, loads, rng)[0] for _ in range(n))


def test_equal_load_spreads_about_evenly():
    got = firsts([0, 1, 2], [Load(0, 5.0)] * 3)
    assert set(got) == {0, 1, 2}
    assert all(abs(c - PICKS / 3) < 0.1 * PICKS / 3 for c in got.values()), got
    two = firsts([1, 0], [Load(2, 4.0)] * 2)
    assert abs(two[0] - PICKS / 2) < 0.1 * PICKS / 2, two


def test_a_slow_or_busy_replica_is_avoided():
    assert firsts([0, 1, 2], [Load(0, 50.0), Load(0, 5.0), Load(0, 5.0)])[0] == 0   # high EWMA: never chosen
    assert firsts([0, 1, 2], [Load(0, 5.0), Load(9, 5.0), Load(0, 5.0)])[1] == 0    # many outstanding
    assert firsts([0, 1], [Load(0, 10.0), Load(3, 5.0)])[0] == PICKS   # idle but 2x slower beats 4x busier
    assert firsts([0, 1], [Load(0, 5.0), Load(0, None)])[1] > PICKS / 3  # no latency yet: tried as the best


def test_the_order_is_the_failover_order_chosen_first_then_by_score():
    rng = random.Random(1)
    orders = Counter(tuple(spread([0, 1, 2], [Load(0, 30.0), Load(0, 5.0), Load(0, 10.0)], rng)) for _ in range(300))
    assert set(orders) == {(1, 2, 0), (2, 1, 0)}  # 2 wins when drawn with 0; the others follow by score
    assert orders[(1, 2, 0)] > orders[(2, 1, 0)]
    assert spread([4], [Load(0, 1.0)], random.Random(1)) == [4] and spread([], [], random.Random(1)) == []


def test_the_same_seed_makes_the_same_choices():
    loads = [Load(0, 5.0)] * 3
    a, b = random.Random(3), random.Random(3)
    assert [spread([0, 1, 2], loads, a) for _ in range(50)] == [spread([0, 1, 2], loads, b) for _ in range(50)]


def replica_set(n=3, **kw):
    return ReplicaSet(0, n, key="c/0", clock=FakeClock(100.0), rng=random.Random(11), **kw)


def test_never_an_unreadable_unhealthy_or_unverified_replica_first():
    rs = replica_set(4)
    seq = rs.next_seq()
    for r in (0, 1, 3):
        rs.applied(r, seq)
    rs.commit(seq)                       # replica 2 missed an acknowledged write: unreadable
    rs.on_failure(1, "gone", fatal=True)  # replica 1 is dead (readable: a last resort)
    rs.states[3].agreement = "verifying"  # replica 3 restarted, not compared yet
    orders = [rs.read_order() for _ in range(200)]
    assert all(o == [0, 3, 1] for o in orders)
    rs.states[3].agreement = ""
    got = Counter(rs.read_order()[0] for _ in range(PICKS))
    assert set(got) == {0, 3} and abs(got[0] - PICKS / 2) < 0.1 * PICKS / 2
    assert all(rs.read_order()[-1] == 1 and 2 not in rs.read_order() for _ in range(50))


def test_read_order_weighs_outstanding_and_ewma():
    rs = replica_set(2)
    rs.on_success(0, 0.005)
    rs.on_success(1, 0.005)
    rs.states[0].outstanding = 3
    assert all(rs.read_order() == [1, 0] for _ in range(50))
    rs.states[0].outstanding = 0
    for _ in range(10):
        rs.on_success(1, 0.100)          # replica 1 got slow
    assert all(rs.read_order() == [0, 1] for _ in range(50))
    assert rs.read_order(prefer=1) == [1, 0]  # a batch formed for replica 1 still goes there


def test_sticky_is_the_old_stable_order_whatever_the_load():
    rs = replica_set(3, read_replicas="sticky")
    for r in range(3):
        rs.states[r].outstanding = 10 if r == rs.preference[0] else 0
    assert all(rs.read_order() == rs.preference for _ in range(50))
    assert rs.read_order(prefer=rs.preference[2]) == rs.preference


def test_policy_setting_is_checked():
    with pytest.raises(ConfigError, match="'roundrobin'"):
        replica_set(read_replicas="roundrobin")
    assert ClusterConfig().read_replicas == "spread"
    assert ClusterConfig(read_replicas="sticky").read_replicas == "sticky"
    with pytest.raises(ValueError):
        ClusterConfig(read_replicas="random")


class Held:
    """A replica whose searches wait until released; counts what it was asked, from its own side."""

    def __init__(self, replica, fail=None):
        self.replica, self.fail = replica, fail
        self.release = asyncio.Event()
        self.calls, self.specs, self.waiting = 0, 0, 0

    async def search_many(self, specs):
        self.calls += 1
        self.specs += len(specs)
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        if self.fail is not None:
            raise self.fail
        return [[ScoredId(f"r{self.replica}", 1.0)] for _ in specs]


def shard(clients, batching=None, **kw):
    return ReplicatedShard(0, clients, key="t/0", clock=FakeClock(1000.0), batching=batching, hedge=False,
                           rng=random.Random(5), **kw)


SPEC = [SearchSpec("v", [1.0, 0.0], 1)]


async def until(cond):
    while not cond():
        await asyncio.sleep(0)  # a yield to the loop, not a timed wait


def test_concurrent_reads_go_to_the_replica_with_fewer_outstanding_and_nothing_leaks():
    async def scenario():
        clients = [Held(0), Held(1)]
        rs = shard(clients)
        tasks = [asyncio.ensure_future(rs.search(SPEC)) for _ in range(10)]
        await until(lambda: sum(c.waiting for c in clients) == 10)
        assert [st.outstanding for st in rs.state.states] == [5, 5]
        assert [c.calls for c in clients] == [5, 5]
        for c in clients:
            c.release.set()
        await asyncio.gather(*tasks)
        assert [st.outstanding for st in rs.state.states] == [0, 0]
    asyncio.run(scenario())


def test_an_error_or_a_cancel_leaves_no_outstanding_read():
    async def scenario():
        clients = [Held(0, fail=RuntimeError("boom")), Held(1, fail=RuntimeError("boom"))]
        rs = shard(clients)
        for c in clients:
            c.release.set()
        with pytest.raises(Exception, match="boom"):
            await rs.search(SPEC)
        assert [st.outstanding for st in rs.state.states] == [0, 0]
        held = shard([Held(0), Held(1)], batching=BatchSettings())
        task = asyncio.ensure_future(held.search(SPEC))
        await until(lambda: sum(c.waiting for c in held.clients) == 1)
        assert sum(st.outstanding for st in held.state.states) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [st.outstanding for st in held.state.states] == [0, 0]
    asyncio.run(scenario())


def test_batches_form_per_chosen_replica_and_both_replicas_serve():
    async def scenario():
        clients = [Held(0), Held(1)]
        rs = shard(clients, batching=BatchSettings())
        first = [asyncio.ensure_future(rs.search(SPEC)) for _ in range(2)]  # one call in flight per replica
        await until(lambda: sum(c.waiting for c in clients) == 2)
        rest = [asyncio.ensure_future(rs.search(SPEC)) for _ in range(20)]  # queue behind them, per replica
        await until(lambda: sum(st.outstanding for st in rs.state.states) == 22)
        for c in clients:
            c.release.set()
        answers = await asyncio.gather(*first, *rest)
        per_replica = rs._coalescers[asyncio.get_running_loop()]
        # every call of a replica's coalescer went to that replica (no failover here): a batch goes to one replica
        assert {r: (co.calls, co.requests) for r, co in per_replica.items()} == \
            {r: (clients[r].calls, clients[r].specs) for r in (0, 1)}
        return rs, clients, answers

    rs, clients, answers = asyncio.run(scenario())
    assert all(c.calls >= 2 for c in clients)            # both replicas served
    assert sum(c.calls for c in clients) < 22            # in batches
    assert sum(c.specs for c in clients) == 22
    # Each answer came from one replica; a batch went whole to the replica it formed for.
    per_replica = Counter(a[0][0].id for a in answers)
    assert per_replica == {"r0": clients[0].specs, "r1": clients[1].specs}
    assert [st.outstanding for st in rs.state.states] == [0, 0]
