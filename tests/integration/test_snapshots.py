"""Snapshots and restore through the service, in process over milvus-lite (router.collection.snapshots, .restore):
a snapshot taken under concurrent writes equals the collection at its cut; restore into another shard count and
routing; a corrupted file or an unknown manifest format is refused before anything is built; a real S3-API server
(moto, started here on a free port and stopped by process group) as the store."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest

from cluster.config import ClusterConfig
from cluster.errors import CollectionExists, CollectionNotFound, InvalidRequest
from cluster.services import free_port
from router.collection.restore import shard_points
from router.collection.service import PrismService

DIM = 8
SPACES = {"v": {"dim": DIM, "index": {"type": "FLAT"}}, "w": {"dim": 4, "index": {"type": "FLAT"}}}


def _point(pid: str, rng, gen: int, with_w: bool = True) -> dict:
    vectors = {"v": rng.standard_normal(DIM).astype(np.float32).tolist()}
    if with_w:
        vectors["w"] = rng.standard_normal(4).astype(np.float32).tolist()
    return {"id": pid, "payload": {"gen": gen, "k": f"k{int(pid[1:]) % 7}", "tags": ["a", pid]}, "vectors": vectors}


def _state(p: dict) -> tuple:
    return (json.dumps(p["payload"], sort_keys=True),
            {s: np.asarray(v, np.float32).tobytes() for s, v in (p.get("vectors") or {}).items()})


async def _held(svc: PrismService, name: str) -> dict[str, tuple]:
    """Every point of the collection as the shards hold it now."""
    coord = svc.coordinator(name)
    out = {}
    for sh in coord.shards:
        ids = await sh.read(lambda c: c.ids())
        for row in await sh.read(lambda c, ids=ids: c.export(ids)):
            out[row.id] = _state({"payload": row.payload, "vectors": row.vectors})
    return out


async def _paged(svc: PrismService, name: str, page: int) -> dict[str, tuple]:
    """Every point as a snapshot's copy reads it: ShardApi.export_page in keyset pages of `page`."""
    out = {}
    for sh in svc.coordinator(name).shards:
        after = ""
        while True:
            got = await sh.read(lambda c, after=after: c.export_page(after, page))
            assert [r.id for r in got] == sorted(r.id for r in got) and all(r.id > after for r in got)
            out.update({r.id: _state({"payload": r.payload, "vectors": r.vectors}) for r in got})
            if len(got) < page:
                break
            after = got[-1].id
    return out


def _snapshot_points(svc: PrismService, sid: str) -> tuple[dict[str, tuple], object]:
    m = svc.snapshots.manifest(sid)
    out = {}
    for c in m.cut:
        out.update({p["id"]: _state(p) for p in shard_points(svc.snapshots.store, m, c.shard)})
    return out, m


async def _stepwise(svc: PrismService, coord, rng) -> tuple[dict, dict]:
    """One shard's mark, copy and cut by hand, with writes between the mark and the copy and between the copy and
    the cut: the copy brought to the cut must equal the shard as it stands at the cut."""
    from router.collection.snapshots import copy_shard, cut_shard, mark_shard

    sh = coord.shards[0]
    mine = [f"p{i}" for i in range(1000) if coord.shard_of(f"p{i}") == 0]
    fresh = [f"p{i}" for i in range(5000, 5100) if coord.shard_of(f"p{i}") == 0]
    mark = await mark_shard(sh)
    await svc.upsert("snap", {"points": [_point(mine[0], rng, 1), _point(fresh[0], rng, 1)]})
    await svc.delete_points("snap", {"ids": [mine[1]]})
    points = await copy_shard(sh, mark)
    await svc.upsert("snap", {"points": [_point(mine[2], rng, 2), _point(mine[0], rng, 3, with_w=False),
                                         _point(fresh[1], rng, 2)]})
    await svc.delete_points("snap", {"ids": [fresh[0], mine[3]]})
    cut = await cut_shard(sh, mark, points)
    assert cut.seq == mark.seq + 4 == sh.state.seq
    ids = await sh.read(lambda c: c.ids())
    held = {r.id: _state({"payload": r.payload, "vectors": r.vectors}) for r in await sh.read(lambda c: c.export(ids))}
    return {pid: _state({"payload": p, "vectors": v}) for pid, (p, v) in points.items()}, held


def test_a_snapshot_under_concurrent_writes_equals_the_collection_at_its_cut(tmp_path):
    svc = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"}))
    rng = np.random.default_rng(7)

    async def scenario():
        await svc.create_collection("snap", {"spaces": SPACES, "shards": 2})
        initial = [_point(f"p{i}", rng, 0, with_w=i % 3 != 0) for i in range(1000)]
        for i in range(0, len(initial), 500):
            await svc.upsert("snap", {"points": initial[i:i + 500]})
        coord = svc.coordinator("snap")
        steps = await _stepwise(svc, coord, rng)
        baseline = await _held(svc, "snap")
        start = [sh.state.seq for sh in coord.shards]
        ops: list[list[tuple[str, dict | None]]] = [[] for _ in coord.shards]  # per shard, in its write order
        warmed, done = asyncio.Event(), asyncio.Event()

        async def writer():
            k, after = 0, 0
            while after < 20:
                k += 1
                pid = f"p{int(rng.integers(0, 1150))}"
                if k % 4 == 0:
                    await svc.delete_points("snap", {"ids": [pid]})
                    ops[coord.shard_of(pid)].append((pid, None))
                else:
                    p = _point(pid, rng, k)
                    await svc.upsert("snap", {"points": [p]})
                    ops[coord.shard_of(pid)].append((pid, p))
                if k >= 20:
                    warmed.set()
                after += done.is_set()

        task = asyncio.create_task(writer())
        await warmed.wait()
        summary = await svc.snapshots.create("snap")
        done.set()
        await task
        now = await _held(svc, "snap")
        assert await _paged(svc, "snap", 97) == now  # many pages; a space ("w") missing some ids
        return baseline, start, ops, summary, now, steps

    baseline, start, ops, summary, now, (copied, at_cut) = asyncio.run(scenario())
    assert copied == at_cut  # the copy brought to the cut holds the writes made before and after it was read
    got, m = _snapshot_points(svc, summary["id"])
    coord = svc.coordinator("snap")
    want = dict(baseline)
    for s, shard_ops in enumerate(ops):
        applied = m.cut[s].seq - start[s]
        assert 0 <= applied <= len(shard_ops)
        for pid, p in shard_ops[:applied]:
            if p is None:
                want.pop(pid, None)
            else:
                want[pid] = _state(p)
    assert sum(c.seq - start[s] for s, c in enumerate(m.cut)) > 0  # writes before the cut are in it
    assert sum(len(o) for o in ops) > sum(c.seq - start[s] for s, c in enumerate(m.cut))  # and some came after
    assert got.keys() == want.keys()
    assert got == want  # every id, vector (bit for bit) and payload
    assert got != now  # the writes after the cut are not in it
    assert summary["counts"] == {"points": len(want), "v": len(want), "w": sum(1 for _, vs in want.values() if "w" in vs)}
    assert all(c.points == sum(1 for pid in want if coord.shard_of(pid) == c.shard) for c in m.cut)
    asyncio.run(svc.delete_collection("snap"))  # a snapshot is a backup: it outlives its collection
    listed = asyncio.run(svc.snapshots.list("snap"))["snapshots"]
    assert [s["id"] for s in listed] == [summary["id"]] and listed[0]["write_pause_ms"] < 1000
    with pytest.raises(CollectionNotFound):
        asyncio.run(svc.snapshots.list("nosuch"))


class _FailsNextUpsert:
    """A real replica client whose next upsert fails with `exc` (not applied: a timeout under load, an actor that
    died and is back); later ones pass. The write is logged and the replica left behind it until a heal."""

    def __init__(self, inner, exc):
        self.inner, self.exc = inner, exc

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def upsert(self, rows, wait=True):
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc
        return await self.inner.upsert(rows, wait)


def _behind(tmp_path, replicas: int, faults: dict) -> tuple:
    """One shard, `replicas` replicas, 50 points; then a write that `faults` (replica -> exception) leave every
    replica behind; then a snapshot. Returns (service, the snapshot, the late point, the shard as held, the shard)."""
    from cluster.errors import ShardUnavailable

    svc = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"}))
    rng = np.random.default_rng(3)

    async def scenario():
        await svc.create_collection("behind", {"spaces": SPACES, "shards": 1, "replicas": replicas})
        await svc.upsert("behind", {"points": [_point(f"p{i}", rng, 0) for i in range(50)]})
        sh = svc.coordinator("behind").shards[0]
        for r, exc in faults.items():
            sh.clients[r] = _FailsNextUpsert(sh.clients[r], exc)
        late = _point("p7", rng, 1)
        with pytest.raises(ShardUnavailable, match="not acknowledged"):
            await svc.upsert("behind", {"points": [late]})
        assert all(st.applied_seq < sh.state.seq for st in sh.state.states)  # every replica is behind
        summary = await svc.snapshots.create("behind")
        return summary, late, await _held(svc, "behind"), sh

    return (svc, *asyncio.run(scenario()))


@pytest.mark.parametrize("replicas,faults", [
    (1, {0: TimeoutError("injected: the write did not reach the replica in time")}),
    (1, {0: "dead"}),   # its actor restarted: marked dead, answers again at once (probed now, not after backoff)
    (2, {0: "dead", 1: TimeoutError("injected: timed out")}),
], ids=["only-replica-timed-out", "only-replica-restarted", "one-dead-one-behind"])
def test_a_snapshot_of_a_shard_whose_replicas_are_all_behind_heals_them_and_holds_the_logged_write(
        tmp_path, replicas, faults):
    """The 200k bench's snapshot was refused ("no replica has applied its writes") when a write had left a shard's
    only replica behind; the snapshot now replays the missed write first, and holds it: a write not acknowledged
    is logged and rolls forward."""
    from cluster.errors import ShardUnavailable

    faults = {r: ShardUnavailable("injected: replica actor restarted", shards=[0]) if e == "dead" else e
              for r, e in faults.items()}
    svc, summary, late, held, sh = _behind(tmp_path, replicas, faults)
    got, m = _snapshot_points(svc, summary["id"])
    assert m.cut[0].seq == sh.state.seq and any(st.applied_seq == sh.state.seq for st in sh.state.states)
    assert got == held and len(got) == 50 and got["p7"] == _state(late)


class _S3Server:
    """moto's S3-API server on a free port, in its own process group; `url` waits until it answers (bounded)."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", "127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ready = False

    @property
    def url(self) -> str:
        import httpx

        url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            if self._ready:
                return url
            try:
                httpx.get(url, timeout=0.5)
                self._ready = True
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto server exited") from None
                try:
                    self.proc.wait(timeout=0.05)  # a bounded wait between readiness polls
                except subprocess.TimeoutExpired:
                    pass
        raise RuntimeError(f"moto server did not answer at {url}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # a throwaway server: nothing to flush
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def s3_server():
    """Started with the module, so that it boots while the first test runs."""
    server = _S3Server()
    yield server
    server.stop()


def test_restore_from_an_s3_api_server_into_another_shard_count_and_routing_and_refusals(s3_server, es_server,
                                                                                         tmp_path):
    """The store is a real S3-API server; Elasticsearch the session's. One restore changes both the shard count
    and the routing; a corrupted file and an unknown manifest format are refused before anything is built."""
    import s3fs

    from router.metadata.store import MetadataStore

    options = {"endpoint_url": s3_server.url, "key": "test", "secret": "test"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("prism-backups")
    svc = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"},
                                     snapshots={"url": "s3://prism-backups/cluster-a", "options": options}),
                       metadata=MetadataStore(es_server.uri))
    rng = np.random.default_rng(11)
    src, new = (f"{x}{uuid.uuid4().hex[:6]}" for x in ("src", "new"))

    async def scenario():
        await svc.create_collection(src, {"spaces": SPACES, "shards": 1, "metadata": {"k": "keyword"}})
        await svc.upsert(src, {"points": [_point(f"p{i}", rng, 0, with_w=i % 2 == 0) for i in range(140)]})
        sid = (await svc.snapshots.create(src))["id"]
        before = await _held(svc, src)
        r = await svc.snapshots.restore(new, {"snapshot": sid, "shards": 2, "routing": {"method": "key", "field": "k"}})
        with pytest.raises(CollectionExists):
            await svc.snapshots.restore(new, {"snapshot": sid})
        hits = await svc.count(new, {"filter": {"term": {"k": "k3"}}})  # Elasticsearch holds the documents
        described = await svc.snapshots.describe(src, sid)
        return sid, before, r, hits, await _held(svc, src), await _held(svc, new), described

    sid, before, r, hits, src_now, restored, described = asyncio.run(scenario())
    assert r["points"] == 140
    assert restored == before and src_now == before  # every id, vector and payload; the source untouched
    assert svc.collection_config(new).shards == 2
    assert hits.count == sum(1 for i in range(140) if i % 7 == 3)
    coord = svc.coordinator(new)
    for s, sh in enumerate(coord.shards):  # placed by the target's placement: its key's owner
        held = asyncio.run(sh.read(lambda c: c.export(list(before))))
        assert held and all(coord.placement.shard_of(p.id, p.vectors, p.payload) == s for p in held)
    root = f"prism-backups/cluster-a/{sid}"
    assert len(fs.find(root)) == len(described["manifest"]["files"]) + 1  # the files and the manifest
    assert "secret" not in json.dumps(described) and "endpoint" not in json.dumps(described)

    # a corrupted file: refused naming it, and nothing is built
    data = bytearray(fs.cat_file(f"{root}/shards/0/w.parquet"))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(f"{root}/shards/0/w.parquet", bytes(data))
    with pytest.raises(InvalidRequest, match="file shards/0/w.parquet is corrupted"):
        asyncio.run(svc.snapshots.restore("broken", {"snapshot": sid}))
    assert "broken" not in svc.list_collections() and svc.catalog.stamp("broken") is None
    # a manifest of a format this prism does not read says why
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    fs.pipe_file(f"{root}/manifest.json", json.dumps({**manifest, "format": 2}).encode())
    with pytest.raises(InvalidRequest, match="format 2 is unknown to this prism.*newer prism"):
        asyncio.run(svc.snapshots.restore("broken", {"snapshot": sid}))
    assert "broken" not in svc.list_collections()
    asyncio.run(svc.snapshots.delete(src, sid))
    assert asyncio.run(svc.snapshots.list(src))["snapshots"] == [] and not fs.exists(root)
