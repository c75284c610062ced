"""A snapshot's cut of one shard (router.replication.cut) over in-memory replicas: the copy is a keyset scan of
whole points, and the cut's reads run outside the write lock, so a write can land between taking the cut's S and
reading; the cut must still be the shard exactly as it stood at its seq."""
import asyncio

from router.replication import cut as cutting
from router.replication.replicas import ReplicatedShard
from shards.api import PointRow
from tests.clock import FakeClock
from tests.unit.test_replicated_shard import MemShard

LOCK_WAIT_S = 5.0  # a write made from inside a cut's read: if the cut held the write lock it would never end


class Racing(MemShard):
    """A replica whose reads of ids (a cut's rounds) first run `hook(ids)`: a write racing the read."""

    hook = None

    async def export(self, ids):
        if self.hook is not None:
            await self.hook(ids)
        return await super().export(ids)


def pt(pid: str, gen: int) -> PointRow:
    return PointRow(id=pid, payload={"gen": gen}, vectors={"v": [float(gen), 1.0]})


class Shard:
    """A 3-replica shard and the state it held after each of its writes (by seq), for the oracle."""

    def __init__(self):
        self.clients = [Racing(0, r) for r in range(3)]
        self.rs = ReplicatedShard(0, self.clients, key="t/0", write_quorum="majority", clock=FakeClock(1000.0))
        self.at: dict[int, dict[str, int]] = {}

    async def write(self, up=(), gone=()):
        if up:
            await asyncio.wait_for(self.rs.upsert(list(up)), LOCK_WAIT_S)
        if gone:
            await asyncio.wait_for(self.rs.delete(list(gone)), LOCK_WAIT_S)
        self.at[self.rs.state.seq] = {pid: p.payload["gen"] for pid, p in self.clients[0].points.items()}

    async def copy(self, mark, page):
        """Step 2 as router.collection.snapshots does it, in pages of `page`."""
        out, after = {}, ""
        while True:
            got = await cutting.export_page(self.rs, mark.replicas, after, page)
            out.update({r.id: r.payload["gen"] for r in got})
            if len(got) < page:
                return out
            after = got[-1].id

    def hook(self, fn):
        for c in self.clients:
            c.hook = fn


def at_cut(copy: dict[str, int], c: cutting.Cut) -> dict[str, int]:
    out = {pid: g for pid, g in copy.items() if pid not in c.gone}
    out.update({pid: r.payload["gen"] for pid, r in c.rows.items()})
    return out


def test_a_write_between_taking_s_and_the_read_is_not_in_the_cut_and_the_cut_is_exact():
    async def scenario():
        s = Shard()
        await s.write([pt(f"p{i}", 0) for i in range(10)])
        mark = await cutting.mark(s.rs)
        await s.write([pt("p1", 1)], ["p2"])            # after the mark, before the copy
        copy = await s.copy(mark, page=3)                 # several pages (p1 at gen 1 already, p2 gone)
        await s.write([pt("p3", 1)])                      # after the copy: round 1 reads p1, p2, p3
        seen = []

        async def race(ids):
            seen.append(sorted(ids))
            if len(seen) == 1:  # after S, before the read, on an id the round reads: it must not be in the cut
                await s.write([pt("p3", 2), pt("p5", 2)])
            elif len(seen) == 2:  # on an id the round does not read: the cut at S stands and excludes it
                await s.write([pt("p7", 3)])
        s.hook(race)
        c = await cutting.cut(s.rs, mark.seq)
        return s, mark, copy, c, seen

    s, mark, copy, c, seen = asyncio.run(scenario())
    assert seen == [["p1", "p2", "p3"], ["p3", "p5"]]
    assert c.seq == mark.seq + 4 and s.rs.state.seq == mark.seq + 5 and c.rounds == 2
    assert at_cut(copy, c) == s.at[c.seq]              # exactly the shard at its seq: p3 and p5 at 2, p7 at 0
    assert s.at[c.seq] != s.at[s.rs.state.seq]
    assert c.pause_ms < 100  # the lock held only to take S and the log's ids, never across a read


def test_writes_racing_every_round_end_in_a_last_round_under_the_lock_still_exact():
    async def scenario():
        s = Shard()
        await s.write([pt(f"p{i}", 0) for i in range(6)])
        mark = await cutting.mark(s.rs)
        copy = await s.copy(mark, page=16_384)
        await s.write([pt("p0", 1)])
        gen = iter(range(2, 100))

        async def race(ids):
            if not s.rs._lock().locked():  # the last round holds the lock: nothing can race it
                await s.write([pt(pid, next(gen)) for pid in sorted(ids)])
        s.hook(race)
        c = await cutting.cut(s.rs, mark.seq, rounds=3)
        return s, copy, c

    s, copy, c = asyncio.run(scenario())
    assert c.rounds == 4 and c.seq == s.rs.state.seq
    assert at_cut(copy, c) == s.at[c.seq]


def test_a_cut_with_no_write_since_the_copy_is_the_copy():
    async def scenario():
        s = Shard()
        await s.write([pt(f"p{i}", 0) for i in range(4)], ["p9"])
        mark = await cutting.mark(s.rs)
        return mark, await s.copy(mark, page=2), await cutting.cut(s.rs, mark.seq), s

    mark, copy, c, s = asyncio.run(scenario())
    assert c.seq == mark.seq and not c.rows and not c.gone and copy == s.at[c.seq]
