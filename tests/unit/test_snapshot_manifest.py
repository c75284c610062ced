"""The snapshot manifest (router.schema.snapshots) and the cut's log reading (router.replication.cut.written_since)."""
from __future__ import annotations

import hashlib

import pytest

from cluster.errors import InvalidRequest, ShardUnavailable
from router.replication.cut import written_since
from router.replication.oplog import LoggedOp, OpLog
from router.schema import snapshots as snap
from shards.api import PointRow


def _files(shards: int, spaces: list[str]) -> dict[str, bytes]:
    return {path: path.encode() * 3 for path in snap.plan(shards, spaces)}


def _manifest(shards: int = 2, spaces: tuple[str, ...] = ("text", "image")) -> tuple[snap.Manifest, dict[str, bytes]]:
    data = _files(shards, list(spaces))
    files = {p: (hashlib.sha256(b).hexdigest(), len(b)) for p, b in data.items()}
    cut = [snap.ShardCut(shard=s, seq=10 + s, epoch=f"e{s}", points=5) for s in reversed(range(shards))]
    m = snap.build(snapshot_id="c-20260101T000000Z-abcdef", collection="c", created="2026-01-01T00:00:00Z",
                   prism="0.1.0", cut=cut, spaces=list(spaces), files=files, counts={"points": 10}, seconds=0.5)
    return m, data


def _digest(data: dict[str, bytes]):
    return lambda path: (hashlib.sha256(data[path]).hexdigest(), len(data[path])) if path in data else None


def test_the_plan_names_config_mapping_documents_and_one_file_per_shard_and_space():
    assert snap.plan(2, ["a", "b"]) == ["config.json", "metadata/mapping.json", "metadata/documents.parquet",
                                        "shards/0/points.parquet", "shards/0/a.parquet", "shards/0/b.parquet",
                                        "shards/1/points.parquet", "shards/1/a.parquet", "shards/1/b.parquet"]


def test_build_records_every_shards_seq_in_shard_order_and_refuses_a_missing_file():
    m, data = _manifest()
    assert m.format == snap.FORMAT and [(c.shard, c.seq, c.epoch) for c in m.cut] == [(0, 10, "e0"), (1, 11, "e1")]
    files = {p: ("x", 1) for p in data if p != "shards/1/image.parquet"}
    with pytest.raises(ValueError, match="shards/1/image.parquet"):
        snap.build(snapshot_id="c-x", collection="c", created="", prism="", cut=m.cut, spaces=m.spaces, files=files,
                   counts={}, seconds=0)


def test_a_round_trip_through_json_reads_back_and_verifies():
    m, data = _manifest()
    again = snap.check_format(m.model_dump(mode="json"), m.id)
    assert again == m
    snap.verify(again, _digest(data))  # nothing raised


@pytest.mark.parametrize("path", ["config.json", "shards/0/points.parquet", "shards/1/text.parquet"])
def test_a_changed_byte_is_refused_naming_the_file(path):
    m, data = _manifest()
    data[path] = data[path][:-1] + b"!"
    with pytest.raises(InvalidRequest, match=f"file {path} is corrupted"):
        snap.verify(m, _digest(data))


def test_a_missing_file_is_refused_naming_it():
    m, data = _manifest()
    del data["metadata/documents.parquet"]
    with pytest.raises(InvalidRequest, match="file metadata/documents.parquet is missing"):
        snap.verify(m, _digest(data))


def test_an_unknown_format_says_why_it_is_refused():
    m, _ = _manifest()
    with pytest.raises(InvalidRequest, match=r"format 99 is unknown.*written by a newer prism"):
        snap.check_format({**m.model_dump(mode="json"), "format": 99}, m.id)
    with pytest.raises(InvalidRequest, match="format 'x' is unknown.*cannot be restored"):
        snap.check_format({**m.model_dump(mode="json"), "format": "x"}, m.id)
    with pytest.raises(InvalidRequest, match="not a prism snapshot manifest"):
        snap.check_format(["nope"], m.id)
    with pytest.raises(InvalidRequest, match="malformed"):
        snap.check_format({"format": 1, "id": m.id}, m.id)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a..b", "/abs", "x" * 200])
def test_ids_that_could_name_another_path_are_refused(bad):
    with pytest.raises(InvalidRequest):
        snap.check_id(bad)


def test_restored_config_renames_and_overrides_only_what_the_request_gives():
    cfg = {"name": "old", "spaces": {"v": {"dim": 4}}, "shards": 4, "replicas": 3, "write_quorum": 3,
           "routing": {"method": "hash"}}
    body = snap.restored_config(cfg, "new", snap.RestoreRequest(snapshot="s", shards=2, replicas=2,
                                                                routing={"method": "key", "field": "k"}))
    assert "name" not in body and body["shards"] == 2 and body["replicas"] == 2 and body["write_quorum"] == 2
    assert body["routing"] == {"method": "key", "field": "k"}
    assert snap.restored_config(cfg, "new", snap.RestoreRequest(snapshot="s")) == {k: v for k, v in cfg.items()
                                                                                    if k != "name"}


def _row(pid: str) -> PointRow:
    return PointRow(id=pid, vectors={"v": [0.0]})


def test_written_since_collects_ids_of_every_kind_of_write_after_the_mark():
    log = OpLog()
    log.append(LoggedOp(1, "upsert", [_row("a")]))
    log.append(LoggedOp(2, "delete", ["b"]))
    log.append(LoggedOp(3, "restore", [[_row("c")], ["d"]]))
    log.append(LoggedOp(4, "upsert", [_row("e")]))
    assert written_since(log, 1, 3) == {"b", "c", "d"}
    assert written_since(log, 0, 4) == {"a", "b", "c", "d", "e"}
    assert written_since(log, 4, 4) == set()


def test_written_since_refuses_when_the_log_no_longer_holds_every_write():
    log = OpLog(max_ops=2)
    for seq in range(1, 5):
        log.append(LoggedOp(seq, "upsert", [_row(str(seq))]))
    assert written_since(log, 2, 4) == {"3", "4"}
    with pytest.raises(ShardUnavailable, match="retry the snapshot"):
        written_since(log, 1, 4)


@pytest.mark.parametrize("method,path", [("POST", "/v1/collections/c/snapshots"), ("GET", "/v1/collections/c/snapshots"),
                                         ("GET", "/v1/collections/c/snapshots/c-1"),
                                         ("DELETE", "/v1/collections/c/snapshots/c-1"),
                                         ("POST", "/v1/collections/c/restore")])
def test_snapshot_and_restore_routes_need_the_admin_role(method, path):
    from router.serving.access import route_access

    assert route_access(method, path) == ("admin", "c")
