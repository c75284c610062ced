"""The chaos benchmark's closing comparison (deploy/chaos_checks.py) over in-memory replicas: it must never report
replicas as equal (diverged_ids 0) without having compared them."""
import asyncio
from types import SimpleNamespace

from deploy.chaos_checks import final_check
from router.replication.replicas import ReplicatedShard
from shards.api import PointRow
from tests.clock import FakeClock
from tests.unit.test_replicated_shard import MemShard, row


def coord_over(rs):
    return SimpleNamespace(shards=[rs], shard_of=lambda i: 0, replica_states=lambda: [rs.replica_report()])


def test_a_replica_that_does_not_answer_its_digest_is_not_counted_as_equal():
    clients = [MemShard(0, r) for r in range(2)]
    rs = ReplicatedShard(0, clients, key="t/0", clock=FakeClock(1000.0))
    asyncio.run(rs.upsert([row(i) for i in range(5)]))
    clients[1].points["p2"] = PointRow(id="p2", payload={"i": "changed behind prism's back"}, vectors={"v": [2.0, 0.0]})
    assert asyncio.run(final_check(coord_over(rs), ["p0"]))["diverged_ids"] == 1

    async def no_digest(rescan_after_s=None):
        raise TimeoutError("digest: no answer")

    clients[0].digest = no_digest  # the first replica (the reference) cannot be compared; its reads still answer
    checked = asyncio.run(final_check(coord_over(rs), ["p0"]))
    assert checked["diverged_ids"] is None and checked["replicas_not_compared"] == 2, checked  # nothing compared
