"""Replicas that never silently diverge: the issue's scenario on real Ray actors over milvus-lite (2 shards x 2
replicas, default quorum `majority`, writes through the shard sequencers as the ingress sends them), one writer
upserting one point per call and readers searching while replica actor PROCESSES are SIGKILLed; afterwards every
replica of every shard is compared with the others, ids AND contents, read from the replicas themselves."""
from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.errors import PrismError
from router.collection.coordinator import Coordinator
from router.replication.healing import HealLoop
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.local import replica_specs

DIM = 16
_n = itertools.count()


def ingress(cfg, tmp_path):
    from router.replication.ray_sequencer import start_ray_sequencers
    from shards.actor import start_ray_shards

    specs = replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None)
    clients = start_ray_shards(cfg, specs, detached=True)
    seqs = start_ray_sequencers(cfg, specs, tmp_path, timeout_s=10, detached=True)
    return Coordinator.from_clients(cfg, clients, sequencers=seqs, timeout_s=10, poll_sequencer=False)


def stop(coord):
    from router.replication.ray_sequencer import stop_ray_sequencers
    from shards.actor import stop_ray_shards

    stop_ray_sequencers([sh.sequencer for sh in coord.shards], drop=True)
    stop_ray_shards([sh.clients for sh in coord.shards])


def point(i: int, rng) -> Point:
    v = rng.standard_normal(DIM).astype(np.float32)
    return Point(id=f"p{i:06d}", payload={"i": i, "tag": f"t{i % 7}"}, vectors={"v": (v / np.linalg.norm(v)).tolist()})


def actor_pid(client) -> int:
    import ray

    return ray.get(client.actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


async def replica_rows(client) -> dict:
    """Every row the replica holds: {id: (payload, meta, vectors as float32 bytes)}."""
    ids = await client.ids()
    out = {}
    for k in range(0, len(ids), 1000):
        for row in await client.export(ids[k:k + 1000]):
            out[row.id] = (row.payload, row.meta, {s: np.asarray(v, np.float32).tobytes()
                                                   for s, v in row.vectors.items()})
    return out


async def differences(coord) -> list[str]:
    """Per shard, what its replicas disagree on (ids held by some only; ids whose contents differ)."""
    try:
        every = [await asyncio.gather(*(replica_rows(c) for c in sh.clients)) for sh in coord.shards]
    except PrismError as exc:  # a replica still restarting: not comparable yet
        return [f"a replica did not answer: {exc}"]
    out = []
    for s, rows in enumerate(every):
        first = rows[0]
        for r, other in enumerate(rows[1:], 1):
            only = sorted(set(first) ^ set(other))
            changed = sorted(i for i in set(first) & set(other) if first[i] != other[i])
            if only or changed:
                out.append(f"shard {s} replica 0 vs {r}: {len(first)} vs {len(other)} ids, {len(only)} held by one "
                           f"only {only[:10]}, {len(changed)} differ {changed[:10]}")
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_replica_process_kills_under_writes_leave_every_replica_identical(ray_session, tmp_path):
    cfg = CollectionConfig(name=f"agree{next(_n)}", shards=2, replicas=2,
                           spaces={"v": {"dim": DIM, "metric": "cosine", "index": {"type": "FLAT"}}})
    coord = ingress(cfg, tmp_path)
    rng = np.random.default_rng(7)
    acked: set[str] = set()
    stats = {"written": 0, "refused": 0, "reads": 0, "read_errors": 0, "kills": 0}
    try:
        asyncio.run(coord.upsert([point(i, rng) for i in range(400)]))
        acked.update(f"p{i:06d}" for i in range(400))
        victims = [(0, 0), (1, 1), (0, 1), (1, 0)]

        async def scenario():
            stop_at = time.monotonic() + 18
            loop = HealLoop(coord.heal, period_s=0.5)
            healer = asyncio.create_task(loop.supervise())

            async def writer():
                i = 400
                while time.monotonic() < stop_at:
                    try:
                        await coord.upsert([point(i, rng)])
                        acked.add(f"p{i:06d}")
                        stats["written"] += 1
                    except PrismError:
                        stats["refused"] += 1
                        await asyncio.sleep(0.05)  # poll: the shard is behind; the heal loop brings it back
                    i += 1

            async def reader(seed):
                r = np.random.default_rng(seed)
                while time.monotonic() < stop_at:
                    q = r.standard_normal(DIM).tolist()
                    try:
                        await coord.query(QueryRequest(prefetch=[{"space": "v", "vector": q, "limit": 10}],
                                                       fusion={"method": "none"}, limit=10))
                        stats["reads"] += 1
                    except PrismError:
                        stats["read_errors"] += 1

            async def killer():
                for s, r in victims:
                    await asyncio.sleep(4)  # poll: one kill every 4 s while the writer writes
                    pid = await asyncio.to_thread(actor_pid, coord.shards[s].clients[r])
                    os.kill(pid, signal.SIGKILL)
                    stats["kills"] += 1

            await asyncio.gather(writer(), reader(1), reader(2), killer())
            # Only the ingress's own heal loop runs now, as after a real outage: every replica of every shard must
            # come to hold the same ids and contents within 30 s of the last fault.
            deadline, diff = time.monotonic() + 30, ["not compared yet"]
            while diff and time.monotonic() < deadline:
                await asyncio.sleep(1)  # poll
                diff = await differences(coord)
            stats["equal_after_s"] = round(30 - (deadline - time.monotonic()), 1)
            healer.cancel()
            if diff:
                import ray
                diff.append(f"sequencer views {[ray.get(sh.sequencer.actor.view.remote()) for sh in coord.shards]}")
                diff.append(f"ingress views {[sh.view() for sh in coord.shards]} {[sh.replica_report() for sh in coord.shards]}")
            return diff

        diff = asyncio.run(scenario())
        stats.pop("errors", None)
        assert stats["kills"] == 4 and stats["written"] > 20, stats
        assert not diff, (stats, diff)
        held = set()
        for sh in coord.shards:
            held |= set(asyncio.run(sh.clients[0].ids()))
        assert acked <= held, sorted(acked - held)[:10]
    finally:
        stop(coord)


def test_verify_finds_a_replica_altered_behind_prisms_back_and_anti_entropy_then_repairs_it(es_server, tmp_path):
    """In process, over milvus-lite: rows written straight into one replica's Milvus collection (prism never saw
    them) are named by verify (shard, replica, ids), and the next anti-entropy pass makes the replicas equal."""
    from router.metadata.store import MetadataStore
    from shards.backend import ID_FIELD, META_FIELD, PAYLOAD_FIELD, VECTOR_FIELD
    from shards.local import local_shards, stop_local_shards

    cfg = CollectionConfig(name=f"agree{next(_n)}", shards=1, replicas=2,
                           spaces={"v": {"dim": DIM, "metric": "cosine", "index": {"type": "FLAT"}}})
    store = MetadataStore(es_server.uri)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    try:
        coord = Coordinator.from_clients(cfg, clients, metadata=store)
        rng = np.random.default_rng(3)
        asyncio.run(coord.upsert([point(i, rng) for i in range(40)]))
        clean = asyncio.run(coord.verify())
        assert clean.replicas_equal and not clean.drift, clean
        one = clients[0][1].target
        name = one.names["v"]
        v = rng.standard_normal(DIM).astype(np.float32)
        one.backend.upsert(name, [{ID_FIELD: "p000005", VECTOR_FIELD: (v / np.linalg.norm(v)).tolist(),
                                   PAYLOAD_FIELD: {"i": 5, "tag": "changed behind prism's back"}, META_FIELD: {}}])
        one.backend.delete(name, ["p000007"])
        report = asyncio.run(coord.verify())
        assert report.drift and not report.replicas_equal
        [diff] = report.replica_differences
        assert diff.shard == 0 and {diff.replica, diff.reference} == {0, 1}
        assert diff.differing == 2 and diff.ids == ["p000005", "p000007"]
        sh = coord.shards[0]
        found = asyncio.run(sh.anti_entropy())                     # digests rebuilt by verify's rescan
        assert found is not None and sh.repairs == 2 and sh.mismatches == 1
        assert [st["state"] for st in sh.replica_report()] == ["live", "live"]
        assert asyncio.run(coord.verify()).replicas_equal
        assert not asyncio.run(differences(coord))
    finally:
        stop_local_shards(clients, drop=True)
        store.drop_index(cfg.name)


def test_a_digest_scan_holds_no_write_up_and_misses_none_that_land_during_it(tmp_path):
    """A replica's full digest scan (first use after a restart, a rescan) runs while writes go on: they are not
    blocked by it, and the digest it installs counts them (compared with a fresh scan of the same data)."""
    import threading

    from shards.local import local_shards, stop_local_shards

    cfg = CollectionConfig(name=f"agree{next(_n)}", shards=1, replicas=1,
                           spaces={"v": {"dim": DIM, "metric": "cosine", "index": {"type": "FLAT"}}})
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    shard = clients[0][0].target
    rng = np.random.default_rng(4)
    try:
        shard.upsert([PointRowOf(point(i, rng)) for i in range(30)])
        inside, release = threading.Event(), threading.Event()
        real = shard.backend.iter_rows

        def slow(name, *a):  # the scan reads its rows, then waits until the test has written
            rows = list(real(name, *a))
            inside.set()
            assert release.wait(30)
            yield from rows

        shard.backend.iter_rows = slow
        scan = threading.Thread(target=shard.digest)
        scan.start()
        assert inside.wait(30)
        shard.upsert([PointRowOf(point(i, rng)) for i in range(30, 35)])   # lands during the scan, not blocked
        shard.delete(["p000003"])
        release.set()
        scan.join(30)
        shard.backend.iter_rows = real
        during = shard.digest()
        fresh = shard.digest(0.0)
        assert during["ids"] == fresh["ids"] == 34 and during["buckets"] == fresh["buckets"]
    finally:
        stop_local_shards(clients, drop=True)


def PointRowOf(p: Point):  # noqa: N802 - a Point as the shard stores it
    from shards.api import PointRow

    return PointRow(id=p.id, payload=p.payload, meta={}, vectors=p.vectors)


def test_a_point_rewritten_without_one_of_its_spaces_is_copied_exactly_and_anti_entropy_settles(tmp_path):
    """Review of issue 26. Two spaces; a point written with vectors in both, then rewritten with a vector in one
    only (the upsert's note says searches in the other will not find it). A copy of that point (anti-entropy's
    repair, a resync, an undo) must make the target hold exactly what the source holds, space by space, or the
    replicas never compare equal again: anti-entropy would find them different on every pass."""
    from shards.local import local_shards, stop_local_shards

    spaces = {"a": {"dim": 4, "metric": "cosine", "index": {"type": "FLAT"}},
              "b": {"dim": 4, "metric": "cosine", "index": {"type": "FLAT"}}}
    cfg = CollectionConfig(name=f"agree{next(_n)}", shards=1, replicas=2, spaces=spaces)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    try:
        coord = Coordinator.from_clients(cfg, clients)
        sh = coord.shards[0]
        asyncio.run(coord.upsert([Point(id="x", payload={"v": 1}, vectors={"a": [1, 0, 0, 0], "b": [0, 1, 0, 0]}),
                                  Point(id="y", payload={"v": 1}, vectors={"a": [1, 1, 0, 0], "b": [0, 1, 1, 0]})]))
        asyncio.run(coord.upsert([Point(id="x", payload={"v": 2}, vectors={"a": [1, 0, 0, 1]})]))

        def per_space(r):
            t = clients[0][r].target
            return {s: t.backend.rows(n, ["x", "y"]) for s, n in t.names.items()}

        assert per_space(0) == per_space(1)
        assert "x" not in per_space(0)["b"]      # the rewrite has no vector in b: b does not hold it any more
        other = sh.state.preference[1]           # not the reference (with two replicas a tie goes to it)
        one = clients[0][other].target           # it loses x behind prism's back; anti-entropy repairs it
        one.backend.delete(one.names["a"], ["x"])
        one.backend.delete(one.names["b"], ["x"])
        asyncio.run(sh.anti_entropy(0.0))
        assert per_space(0) == per_space(1), (per_space(0), per_space(1))
        assert [st["state"] for st in sh.replica_report()] == ["live", "live"]
        found = asyncio.run(sh.anti_entropy(0.0))  # and the next pass finds nothing to repair
        assert found is not None and found.equal and sh.mismatches == 1
    finally:
        stop_local_shards(clients, drop=True)


def test_writes_whose_sequencer_died_before_logging_them_end_the_same_in_elasticsearch_and_the_shards(es_server,
                                                                                                      tmp_path):
    """Review of issue 26. A sequencer that dies drops the writes it had not logged yet (those waiting for the
    shard's write lock, say); the ingress gets ShardUnavailable for each, which rolls forward: Elasticsearch keeps
    the upsert or the delete, on the promise that the journal replays it to the shards. For a write never logged
    nothing replays it: the two stores must still end the same (verify finds no drift)."""
    from cluster.errors import ShardUnavailable
    from router.metadata.store import MetadataStore
    from router.replication.replicas import ReplicatedShard
    from router.replication.sequencer import Journal, Sequencer
    from shards.local import local_shards, stop_local_shards

    cfg = CollectionConfig(name=f"agree{next(_n)}", shards=1, replicas=2,
                           spaces={"v": {"dim": DIM, "metric": "cosine", "index": {"type": "FLAT"}}})
    store = MetadataStore(es_server.uri)
    store.ensure_index(cfg)
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path, None))
    sq = Sequencer(ReplicatedShard(0, clients[0], key=f"{cfg.name}/0", journal=Journal(tmp_path / "journal")))

    class DiesBeforeLogging:
        """The ingress's handle on the sequencer actor; `deaths`: that many calls meet it dead (not logged)."""
        initial, deaths = sq.initial, 0

        async def write(self, kind, args, wait=True):
            if self.deaths:
                self.deaths -= 1
                raise ShardUnavailable("shard 0: its sequencer is unavailable (Ray restarts it): the actor died",
                                       shards=[0])
            return await sq.write(kind, args, wait)

        async def heal(self):
            return await sq.heal()

        async def compare(self):
            return await sq.compare()

    handle = DiesBeforeLogging()
    try:
        coord = Coordinator.from_clients(cfg, clients, sequencers=[handle], metadata=store, poll_sequencer=False)
        rng = np.random.default_rng(5)
        asyncio.run(coord.upsert([point(i, rng) for i in range(5)]))
        handle.deaths = 1
        try:
            asyncio.run(coord.upsert([point(7, rng)]))
        except ShardUnavailable:
            pass  # a 503 is fine; the stores disagreeing afterwards is not
        handle.deaths = 1
        try:
            asyncio.run(coord.delete(["p000001"]))
        except ShardUnavailable:
            pass
        for _ in range(2):
            asyncio.run(coord.heal())
        report = asyncio.run(coord.verify())
        assert not report.drift, report
        assert not asyncio.run(differences(coord))
    finally:
        sq.host.journal.close()
        stop_local_shards(clients, drop=True)
        store.drop_index(cfg.name)
