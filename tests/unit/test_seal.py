"""When a shard seals its growing segments (shards.seal): the policy, and the Sealer's bookkeeping, on a fake clock."""
from __future__ import annotations

import logging
import threading

import pytest

from shards.seal import SealPolicy, Sealer, SpaceWrites, due, seal_policy
from tests.clock import FakeClock

POLICY = SealPolicy(seal_rows=100, idle_s=2.0)


def test_due_at_the_row_threshold_only_from_it_on():
    assert due({"a": SpaceWrites(rows=99, last_write=10.0)}, 10.0, POLICY) == []
    assert due({"a": SpaceWrites(rows=100, last_write=10.0)}, 10.0, POLICY) == ["a"]
    assert due({"a": SpaceWrites(rows=5_000, last_write=10.0)}, 10.0, POLICY) == ["a"]


def test_due_once_writes_have_been_quiet_for_idle_s():
    w = {"a": SpaceWrites(rows=1, last_write=10.0)}
    assert due(w, 11.999, POLICY) == []
    assert due(w, 12.0, POLICY) == ["a"]


def test_nothing_to_seal_is_never_due():
    assert due({"a": SpaceWrites(rows=0, last_write=0.0)}, 1e9, POLICY) == []
    assert due({}, 1e9, POLICY) == []


def test_spaces_are_due_independently():
    spaces = {"quiet": SpaceWrites(rows=3, last_write=0.0), "busy": SpaceWrites(rows=3, last_write=9.5),
              "full": SpaceWrites(rows=100, last_write=9.9), "clean": SpaceWrites(rows=0, last_write=0.0)}
    assert sorted(due(spaces, 10.0, POLICY)) == ["full", "quiet"]


def test_a_space_being_sealed_or_after_a_failure_waits():
    assert due({"a": SpaceWrites(rows=500, last_write=0.0, sealing=True)}, 10.0, POLICY) == []
    failed = {"a": SpaceWrites(rows=500, last_write=0.0, not_before=12.0)}
    assert due(failed, 11.0, POLICY) == [] and due(failed, 12.0, POLICY) == ["a"]


def test_only_lite_has_a_policy():
    assert seal_policy("lite") == SealPolicy() and seal_policy("server") is None


class Flushes:
    def __init__(self, fail: bool = False):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, space: str) -> None:
        self.calls.append(space)
        if self.fail:
            raise RuntimeError("milvus said no")


def test_sealer_seals_at_the_threshold_and_when_idle_once_each():
    clock, flush = FakeClock(100.0), Flushes()
    s = Sealer(["a", "b"], POLICY, flush, clock)
    s.wrote("a", 60)
    assert s.seal(["a", "b"]) == []
    s.wrote("a", 40)
    s.wrote("b", 1)
    assert s.seal(["a", "b"]) == ["a"] and flush.calls == ["a"]   # threshold: a; b is neither full nor idle
    assert s.pending() == {"a": 0, "b": 1}
    clock.advance(1.9)
    assert s.seal(["a", "b"]) == []
    clock.advance(0.1)
    assert s.seal(["a"]) == []                                    # only the spaces asked about
    assert s.seal(["b", "unknown"]) == ["b"] and flush.calls == ["a", "b"]
    clock.advance(60)
    assert s.seal(["a", "b"]) == [] and s.pending() == {"a": 0, "b": 0}  # nothing new: no flush


def test_rows_written_during_a_flush_stay_counted():
    clock = FakeClock(0.0)
    s: Sealer

    def flush(space):  # a write lands while the flush runs: it may not be in the sealed segment
        s.wrote(space, 7)

    s = Sealer(["a"], POLICY, flush, clock)
    s.wrote("a", 100)
    assert s.seal(["a"]) == ["a"]
    assert s.pending() == {"a": 7}


def test_a_failed_flush_is_logged_never_raised_and_tried_again_after_idle_s(caplog):
    clock, flush = FakeClock(0.0), Flushes(fail=True)
    s = Sealer(["a"], POLICY, flush, clock)
    s.wrote("a", 150)
    with caplog.at_level(logging.WARNING, logger="shards.seal"):
        assert s.seal(["a"]) == []
    assert "milvus said no" in caplog.text and s.pending() == {"a": 150}
    clock.advance(1.0)
    assert s.seal(["a"]) == [] and flush.calls == ["a"]             # no retry on every call
    clock.advance(1.0)
    flush.fail = False
    assert s.seal(["a"]) == ["a"] and flush.calls == ["a", "a"] and s.pending() == {"a": 0}


def test_one_caller_seals_while_the_others_go_on():
    entered, release = threading.Event(), threading.Event()
    calls = []

    def flush(space):
        calls.append(space)
        entered.set()
        assert release.wait(10)

    s = Sealer(["a"], POLICY, flush, FakeClock(0.0))
    s.wrote("a", 100)
    t = threading.Thread(target=s.seal, args=(["a"],))
    t.start()
    assert entered.wait(10)
    assert s.seal(["a"]) == []        # not blocked and not a second flush
    release.set()
    t.join(10)
    assert calls == ["a"] and s.pending() == {"a": 0}


def test_without_a_policy_nothing_is_counted_or_sealed():
    flush = Flushes()
    s = Sealer(["a"], None, flush, FakeClock(0.0))
    s.wrote("a", 10**6)
    assert s.seal(["a"]) == [] and flush.calls == [] and s.pending() == {"a": 0}


@pytest.mark.parametrize("rows", [0, -3])
def test_empty_writes_do_not_count(rows):
    s = Sealer(["a"], POLICY, Flushes(), FakeClock(0.0))
    s.wrote("a", rows)
    assert s.pending() == {"a": 0}
