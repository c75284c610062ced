"""Group commit at a shard replica (shards.group_commit), without Ray or Milvus: compatible searches grouped, hits
split back per caller, and concurrent callers' searches run as few batches as possible."""
from __future__ import annotations

import threading
import time

import pytest

from shards.api import ScoredId, SearchSpec
from shards.group_commit import GroupCommit, plan_groups, split_hits


def spec(space="v", limit=5, expr=None, params=None, consistency="bounded", x=0.0, with_payload=False):
    return SearchSpec(space, [x, 1.0], limit, expr, params, consistency, with_payload)


def hnsw(s: SearchSpec) -> dict:
    """Resolved like shards.backend.search_params for HNSW: ef = max(64, limit) unless given."""
    p = {"ef": max(64, s.limit), **(s.params or {})}
    p["ef"] = max(p["ef"], s.limit)
    return p


def test_groups_by_everything_milvus_needs_equal():
    specs = [spec(), spec(x=1), spec(expr="a"), spec(params={"ef": 128}), spec(params={"ef": 128}),
             spec(space="w"), spec(consistency="strong"), spec(with_payload=True), spec(x=2)]
    assert [g.indexes for g in plan_groups(specs, hnsw)] == [[0, 1, 8], [2], [3, 4], [5], [6], [7]]


def test_only_equal_limits_share_a_search():
    # Ties at the cut: a search at a larger limit, cut, is not what a smaller limit gets alone (shards.group_commit
    # .plan_groups), so 5 and 20 search apart even at the same ef; equal limits share one search, unless an
    # explicit ef differs.
    specs = [spec(limit=5), spec(limit=20, x=1), spec(limit=100, x=2), spec(limit=5, x=3),
             spec(limit=5, params={"ef": 200}, x=4)]
    groups = plan_groups(specs, hnsw)
    assert [(g.indexes, g.limit, g.params) for g in groups] == [
        ([0, 3], 5, {"ef": 64}), ([1], 20, {"ef": 64}), ([2], 100, {"ef": 100}), ([4], 5, {"ef": 200})]


def test_split_puts_each_hit_list_in_its_place():
    specs = [spec(limit=4), spec(limit=4, x=1)]
    (group,) = plan_groups(specs, hnsw)
    hits = [[ScoredId(f"a{i}", -i) for i in range(4)], [ScoredId(f"b{i}", -i) for i in range(4)]]
    out: list = [None, None]
    split_hits(specs, group, hits, out)
    assert out == hits
    with pytest.raises(ValueError):
        split_hits(specs, group, hits[:1], out)


def wait_until(cond, within_s=5.0):
    """Poll a condition with a deadline (threads have no event to wait on here)."""
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)  # poll: the condition, within its deadline


class Store:
    """A replica's store: answers each spec from its vector; the first run can be held until released."""

    def __init__(self, fail_when=None):
        self.runs: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_when = fail_when

    def run(self, specs):
        self.runs.append(len(specs))
        self.entered.set()
        self.release.wait(5)
        if self.fail_when and self.fail_when(specs):
            raise self.fail_when(specs)
        return [[ScoredId(f"id{s.vector[0]:g}", s.vector[0])] for s in specs]


def submit_all(gc: GroupCommit, store: Store, requests: list[list[SearchSpec]]):
    """Submit the first request, and the rest while its run is in flight; returns each one's answer or error."""
    out: list = [None] * len(requests)

    def call(i):
        try:
            out[i] = gc.submit(requests[i])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    assert store.entered.wait(5)
    for t in threads[1:]:
        t.start()
    wait_until(lambda: gc.requests == len(requests))
    store.release.set()
    for t in threads:
        t.join(5)
    return out


def test_a_lone_call_runs_at_once():
    store = Store()
    store.release.set()
    gc = GroupCommit(store.run)
    assert gc.submit([spec(x=3)]) == [[ScoredId("id3", 3.0)]]
    assert store.runs == [1] and gc.batches == 1


def test_calls_arriving_during_a_run_share_the_next_one_and_get_their_own_answers():
    store = Store()
    gc = GroupCommit(store.run, max_vectors=64)
    reqs = [[spec(x=i), spec(x=i + 0.5)] for i in range(10)]
    answers = submit_all(gc, store, reqs)
    for i, a in enumerate(answers):
        assert a == [[ScoredId(f"id{i:g}", float(i))], [ScoredId(f"id{i + 0.5:g}", i + 0.5)]]
    assert store.runs == [2, 18] and gc.batches == 2 and gc.requests == 10


def test_a_batch_holds_at_most_max_vectors():
    store = Store()
    gc = GroupCommit(store.run, max_vectors=8)
    answers = submit_all(gc, store, [[spec(x=i), spec(x=-i - 1)] for i in range(13)])
    assert all(a == [[ScoredId(f"id{i:g}", float(i))], [ScoredId(f"id{-i - 1:g}", -i - 1.0)]]
               for i, a in enumerate(answers))
    assert store.runs[0] == 2 and max(store.runs) <= 8 and sum(store.runs) == 26 and len(store.runs) == 1 + 3


def test_a_call_that_fails_its_batch_fails_alone():
    store = Store(fail_when=lambda specs: ValueError("bad vector") if any(s.vector[0] == 5 for s in specs) else None)
    gc = GroupCommit(store.run)
    answers = submit_all(gc, store, [[spec(x=i)] for i in range(12)])
    assert isinstance(answers[5], ValueError)
    assert all(a == [[ScoredId(f"id{i:g}", float(i))]] for i, a in enumerate(answers) if i != 5)
    assert len(store.runs) <= 2 + 2 * 4  # the batch, then halves down to the bad call


def test_a_store_that_is_down_is_not_asked_again_per_call():
    store = Store(fail_when=lambda specs: ConnectionError("down"))
    gc = GroupCommit(store.run, isolatable=lambda exc: not isinstance(exc, ConnectionError))
    answers = submit_all(gc, store, [[spec(x=i)] for i in range(6)])
    assert all(isinstance(a, ConnectionError) for a in answers) and store.runs == [1, 5]
