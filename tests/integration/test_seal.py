"""A lite shard seals its growing segments (shards.seal): the writer past seal_rows, the first search after the
writes went quiet (a fake clock), and a failed flush fails neither; searches answer the same before and after."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from shards.api import PointRow, SearchSpec
from shards.local import replica_specs
from shards.seal import SealPolicy
from shards.shard import Shard
from tests.clock import FakeClock

DIM = 16
# FLAT: exact before and after the seal, so any difference in the answers is the seal's doing.
CFG = CollectionConfig(name="seal", shards=1, spaces={"a": {"dim": DIM, "index": {"type": "FLAT"}},
                                                      "b": {"dim": DIM, "index": {"type": "FLAT"}}})
X = np.random.default_rng(7).standard_normal((300, DIM)).astype(np.float32)
POINTS = [PointRow(id=f"p{i:03d}", payload={"i": i}, vectors={"a": X[i].tolist(), "b": X[-1 - i].tolist()})
          for i in range(len(X))]
QUERIES = X[:5] + 0.01


class CountedFlush:
    """The shard's real backend flush, counted per collection; `fail` makes the next calls raise instead."""

    def __init__(self, shard: Shard):
        self.real, self.names = shard.backend.flush, {v: k for k, v in shard.names.items()}
        self.calls: list[str] = []
        self.fail = 0
        shard.backend.flush = self

    def __call__(self, name: str) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("flush refused (test)")
        self.calls.append(self.names[name])
        self.real(name)


@pytest.fixture
def shard(tmp_path):
    clock = FakeClock(1000.0)
    spec = replica_specs(CFG, MilvusConfig(mode="lite"), tmp_path)[0][0]
    s = Shard(CFG, 0, 0, spec, clock=clock)
    s.create()
    s.clock = clock
    s.flushes = CountedFlush(s)
    yield s
    s.drop()


def answers(shard: Shard, space: str) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.score) for h in hits]
            for hits in shard.search_many([SearchSpec(space, q.tolist(), 10) for q in QUERIES])]


def same(x, y) -> bool:
    return [[i for i, _ in q] for q in x] == [[i for i, _ in q] for q in y] and \
        np.allclose([[s for _, s in q] for q in x], [[s for _, s in q] for q in y], atol=1e-5)


def test_the_writer_past_seal_rows_seals_and_answers_stay_the_same(shard):
    shard.sealer.policy = SealPolicy(seal_rows=200, idle_s=2.0)
    shard.upsert(POINTS[:150])
    before = answers(shard, "a"), answers(shard, "b")
    assert shard.flushes.calls == [] and shard.sealer.pending() == {"a": 150, "b": 150}
    shard.upsert(POINTS[100:150])  # the same 50 points again: 200 rows written, the same content
    assert sorted(shard.flushes.calls) == ["a", "b"] and shard.sealer.pending() == {"a": 0, "b": 0}
    assert same(answers(shard, "a"), before[0]) and same(answers(shard, "b"), before[1])
    shard.delete(["p000"])  # deletes count too, and are seen after a seal
    assert shard.sealer.pending() == {"a": 1, "b": 1} and "p000" not in {i for q in answers(shard, "a") for i, _ in q}


def test_the_first_search_after_quiet_seals_its_space_once(shard):
    shard.upsert(POINTS)
    before = answers(shard, "a")
    shard.clock.advance(1.9)
    assert same(answers(shard, "a"), before) and shard.flushes.calls == []
    shard.clock.advance(0.1)
    assert same(answers(shard, "a"), before) and shard.flushes.calls == ["a"]  # "b" is not searched: not sealed
    shard.clock.advance(60)
    assert same(answers(shard, "a"), before) and shard.flushes.calls == ["a"]
    answers(shard, "b")
    assert shard.flushes.calls == ["a", "b"] and shard.sealer.pending() == {"a": 0, "b": 0}


def test_a_failed_flush_fails_neither_the_write_nor_the_search(shard, caplog):
    shard.sealer.policy = SealPolicy(seal_rows=100, idle_s=2.0)
    shard.flushes.fail = 2
    assert shard.upsert(POINTS[:100]) == 100  # both spaces' seals refused
    assert "flush refused (test)" in caplog.text and shard.flushes.calls == []
    before = answers(shard, "a")
    assert [q[0][0] for q in before] == [f"p{i:03d}" for i in range(5)]
    shard.clock.advance(2.0)
    assert same(answers(shard, "a"), before) and shard.flushes.calls == ["a"]  # tried again by the next trigger
