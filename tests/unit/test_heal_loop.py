"""The ingress's heal loop itself (router.replication.healing.HealLoop), run with an injected sleep: a pass that raises is
counted and followed by the next; a loop that dies is restarted and counted; only cancellation stops it."""
from __future__ import annotations

import asyncio

import pytest

from cluster.errors import ShardUnavailable
from router.replication.healing import HealLoop


class Script:
    """A heal pass that follows a script (an exception to raise or an answer to give), then stops the test by
    cancelling the task once the script is done."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        step = self.steps.pop(0)
        if not self.steps:
            asyncio.current_task().cancel()
        if isinstance(step, BaseException):
            raise step
        return step


async def no_wait(_s: float) -> None:
    await asyncio.sleep(0)


def run(loop: HealLoop) -> None:
    async def go():
        with pytest.raises(asyncio.CancelledError):
            await loop.supervise()
    asyncio.run(go())


def test_a_pass_that_raises_is_counted_and_the_next_pass_runs():
    failures = []
    heal = Script([ShardUnavailable("sequencer restarting", shards=[0]), RuntimeError("boom"),
                   {"healed": 1, "failed": 2}, {"healed": 0, "failed": 0}])
    loop = HealLoop(heal, failed=failures.append, sleep=no_wait)
    run(loop)
    assert heal.calls == 4 and loop.passes == 4
    assert loop.pass_failures == 2 and failures == [1, 1, 2]  # two failed passes, then two failed probes
    assert loop.restarts == 0


def test_a_loop_that_dies_is_restarted_and_counted():
    restarts, failed_calls = [], []

    def failed(n):  # the counter itself breaks once: the loop dies from inside its own error branch
        failed_calls.append(n)
        if len(failed_calls) == 1:
            raise NameError("describe")

    heal = Script([RuntimeError("first pass fails"), RuntimeError("again"), {"healed": 1, "failed": 0}])
    loop = HealLoop(heal, failed=failed, restarted=lambda: restarts.append(1), sleep=no_wait)
    run(loop)
    assert loop.restarts == 1 and restarts == [1]
    assert heal.calls == 3  # the restarted loop went on healing
    assert failed_calls == [1, 1]


def test_a_loop_that_returns_is_restarted_too():
    ended = []

    class Once(HealLoop):
        async def run(self):  # a loop that ends without an error, twice, then runs for real
            if len(ended) < 2:
                ended.append(1)
                return
            await super().run()

    heal = Script([{"healed": 0, "failed": 0}])
    loop = Once(heal, sleep=no_wait)
    run(loop)
    assert loop.restarts == 2 and heal.calls == 1


def test_the_ingress_module_binds_describe_once():
    """One name, one meaning: router.serving.app must not import two different `describe`s (the heal loop's killer)."""
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(__file__).resolve().parents[2] / "router/serving/app.py").read_text())
    imported = [a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert len(imported) == len(set(imported)), sorted(n for n in imported if imported.count(n) > 1)


def test_replica_agreement_and_heal_loop_metrics_are_exposed():
    from types import SimpleNamespace

    from router.serving.metrics import Metrics

    m = Metrics()
    shards = [SimpleNamespace(shard=0, mismatches=2, repairs=17, archive_status=lambda: {"held": 5, "dropped": 3}),
              SimpleNamespace(shard=1, mismatches=0, repairs=0, archive_status=lambda: None)]
    m.watch_replicas(lambda: [("c", sh) for sh in shards])
    m.heal_loop_restarts.inc()
    text = m.render().decode()
    assert 'prism_replica_digest_mismatches_total{collection="c",shard="0"} 2.0' in text
    assert 'prism_replica_repairs_total{collection="c",shard="0"} 17.0' in text
    assert 'prism_replica_repairs_total{collection="c",shard="1"} 0.0' in text
    assert 'prism_archive_held{collection="c",shard="0"} 5.0' in text  # the journal archive (router.replication.archive)
    assert 'prism_archive_dropped_total{collection="c",shard="0"} 3.0' in text
    assert 'prism_archive_held{collection="c",shard="1"}' not in text
    assert "prism_heal_loop_restarts_total 1.0" in text
