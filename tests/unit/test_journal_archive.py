"""The journal archive (router.replication.archive over a directory store) and point-in-time restore's pure choices
(router.schema.archive): the target per shard, refusals before the cut, past the archive and across a gap, the
index check, the fold of a shard's writes, and an unreachable store held to a bound then recorded as a gap."""
from __future__ import annotations

import pytest

from cluster.errors import InvalidRequest
from cluster.snapshot_store import SnapshotStore
from router.replication.archive import JournalArchive, read_index, read_segment
from router.replication.oplog import LoggedOp
from router.schema import archive as plan
from router.schema.archive import ArchiveIndex, Gap, Segment
from shards.api import PointRow


def _row(pid: str, gen: int = 0) -> PointRow:
    return PointRow(id=pid, payload={"gen": gen}, meta={}, vectors={"v": [float(gen), 1.0]})


def _index(upto: int, through: float, gaps=()) -> ArchiveIndex:
    return ArchiveIndex(collection="c", shard=0, epoch="e", upto=upto, through=through, gaps=list(gaps))


OPS = [(s, 100.0 + s) for s in range(1, 11)]  # write s stamped at 100 + s


def test_the_target_is_the_last_write_stamped_at_or_before_the_time_or_the_named_seq():
    idx = _index(10, 200.0)
    assert plan.target(OPS, since=3, cut_at=103.0, index=idx, where="s0", at=106.5) == 6
    assert plan.target(OPS, since=3, cut_at=103.0, index=idx, where="s0", at=103.0) == 3  # the snapshot itself
    assert plan.target(OPS, since=3, cut_at=103.0, index=idx, where="s0", at=150.0) == 10
    assert plan.target(OPS, since=3, cut_at=103.0, index=idx, where="s0", seq=8) == 8
    assert plan.target(OPS[3:], since=3, cut_at=103.0, index=idx, where="s0", seq=3) == 3


@pytest.mark.parametrize("kw, message", [
    ({"at": 102.0}, "before the snapshot's cut"),
    ({"at": 200.0}, "past the archived history"),
    ({"seq": 2}, "before the snapshot's cut"),
    ({"seq": 11}, "past the archived history"),
])
def test_a_target_before_the_cut_or_past_the_archive_is_refused(kw, message):
    with pytest.raises(InvalidRequest, match=message):
        plan.target(OPS, since=3, cut_at=103.0, index=_index(10, 200.0), where="shard 0", **kw)


def test_a_gap_is_refused_naming_the_lost_writes_and_a_target_before_it_is_not():
    ops = [op for op in OPS if not 6 <= op[0] <= 7]
    idx = _index(10, 200.0, [Gap(first=6, last=7, noted=0.0)])
    with pytest.raises(InvalidRequest, match=r"writes 6\.\.7 were lost"):
        plan.target(ops, since=3, cut_at=103.0, index=idx, where="shard 0", at=150.0)
    with pytest.raises(InvalidRequest, match=r"writes 6\.\.7 were lost"):
        plan.target(ops, since=3, cut_at=103.0, index=idx, where="shard 0", at=105.5)  # their times are unknown
    with pytest.raises(InvalidRequest, match="write 9 is missing"):
        plan.target([op for op in OPS if op[0] != 9], since=3, cut_at=103.0, index=_index(10, 200.0),
                    where="shard 0", seq=10)
    assert plan.target(ops, since=3, cut_at=103.0, index=idx, where="shard 0", at=104.5) == 4
    assert plan.target(ops, since=3, cut_at=103.0, index=idx, where="shard 0", seq=5) == 5


def test_at_is_an_rfc3339_time_with_its_offset_or_a_seq_for_every_shard():
    assert plan.parse_at("1970-01-01T00:01:40.5Z", [0, 1]) == 100.5
    assert plan.parse_at("1970-01-01T01:01:40+01:00", [0]) == 100.0
    assert plan.parse_at({"0": 4, "1": 0}, [0, 1]) == {0: 4, 1: 0}
    for bad, message in (("1970-01-01T00:01:40", "RFC 3339"), ("yesterday", "RFC 3339"),
                         ({"0": 4}, r"shard\(s\) \[1\]"), ({"0": 1, "1": 2, "2": 3}, "shard '2'"),
                         ({"0": -1, "1": 2}, "sequence number"), ([1, 2], "RFC 3339 time or")):
        with pytest.raises(InvalidRequest, match=message):
            plan.parse_at(bad, [0, 1])


def test_the_index_check_names_a_segment_that_does_not_follow():
    def seg(a, b):
        return Segment(file=plan.segment_name(a, b), first=a, last=b, first_at=0, last_at=0, sha256="", bytes=0)

    good = _index(9, 1.0, [Gap(first=4, last=6, noted=0.0)])
    good.segments = [seg(1, 3), seg(7, 9)]
    plan.check_index(good, "shard 0")
    bad = _index(9, 1.0)
    bad.segments = [seg(1, 3), seg(7, 9)]
    with pytest.raises(InvalidRequest, match=r"segment seg-000000000007-000000000009\.jsonl does not follow write 3"):
        plan.check_index(bad, "shard 0")


def test_fold_applies_upserts_deletes_and_undone_writes_in_order():
    start = {"a": {"id": "a", "payload": {"gen": 0}}, "b": {"id": "b", "payload": {"gen": 0}}}
    out = plan.fold(start, [("upsert", [_row("c", 1), _row("a", 2)]), ("delete", ["b"]),
                            ("restore", [[_row("b", 0)], ["c"]]), ("delete", ["zz"])])
    assert out == {"a": {"id": "a", "payload": {"gen": 2}, "vectors": {"v": [2.0, 1.0]}},
                   "b": {"id": "b", "payload": {"gen": 0}, "vectors": {"v": [0.0, 1.0]}}}
    assert start["a"]["payload"] == {"gen": 0}  # a new dict: the input is not changed


class _Flaky:
    """A store that fails while `down`."""

    def __init__(self, store: SnapshotStore):
        self.store, self.down = store, False

    def write(self, path, data):
        if self.down:
            raise ConnectionError("store unreachable")
        return self.store.write(path, data)

    def read(self, path):
        return self.store.read(path)


def test_an_unreachable_store_holds_writes_to_a_bound_then_records_the_gap(tmp_path):
    store = _Flaky(SnapshotStore(tmp_path))
    clock = [0.0]
    a = JournalArchive(store, "c", 0, "e", segment_ops=2, hold_ops=3, interval_s=1.0, clock=lambda: clock[0])
    a.loaded = True
    for s in (1, 2):
        a.record(LoggedOp(s, "upsert", [_row(str(s), s)], 10.0 + s))
    assert a.ship(*a.take(), 12.5)
    a.shipped()
    assert a.status()["archived_seq"] == 2 and a.status()["held"] == 0
    store.down = True
    for s in range(3, 8):  # held up to 3 writes; 3 and 4 dropped
        a.record(LoggedOp(s, "delete", [str(s)], 10.0 + s))
    assert not a.ship(*a.take(), 17.5) and a.status()["error"].startswith("ConnectionError")
    assert a.status()["held"] == 3 and a.status()["dropped"] == 2
    assert not a.due()  # no retry before RETRY_S
    store.down = False
    assert a.ship(*a.take(), 17.5)
    a.shipped()
    idx = read_index(store, "c", 0, "e")
    assert idx.upto == 7 and [(g.first, g.last) for g in idx.gaps] == [(3, 4)]
    assert [(s.first, s.last) for s in idx.segments] == [(1, 2), (5, 6), (7, 7)]
    assert [op.seq for op in read_segment(store, idx, idx.segments[1])] == [5, 6]
    with pytest.raises(InvalidRequest, match=r"writes 3\.\.4 were lost"):
        plan.target([(5, 15.0)], since=2, cut_at=12.0, index=idx, where="shard 0", at=15.0)
    path = tmp_path / plan.prefix("c", 0, "e") / idx.segments[1].file
    path.write_bytes(path.read_bytes().replace(b'"delete"', b'"DELETE"'))
    with pytest.raises(ValueError, match=rf"archive segment .*/{idx.segments[1].file} is corrupted"):
        read_segment(store, idx, idx.segments[1])
