"""Point-in-time restore through the service, in process over milvus-lite with the session's Elasticsearch and a
directory store (router.replication.archive, router.collection.restore): a moment between two known writes holds
exactly the writes before it; `at` as per-shard seq; the operation log compacted far below the writes made while
the archive keeps the history whole; a corrupted or missing segment refused naming the file. The shards' wall
clocks are moved by the test, so "between two writes" is exact."""
from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import pytest

from cluster.config import ClusterConfig
from cluster.errors import InvalidRequest
from router.collection.service import PrismService
from router.schema import archive as plan

SPACES = {"v": {"dim": 8, "index": {"type": "FLAT"}}, "w": {"dim": 4, "index": {"type": "FLAT"}}}


def _point(pid: str, rng, gen: int) -> dict:
    return {"id": pid, "payload": {"gen": gen, "tags": [pid]},
            "vectors": {"v": rng.standard_normal(8).astype(np.float32).tolist(),
                        "w": rng.standard_normal(4).astype(np.float32).tolist()}}


async def _held(svc: PrismService, name: str) -> dict[str, tuple]:
    out = {}
    for sh in svc.coordinator(name).shards:
        ids = await sh.read(lambda c: c.ids())
        for r in await sh.read(lambda c, ids=ids: c.export(ids)):
            out[r.id] = (json.dumps(r.payload, sort_keys=True),
                         {s: np.asarray(v, np.float32).tobytes() for s, v in r.vectors.items()})
    return out


def test_point_in_time_restore_between_two_known_writes_per_shard_seq_and_refusals(es_server, tmp_path):
    from router.metadata.store import MetadataStore

    svc = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"},
                                     snapshots={"archive": {"segment_ops": 3}}),
                       metadata=MetadataStore(es_server.uri))
    rng = np.random.default_rng(5)
    src = f"pitr{uuid.uuid4().hex[:6]}"
    now = [1_000_000.0]
    moment = plan.rfc3339(1_000_150.0)  # between the first writes after the snapshot (1_000_100) and the second

    async def scenario():
        await svc.create_collection(src, {"spaces": SPACES, "shards": 2, "metadata": {"gen": "integer"}})
        coord = svc.coordinator(src)
        for sh in coord.shards:
            sh.wall = lambda: now[0]
            sh.log.max_ops = 4  # the operation log forgets all but 4 writes: the archive must hold the rest
        await svc.upsert(src, {"points": [_point(f"p{i}", rng, 0) for i in range(30)]})
        sid = (await svc.snapshots.create(src))["id"]
        now[0] += 100  # the first writes after the snapshot: upserts, deletes, a partial update, new points
        for i in range(12):
            await svc.upsert(src, {"points": [_point(f"p{i}", rng, 1)]})
        await svc.delete_points(src, {"ids": ["p20", "p21", "p22"]})
        await svc.update_vectors(src, {"points": [{"id": "p25", "vectors": {"w": [1.0, 2.0, 3.0, 4.0]}}]})
        await svc.upsert(src, {"points": [_point(f"n{i}", rng, 1) for i in range(5)]})
        first = await _held(svc, src)
        now[0] += 100  # the second writes: after the moment restored
        await svc.upsert(src, {"points": [_point(f"p{i}", rng, 2) for i in range(5, 15)]})
        await svc.delete_points(src, {"ids": ["n0", "p1"]})
        second = await _held(svc, src)
        seqs_second = {str(sh.shard): sh.state.seq for sh in coord.shards}
        now[0] += 100
        r1 = await svc.snapshots.restore("a" + src, {"snapshot": sid, "at": moment, "shards": 1})
        r2 = await svc.snapshots.restore("b" + src, {"snapshot": sid, "at": seqs_second})
        hits = await svc.count("a" + src, {"filter": {"term": {"gen": 1}}})  # Elasticsearch got the documents
        restored = [await _held(svc, n + src) for n in "ab"]
        return sid, coord, first, second, (r1, r2), restored, hits

    sid, coord, first, second, answers, restored, hits = asyncio.run(scenario())
    assert first != second
    assert restored[0] == first  # every id, vector (bit for bit) and payload: the writes before the moment only
    assert restored[1] == second  # per-shard seq: up to the last write
    assert hits.count == sum(1 for p, _ in first.values() if json.loads(p)["gen"] == 1)
    assert answers[0]["points"] == len(first) and all(answers[0]["replayed"][str(s)] for s in (0, 1))
    assert all(len(sh.log) <= 4 for sh in coord.shards)  # compacted far below the writes replayed
    for sh in coord.shards:
        st = sh.archive_status()
        assert st["archived_seq"] == sh.state.seq and st["held"] == 0 and st["dropped"] == st["gaps"] == 0
    info = asyncio.run(svc.info(src))
    assert [a["archived_seq"] for a in info.archive] == [sh.state.seq for sh in coord.shards]

    m = svc.snapshots.manifest(sid)
    for at, message in ((plan.rfc3339(1_000_000.0 - 1), "before the snapshot's cut"),
                        (plan.rfc3339(now[0] + 50), "past the archived history"),
                        ({"0": m.cut[0].seq - 1, "1": m.cut[1].seq}, "before the snapshot's cut"),
                        ({"0": 10_000, "1": m.cut[1].seq}, "past the archived history"),
                        ({"0": 1}, r"shard\(s\) \[1\]")):
        with pytest.raises(InvalidRequest, match=message):
            asyncio.run(svc.snapshots.restore("x" + src, {"snapshot": sid, "at": at}))
    # a corrupted segment, then a missing one (a gap in the archive): refused naming the file, nothing built
    sh0 = coord.shards[0]
    folder = tmp_path / "snapshots" / plan.prefix(src, 0, sh0.epoch)
    index = plan.ArchiveIndex.model_validate_json((folder / plan.INDEX).read_text())
    seg = next(s for s in index.segments if s.first > m.cut[0].seq)
    data = bytearray((folder / seg.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / seg.file).write_bytes(bytes(data))
    with pytest.raises(InvalidRequest, match=rf"{seg.file} is corrupted"):
        asyncio.run(svc.snapshots.restore("x" + src, {"snapshot": sid, "at": moment}))
    (folder / seg.file).unlink()
    with pytest.raises(InvalidRequest, match=rf"{seg.file} is missing"):
        asyncio.run(svc.snapshots.restore("x" + src, {"snapshot": sid, "at": moment}))
    assert "x" + src not in svc.list_collections() and svc.catalog.stamp("x" + src) is None
    for name in (src, "a" + src, "b" + src):
        asyncio.run(svc.delete_collection(name))
