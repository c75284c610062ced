"""A shard's sequencer and its journal, over in-memory replicas: durable ordering, restarts, several ingress copies.

No Ray, no Milvus: the sequencer here is `Sequencer` (the Ray actor is the same class over replica actors).
"""
import asyncio
import random

import pytest

from cluster.errors import InvalidRequest, ShardUnavailable
from router.replication.replicas import SEQUENCER_POLL_S, ReplicatedShard
from router.replication.sequencer import Journal, Sequencer
from shards.api import PointRow
from tests.clock import FakeClock
from tests.unit.test_replicated_shard import MemShard, row


def run(coro):
    return asyncio.run(coro)


def host(path, clients, max_ops=20_000, quorum="majority"):
    return ReplicatedShard(0, clients, key="t/0", write_quorum=quorum, clock=FakeClock(1000.0),
                           journal=Journal(path, max_ops=max_ops))


def ingress(clients, sequencer):
    copy = ReplicatedShard(0, clients, key="t/0", clock=FakeClock(1000.0), sequencer=sequencer)
    copy.adopt(sequencer.initial)
    return copy


def test_the_journal_restores_sequence_log_and_what_each_replica_applied(tmp_path):
    clients = [MemShard(0, r) for r in range(3)]
    seq = host(tmp_path, clients)
    run(seq.upsert([row(1)]))
    clients[2].fail = ConnectionError("down")
    run(seq.upsert([row(2)]))
    run(seq.delete(["p1"]))
    for c in clients:
        c.refuse = True
    with pytest.raises(InvalidRequest):  # abandoned: never replayed, its sequence number reused
        run(seq.upsert([row(9)]))
    seq.journal.close()

    again = host(tmp_path, clients)  # the sequencer restarted (an ingress restart does not even touch it)
    assert (again.view().epoch, again.view().seq, again.view().committed, again.view().applied) == (seq.journal.epoch, 3, 3, (3, 3, 1))
    assert [(op.seq, op.kind) for op in again.log] == [(1, "upsert"), (2, "upsert"), (3, "delete")]
    assert again.replica_report()[2]["state"] == "stale"
    for c in clients:
        c.refuse = False
    clients[2].fail = None
    assert run(again.heal()) == (1, 0)  # replica 2 gets writes 2 and 3 from the persisted log
    assert all(set(c.points) == {"p2"} for c in clients)
    run(again.upsert([row(4)]))
    assert again.state.seq == 4


def test_a_write_logged_before_a_crash_is_replayed_and_a_torn_last_frame_is_ignored(tmp_path):
    clients = [MemShard(0, r) for r in range(2)]
    seq = host(tmp_path, clients, quorum=1)
    run(seq.upsert([row(1)]))
    # The sequencer dies after logging write 2 and before any replica applied it, in the middle of a third frame.
    seq.journal.append(type(seq.log[0])(2, "upsert", [row(2)]), seq.log)
    seq.journal._fh.write(b"\x00\x00\x00\x00\x00\x00\x01\x00partial")
    seq.journal.close()
    again = host(tmp_path, clients, quorum=1)
    assert again.state.seq == 2 and again.state.committed == 1
    assert again.replica_report()[0]["state"] == "live"  # replicas hold every acknowledged write: still readable
    assert run(again.heal()) == (2, 0)
    assert all(set(c.points) == {"p1", "p2"} for c in clients)
    assert again.journal.frames == 2  # the torn frame is gone from the file too


def test_the_log_file_is_compacted_to_the_log_and_a_longer_outage_resyncs(tmp_path):
    clients = [MemShard(0, r) for r in range(2)]
    seq = host(tmp_path, clients, max_ops=5, quorum=1)
    clients[1].fail = ConnectionError("down")
    for i in range(12):
        run(seq.upsert([row(i)]))
    assert seq.journal.frames < 10
    seq.journal.close()
    again = host(tmp_path, clients, max_ops=5, quorum=1)
    assert [op.seq for op in again.log] == [8, 9, 10, 11, 12]
    clients[1].fail = None
    assert run(again.heal()) == (1, 0)
    assert again.resyncs == 1 and clients[1].points == clients[0].points


def test_ingress_copies_route_reads_by_the_sequencers_view(tmp_path):
    clients = [MemShard(0, r) for r in range(3)]
    sq = Sequencer(host(tmp_path, clients))
    a = ingress(clients, sq)
    clients[1].fail = ConnectionError("down")
    run(a.upsert([row(1)]))
    clients[1].fail = None
    # A second ingress, started after the write: it knows from the sequencer that replica 1 missed it.
    b = ingress(clients, Sequencer(sq.host))
    assert [st["state"] for st in b.replica_report()] == ["live", "stale", "live"]
    assert 1 not in b.state.read_order()
    assert run(b.heal()) == (1, 0)  # the sequencer replays; every copy that heals learns it
    assert [st["state"] for st in b.replica_report()] == ["live"] * 3
    assert run(a.heal()) == (0, 0) and [st["state"] for st in a.replica_report()] == ["live"] * 3


def test_two_ingress_copies_writing_the_same_ids_leave_every_replica_identical(tmp_path):
    clients = [MemShard(0, r) for r in range(3)]
    sq = Sequencer(host(tmp_path, clients))
    a, b = ingress(clients, sq), ingress(clients, sq)

    async def writer(copy, tag, seed):
        rng, acked = random.Random(seed), {}
        for k in range(40):
            i = rng.randrange(10)
            point = PointRow(id=f"p{i}", payload={"by": tag, "k": k}, vectors={"v": [float(i), 0.0]})
            await copy.upsert([point])
            acked[point.id] = point.payload
            await asyncio.sleep(0)  # let the other ingress's write interleave
        return acked

    async def both():
        return await asyncio.gather(writer(a, "a", 1), writer(b, "b", 2))

    run(both())
    final = [{i: p.payload for i, p in c.points.items()} for c in clients]
    assert final[0] == final[1] == final[2] and len(final[0]) == 10
    assert sq.host.state.seq == 80 and [op.seq for op in sq.host.log] == list(range(1, 81))
    # The last write of each id in sequence order is the value every replica holds.
    last = {}
    for op in sq.host.log:
        for p in op.args:
            last[p.id] = p.payload
    assert final[0] == last


def test_a_write_below_quorum_through_the_sequencer_says_why_and_a_new_epoch_replaces_the_view(tmp_path):
    clients = [MemShard(0, r) for r in range(2)]
    sq = Sequencer(host(tmp_path / "one", clients))
    a = ingress(clients, sq)
    run(a.upsert([row(1)]))
    clients[1].fail = ConnectionError("down")
    with pytest.raises(ShardUnavailable, match="quorum is 2"):
        run(a.upsert([row(2)]))
    # The refusal carries the sequencer's view: this copy knows at once that replica 1 is behind (issue 26: a copy
    # that learnt it only from successful writes read from the stale replica and never asked for a heal).
    assert a.state.seq == 2 and [st.applied_seq for st in a.state.states] == [2, 1]
    assert a.state.needs_healing() == [1]
    assert run(a.heal())[1] == 1 and a.state.seq == 2
    fresh = Sequencer(host(tmp_path / "two", clients))  # the journal gone: its view starts over
    a.sequencer = fresh
    clients[1].fail = None
    run(a.heal())
    assert a.epoch == fresh.host.epoch and a.state.seq == 0


def test_the_only_ingress_asks_its_sequencer_to_heal_only_when_a_replica_is_behind(tmp_path):
    clients = [MemShard(0, r) for r in range(3)]
    sq = Sequencer(host(tmp_path, clients))
    calls = []
    real_heal = sq.heal

    async def counted():
        calls.append(1)
        return await real_heal()

    sq.heal = counted
    only = ingress(clients, sq)
    only.poll_sequencer = False
    run(only.upsert([row(1)]))
    assert run(only.heal()) == (0, 0) and calls == []   # nothing behind: no call
    clients[2].fail = ConnectionError("down")
    run(only.upsert([row(2)]))
    clients[2].fail = None
    assert run(only.heal()) == (1, 0) and len(calls) == 1
    assert [st["state"] for st in only.replica_report()] == ["live"] * 3
    polling = ingress(clients, sq)                       # one of several ingress replicas: asks every pass
    run(polling.heal())
    assert len(calls) == 2


def test_the_only_ingress_heals_a_replica_that_a_refused_write_left_behind(tmp_path):
    """Issue 26's cause, without Ray: below quorum, the write is refused (503) yet applied on one replica; the
    only ingress (which asks its sequencer to heal only when its own view has a replica behind) must learn of it
    from the refusal, heal it once it is back, and leave both replicas equal."""
    clients = [MemShard(0, r) for r in range(2)]
    sq = Sequencer(host(tmp_path, clients))
    only = ingress(clients, sq)
    only.poll_sequencer = False
    run(only.upsert([row(1)]))
    clients[1].fail = ConnectionError("killed")
    for i in range(2, 6):
        with pytest.raises(ShardUnavailable):
            run(only.upsert([row(i)]))
    clients[1].fail = None  # restarted, answering again: no read failed on it, so nothing else tells the ingress
    run(only.heal())
    assert set(clients[0].points) == set(clients[1].points) == {f"p{i}" for i in range(1, 6)}
    assert [st["state"] for st in only.replica_report()] == ["live", "live"]


# -- the journal's format and bounds (issue 33: H7, "journals are pickle") -------------------------------------------
class Boom:
    """What a pickle frame could carry: loading it would run code (here: write a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_the_journal_is_data_only_and_loading_one_never_runs_code(tmp_path):
    import json
    import pickle
    import struct

    clients = [MemShard(0, r) for r in range(2)]
    seq = host(tmp_path, clients)
    run(seq.upsert([PointRow(id="a", payload={"k": [1, "x"]}, meta={"k": 1}, vectors={"v": [0.1, 0.2]})]))
    run(seq.delete(["a"]))
    seq.journal.close()
    raw = (tmp_path / "ops.log").read_bytes()
    n = struct.unpack(">Q", raw[:8])[0]
    first = json.loads(raw[8:8 + n])                       # plain JSON frames
    assert first["kind"] == "upsert" and first["args"][0]["id"] == "a"
    marker = tmp_path / "ran"
    evil = pickle.dumps(("op", 3, "upsert", [Boom(marker)]))
    with open(tmp_path / "ops.log", "ab") as fh:           # someone with write access to the data dir appends this
        fh.write(struct.pack(">Q", len(evil)) + evil)
    again = host(tmp_path, clients)
    assert not marker.exists()                             # nothing ran
    assert [(op.seq, op.kind) for op in again.log] == [(1, "upsert"), (2, "delete")]
    assert again.log[0].args[0].vectors["v"] == pytest.approx([0.1, 0.2], rel=1e-6)  # float32, as Milvus keeps it


def test_the_log_is_bounded_in_bytes_and_a_replica_behind_it_is_resynced(tmp_path):
    from router.replication.sequencer import Journal

    clients = [MemShard(0, r) for r in range(2)]
    big = lambda i: PointRow(id=f"p{i}", payload={"text": "x" * 4000}, vectors={"v": [float(i), 1.0]})  # noqa: E731
    seq = ReplicatedShard(0, clients, key="t/0", write_quorum=1, clock=FakeClock(1000.0),
                          journal=Journal(tmp_path, max_bytes=40_000))
    clients[1].fail = ConnectionError("down")
    for i in range(30):                                    # ~4 KB a write: the bound holds about 10
        run(seq.upsert([big(i)]))
    assert seq.log.bytes <= 40_000 and len(seq.log) < 12
    assert seq.journal.file_bytes <= 2 * 40_000 + 5_000    # the file is compacted past twice the bound
    seq.journal.close()
    again = ReplicatedShard(0, clients, key="t/0", write_quorum=1, clock=FakeClock(1000.0),
                            journal=Journal(tmp_path, max_bytes=40_000))
    assert again.log.bytes <= 40_000 and again.state.seq == 30
    clients[1].fail = None
    assert run(again.heal()) == (1, 0) and again.resyncs == 1  # behind the log: copied from a caught-up replica
    assert set(clients[1].points) == set(clients[0].points) and len(clients[0].points) == 30


def test_loading_a_journal_larger_than_its_bound_keeps_only_the_bound(tmp_path):
    from router.replication.oplog import LoggedOp
    from router.replication.sequencer import Journal

    j = Journal(tmp_path, max_bytes=10**9)
    clients = [MemShard(0, r) for r in range(2)]
    rs = ReplicatedShard(0, clients, key="t/0", clock=FakeClock(1000.0), journal=j)
    for i in range(1, 201):
        rs.log.append(LoggedOp(i, "upsert", [row(i)]), j.append(LoggedOp(i, "upsert", [row(i)]), rs.log))
    j.close()
    small = ReplicatedShard(0, clients, key="t/0", clock=FakeClock(1000.0), journal=Journal(tmp_path, max_bytes=2_000))
    assert 0 < len(small.log) < 50 and small.log.bytes <= 2_000
    assert [op.seq for op in small.log] == list(range(201 - len(small.log), 201))  # the newest are kept


# -- a sequencer that dies mid-write (review of issue 26) -------------------------------------------------------------
class Gated(MemShard):
    """A replica whose writes can be held (`gate`) or announce that they landed (`landed`)."""

    def __init__(self, shard, replica):
        super().__init__(shard, replica)
        self.gate: asyncio.Event | None = None
        self.landed: asyncio.Event | None = None

    async def upsert(self, points, wait=True):
        if self.gate is not None:
            await self.gate.wait()
        n = await super().upsert(points, wait)
        if self.landed is not None:
            self.landed.set()
        return n


class RestartingSequencer:
    """The ingress's handle on a sequencer actor that Ray restarts from its journal: `crash` (set during a write)
    kills the process mid-write: the write's replica calls stop where they are, the ingress gets ShardUnavailable,
    and a new Sequencer is built from the same journal, its background loop not running until someone calls it."""

    def __init__(self, path, clients):
        self.path, self.clients = path, clients
        self.current = Sequencer(host(path, clients))
        self.initial = self.current.initial
        self.crash: asyncio.Event | None = None
        self.calls = 0

    def _restart(self):
        self.current.host.journal.close()
        self.current = Sequencer(host(self.path, self.clients))

    async def write(self, kind, args, wait=True):
        self.calls += 1
        task = asyncio.ensure_future(self.current.write(kind, args, wait))
        if self.crash is None:
            return await task
        crash = asyncio.ensure_future(self.crash.wait())
        await asyncio.wait({task, crash}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            crash.cancel()
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._restart()
        raise ShardUnavailable("shard 0: its sequencer is unavailable (Ray restarts it)", shards=[0])

    async def heal(self):
        self.calls += 1
        return await self.current.heal()


def test_a_sequencer_killed_between_its_replica_sends_leaves_no_replica_different_with_no_write_after(tmp_path):
    """The sequencer dies after one replica applied a write and before the other did (and before it saved what
    they applied). Ray restarts it from its journal, but nothing calls it: its own heal loop starts on its first
    call, and the only ingress (poll_sequencer False) asks it only when its own view shows a replica behind, which
    it does not (the write's answer never came). With no further write, the replicas must still end equal, and the
    ingress must not go on showing both live while they differ."""
    clients = [Gated(0, r) for r in range(2)]
    sq = RestartingSequencer(tmp_path, clients)
    only = ingress(clients, sq)
    only.poll_sequencer = False
    run(only.upsert([row(1)]))

    async def crash_mid_write():
        sq.crash, clients[0].landed, clients[1].gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
        write = asyncio.ensure_future(only.upsert([row(2)]))
        await clients[0].landed.wait()
        sq.crash.set()
        with pytest.raises(ShardUnavailable):
            await write
        sq.crash = clients[0].landed = clients[1].gate = None

    run(crash_mid_write())
    assert "p2" in clients[0].points and "p2" not in clients[1].points   # the fault, as made
    for _ in range(2):                                                    # the ingress's heal loop; no write comes
        run(only.heal())
    assert set(clients[0].points) == set(clients[1].points) == {"p1", "p2"}, only.replica_report()
    assert [st["state"] for st in only.replica_report()] == ["live", "live"]
    asked = sq.calls
    run(only.heal())
    assert sq.calls == asked                       # nothing behind, not due: no call
    only.state.clock.advance(SEQUENCER_POLL_S)     # a sequencer restarted while idle is asked within this
    run(only.heal())
    assert sq.calls == asked + 1
