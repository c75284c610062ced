"""Micro-batching policy and the coalescer, over an in-memory shard: fewer calls, identical answers."""
import asyncio

from router.replication.batching import Coalescer, take
from shards.api import ScoredId, SearchSpec


def spec(space="v", limit=5, expr=None, params=None, consistency="bounded", x=0.0):
    return SearchSpec(space, [x, 1.0], limit, expr, params, consistency)


def test_take_fills_up_to_the_bound_and_never_starves():
    assert take([2, 2, 2], 5) == 2
    assert take([9, 1], 5) == 1  # too large alone: still goes, alone
    assert take([1] * 10, 64) == 10
    assert take([], 5) == 0


class Shard:
    """Answers each spec with a score derived from its vector; records every call."""

    def __init__(self, fail=None):
        self.calls: list[int] = []
        self.fail = fail
        self.gate = asyncio.Event()

    async def search_many(self, specs):
        self.calls.append(len(specs))
        await self.gate.wait()
        if self.fail:
            raise self.fail
        return [[ScoredId(f"id{s.vector[0]:g}", s.vector[0])] for s in specs]


def test_concurrent_requests_share_calls_and_get_their_own_answers():
    async def scenario():
        shard = Shard()
        co = Coalescer(shard.search_many, max_specs=64)
        tasks = [asyncio.create_task(co.submit([spec(x=i), spec(x=i + 0.5)])) for i in range(10)]
        await asyncio.sleep(0)  # poll: let every submit queue behind the first call
        shard.gate.set()
        return shard, co, await asyncio.gather(*tasks)

    shard, co, answers = asyncio.run(scenario())
    for i, a in enumerate(answers):
        assert a == [[ScoredId(f"id{i:g}", float(i))], [ScoredId(f"id{i + 0.5:g}", i + 0.5)]]
    assert co.requests == 10 and co.calls == len(shard.calls) < 10 and sum(shard.calls) == 20


def test_a_lone_request_is_sent_at_once_and_errors_reach_every_caller():
    async def lone():
        shard = Shard()
        shard.gate.set()
        co = Coalescer(shard.search_many)
        return await co.submit([spec(x=3)]), shard.calls

    assert asyncio.run(lone()) == ([[ScoredId("id3", 3.0)]], [1])

    async def failing():
        shard = Shard(fail=RuntimeError("shard down"))
        co = Coalescer(shard.search_many)
        tasks = [asyncio.create_task(co.submit([spec(x=i)])) for i in range(3)]
        await asyncio.sleep(0)  # poll: queue them all
        shard.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(failing()))


def test_the_window_waits_through_the_injected_pause():
    slept = []

    async def fake_pause(s):
        slept.append(s)

    async def scenario():
        shard = Shard()
        shard.gate.set()
        co = Coalescer(shard.search_many, window_s=0.002, sleep=fake_pause)
        return await co.submit([spec(x=1)])

    assert asyncio.run(scenario()) == [[ScoredId("id1", 1.0)]] and slept == [0.002]


def test_a_request_that_fails_its_batch_fails_alone():
    """A search one request makes the shard refuse (a bad value) fails that request only: the coalescer splits a
    failed batch and sends the halves again, so its batch-mates get their answers."""
    class Picky:
        def __init__(self):
            self.calls: list[int] = []

        async def search_many(self, specs):
            self.calls.append(len(specs))
            await asyncio.sleep(0)  # poll: let the other submits queue behind this call
            if any(s.vector[0] < 0 for s in specs):
                raise ValueError("the shard cannot encode this search")
            return [[ScoredId(f"id{s.vector[0]:g}", s.vector[0])] for s in specs]

    async def scenario():
        shard = Picky()
        co = Coalescer(shard.search_many, max_specs=64)
        first = asyncio.create_task(co.submit([spec(x=100)]))
        await asyncio.sleep(0)  # poll: the first call is in flight; the rest queue into one batch
        tasks = [asyncio.create_task(co.submit([spec(x=-1.0 if i == 5 else float(i))])) for i in range(12)]
        return shard, await first, await asyncio.gather(*tasks, return_exceptions=True)

    shard, _, answers = asyncio.run(scenario())
    assert isinstance(answers[5], ValueError)
    assert all(a == [[ScoredId(f"id{i:g}", float(i))]] for i, a in enumerate(answers) if i != 5), answers
    assert len(shard.calls) <= 2 + 2 * 4  # the batch, then halves down to the bad one: O(log n) calls


def test_a_shard_that_is_down_is_not_asked_again_per_request():
    from cluster.errors import ShardUnavailable

    async def scenario():
        shard = Shard(fail=ShardUnavailable("shard 0 unavailable: no replica answered", shards=[0], cause="timeout"))
        co = Coalescer(shard.search_many)
        tasks = [asyncio.create_task(co.submit([spec(x=i)])) for i in range(6)]
        await asyncio.sleep(0)  # poll: queue them all
        shard.gate.set()
        return shard, await asyncio.gather(*tasks, return_exceptions=True)

    shard, answers = asyncio.run(scenario())
    assert all(isinstance(a, ShardUnavailable) for a in answers) and len(shard.calls) <= 2
