"""The benchmarks' memory-per-million slope and the million-point bench's streamed exact search (pure)."""
import numpy as np
import pytest

from deploy.bench_scale1m import ExactTop
from deploy.benchlib import gib_per_million
from deploy.datasets import gaussian_mixture_chunks


def test_fixed_memory_cancels_and_only_the_growth_counts():
    # a server of 300 MiB at rest that grows 1.5 GiB per million: 25k and 100k points
    rss = lambda points: 300 + 1.5 * 1024 * points / 1_000_000  # noqa: E731
    assert gib_per_million(25_000, rss(25_000), 100_000, rss(100_000)) == pytest.approx(1.5)
    assert gib_per_million(250_000, rss(250_000), 1_000_000, rss(1_000_000)) == pytest.approx(1.5)
    # the one-size extrapolation it replaces counted the 300 MiB twenty times over at 50k
    one_size = (rss(50_000) - 0) / 1024 / 0.05
    assert one_size > 7.0 and gib_per_million(50_000, rss(50_000), 100_000, rss(100_000)) == pytest.approx(1.5)


def test_slope_refuses_sizes_that_do_not_grow():
    with pytest.raises(ValueError, match="100000"):
        gib_per_million(100_000, 500.0, 100_000, 500.0)
    with pytest.raises(ValueError):
        gib_per_million(200_000, 500.0, 100_000, 400.0)


def test_streamed_exact_top10_equals_one_pass_over_all_points():
    chunks = list(gaussian_mixture_chunks(2_500, 32, seed=3, chunk=700))
    assert [s for s, _ in chunks] == [0, 700, 1400, 2100] and chunks[-1][1].shape == (400, 32)
    x = np.concatenate([c for _, c in chunks])
    q = x[:20] + 0.01  # queries near points, so each top 10 is clear
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    streamed = ExactTop(q)
    for start, c in chunks:
        streamed.add(start, c)
    truth = [{f"p{j}" for j in np.argsort(-(row @ x.T))[:10]} for row in q]
    assert streamed.ids() == truth


def test_chunks_are_the_same_points_on_every_run():
    a = np.concatenate([c for _, c in gaussian_mixture_chunks(1_000, 16, seed=5, chunk=300)])
    b = np.concatenate([c for _, c in gaussian_mixture_chunks(1_000, 16, seed=5, chunk=300)])
    assert np.array_equal(a, b) and a.shape == (1_000, 16)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_a_load_retries_an_unacknowledged_write_and_counts_it_and_gives_up_after_its_tries():
    import asyncio

    import pytest

    from cluster.errors import ShardUnavailable
    from deploy.bench_scale1m import upsert_retrying

    class Svc:
        def __init__(self, fails: int):
            self.fails, self.calls = fails, 0

        async def upsert(self, name, body):
            self.calls += 1
            if self.calls <= self.fails:
                raise ShardUnavailable("write to shard 2 not acknowledged", shards=[2])

    waits, heals = [], []

    async def pause(s):
        waits.append(s)

    async def recover(svc, name):
        heals.append((svc.calls, name))

    svc = Svc(2)
    assert asyncio.run(upsert_retrying(svc, "c", {"points": []}, pause=pause, recover=recover)) == 2
    assert svc.calls == 3 and waits == [2.0, 4.0] and heals == [(1, "c"), (2, "c")]  # a heal before each retry
    never, waits[:] = Svc(99), []
    with pytest.raises(ShardUnavailable):
        asyncio.run(upsert_retrying(never, "c", {"points": []}, tries=3, pause=pause, recover=recover))
    assert never.calls == 3 and waits == [2.0, 4.0]
