import pytest

from cluster.errors import ConfigError
from router.replication.replicas import FAIL_THRESHOLD, ReplicaSet, quorum
from tests.clock import FakeClock


def make(n=3, **kw):
    clock = FakeClock(100.0)
    return ReplicaSet(0, n, key="c/0", clock=clock, **kw), clock


def test_quorum_settings():
    assert quorum("all", 3) == 3
    assert [quorum("majority", n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert quorum(1, 3) == 1
    for bad in (0, 4, True, "most"):
        with pytest.raises(ConfigError):
            quorum(bad, 3)


def test_sticky_reads_keep_the_stable_ring_preference():
    a, _ = make(read_replicas="sticky")
    b, _ = make(read_replicas="sticky")
    assert a.read_order() == b.read_order() == a.preference
    assert sorted(a.preference) == [0, 1, 2]
    others = {tuple(ReplicaSet(s, 3).preference) for s in range(20)}
    assert len(others) > 1  # different shards prefer different first replicas: load spreads


def test_failures_demote_then_kill_and_probe_timing():
    rs, clock = make(read_replicas="sticky")  # one preferred replica: its demotion and return are visible
    first = rs.read_order()[0]
    rs.on_failure(first, "timeout")
    assert rs.read_order()[0] == first  # one failure is not death
    for _ in range(FAIL_THRESHOLD - 1):
        rs.on_failure(first, "timeout")
    assert rs.read_order()[-1] == first and not rs.states[first].healthy  # dead: last resort only
    assert rs.needs_healing() == []  # probe not due yet
    clock.advance(1.5)
    assert rs.needs_healing() == [first]
    rs.on_success(first, 0.01)
    assert rs.read_order()[0] == first and rs.states[first].failures == 0


def test_fatal_failure_is_dead_at_once():
    rs, _ = make()
    rs.on_failure(1, "actor died", fatal=True)
    assert not rs.states[1].healthy
    assert 1 not in rs.write_targets()


def test_stale_replicas_neither_read_nor_written_until_caught_up():
    rs, clock = make()
    seq = rs.next_seq()
    assert sorted(rs.read_order()) == [0, 1, 2]  # a write in flight blocks no reader
    rs.applied(0, seq)
    rs.applied(2, seq)  # replica 1 missed it
    rs.commit(seq)
    assert 1 not in rs.read_order() and 1 not in rs.write_targets()
    assert rs.states[1].state(rs.seq) == "stale"
    assert 1 in rs.needs_healing()
    rs.applied(1, seq)
    assert 1 in rs.read_order() and rs.states[1].state(rs.seq) == "live"


def test_slow_replica_is_demoted_by_latency_ewma():
    rs, _ = make()
    fast, slow = rs.preference[1], rs.preference[0]
    for _ in range(10):
        rs.on_success(slow, 0.200)
        rs.on_success(fast, 0.010)
    assert rs.read_order().index(fast) < rs.read_order().index(slow)


def test_describe():
    rs, _ = make(2)
    rs.next_seq()
    rs.applied(0, 1)
    rs.commit(1)
    d = rs.replica_report()
    assert d[0]["state"] == "live" and d[1]["state"] == "stale" and d[0]["committed_seq"] == 1


def test_an_unacknowledged_write_leaves_replicas_readable_but_heals_them():
    rs, _ = make(3)
    seq = rs.next_seq()
    rs.applied(0, seq)  # only one replica applied it; quorum missed, no commit
    assert sorted(rs.read_order()) == [0, 1, 2]
    assert sorted(rs.needs_healing()) == [1, 2]  # they still get it by replay, so replicas converge


def test_describe_keeps_the_last_fault_after_recovery_and_reports_lag():
    clock = FakeClock(100.0)
    rs = ReplicaSet(0, 2, clock=clock)
    seq = rs.next_seq()
    rs.applied(0, seq)
    rs.commit(seq)
    rs.on_failure(1, "replica 1: Milvus at http://m:19530 is unreachable")
    clock.advance(7.0)
    rs.on_success(1)
    d = {x["replica"]: x for x in rs.replica_report()}
    assert (d[0]["lag"], d[1]["lag"]) == (0, 1)  # replica 1 missed write 1
    assert d[1]["last_error"] == "" and d[1]["faults"] == 1
    assert d[1]["last_fault"] == "replica 1: Milvus at http://m:19530 is unreachable"
    assert d[1]["last_fault_s_ago"] == 7.0
    assert d[0]["last_fault"] == "" and d[0]["last_fault_s_ago"] is None and d[0]["faults"] == 0
