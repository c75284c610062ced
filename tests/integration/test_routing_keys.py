"""Key routing end to end, in process: real milvus-lite shards (two replicas each) and the real noida-db. Where each
point physically sits is read from every replica of every shard, not from the answers."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from cluster.config import ClusterConfig
from cluster.errors import InvalidRequest, ShardUnavailable
from cluster.ring import HashRing
from router.collection.service import PrismService
from router.metadata.store import metadata_store
from tests.integration.routing_support import run_readme_example

SHARDS, TENANTS, N, DIM = 6, 5, 240, 4
KEYED = {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}, "shards": SHARDS, "replicas": 2,
         "metadata": {"tenant": "keyword", "n": "integer"}, "routing": {"method": "key", "field": "tenant"}}
RING = HashRing(range(SHARDS))  # key routing puts a tenant on the ring's owner of its value


def owner(tenant: str) -> int:
    return int(RING.get(tenant))


def vec(rng) -> list[float]:
    return rng.standard_normal(DIM).tolist()


def point(i: int, tenant: str, rng) -> dict:
    return {"id": f"p{i:03d}", "vectors": {"v": vec(rng)}, "payload": {"tenant": tenant, "n": i}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, es_server):
    """One service over the real stores with a key-routed collection of N points and a hash-routed one; a single
    event loop for the module (the shards' replica sets keep loop-bound state between calls)."""
    cfg = ClusterConfig(data_dir=str(tmp_path_factory.mktemp("routing")),
                        elasticsearch={"mode": "external", "url": es_server.uri})
    svc = PrismService(cfg, metadata=metadata_store(cfg))
    runner = asyncio.Runner()
    rng = np.random.default_rng(7)
    run = runner.run
    run(svc.create_collection("keyed", KEYED))
    run(svc.upsert("keyed", {"points": [point(i, f"t{i % TENANTS}", rng) for i in range(N)]}))
    run(svc.create_collection("hashed", {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}, "shards": 4}))
    run(svc.upsert("hashed", {"points": [point(i, "any", rng) for i in range(40)]}))
    yield svc, run, rng
    for name in list(svc.coordinators):
        run(svc.delete_collection(name))
    runner.close()


def held(svc, run, name="keyed") -> list[list[dict[str, str]]]:
    """Per shard, per replica: {id: tenant} of every point that replica holds (read from the replica itself)."""
    coord = svc.coordinator(name)

    async def read():
        out = []
        for sh in coord.shards:
            row = []
            for client in sh.clients:
                ids = await client.ids()
                got = await client.get(ids, []) if ids else {}
                row.append({i: p.payload.get("tenant") for i, p in got.items()})
            out.append(row)
        return out
    return run(read())


def copies(layout, pid: str) -> list[int]:
    """The shards on which any replica holds `pid`, checking that every replica of a shard agrees."""
    where = []
    for s, row in enumerate(layout):
        has = {pid in replica for replica in row}
        assert len(has) == 1, f"replicas of shard {s} disagree on {pid}"
        if has.pop():
            where.append(s)
    return where


def es_payloads(svc, ids) -> dict:
    return svc.metadata.sources("keyed", ids)


def ask(run, svc, name, **body):
    return run(svc.query(name, {"prefetch": [{"space": "v", "vector": [1.0, 0.0, 0.0, 0.0]}], "limit": 100,
                                "with_payload": True, **body}))


def test_the_collection_shows_its_routing_and_bad_settings_are_422_naming_the_field(world):
    svc, run, _ = world
    assert run(svc.info("keyed")).routing == {"method": "key", "field": "tenant", "state": "ready"}
    assert run(svc.info("hashed")).routing == {"method": "hash", "state": "hash"}
    base = {"spaces": {"v": {"dim": DIM}}, "metadata": {"tenant": "keyword", "note": "text"}}
    for routing, field in (({"method": "key", "field": "nope"}, "routing.field"),
                           ({"method": "key", "field": "note"}, "routing.field"),  # text: not one exact value
                           ({"method": "vector", "space": "w"}, "routing.space"),
                           ({"method": "ring"}, "routing.method"),
                           ({"method": "key", "field": "tenant", "x": 1}, "routing.x")):
        with pytest.raises(InvalidRequest) as err:
            run(svc.create_collection("bad", {**base, "routing": routing}))
        assert err.value.field == field, routing
    assert "bad" not in svc.list_collections()


def test_every_point_lives_on_its_keys_shard_on_every_replica(world):
    svc, run, _ = world
    layout = held(svc, run)
    for s, row in enumerate(layout):
        assert row[0] == row[1]
        assert all(owner(t) == s for t in row[0].values()), s
    assert sum(len(row[0]) for row in layout) == N  # each point once
    assert len({owner(f"t{k}") for k in range(TENANTS)}) > 1  # the tenants really spread over several shards


def test_a_tenant_query_visits_its_shard_alone_and_sees_only_that_tenant(world):
    svc, run, _ = world
    for k in range(TENANTS):
        got = ask(run, svc, "keyed", filter={"term": {"tenant": f"t{k}"}})
        assert got.coverage.routed == [owner(f"t{k}")] and got.coverage.shards_total == SHARDS
        assert got.coverage.shards_answered == 1 and not got.partial
        assert {h.payload["tenant"] for h in got.hits} == {f"t{k}"}
        assert len(got.hits) == N // TENANTS
    both = ask(run, svc, "keyed", filter={"bool": {"filter": [{"terms": {"tenant": ["t0", "t1"]}},
                                                              {"range": {"n": {"gte": 0}}}]}})
    assert both.coverage.routed == sorted({owner("t0"), owner("t1")})
    assert {h.payload["tenant"] for h in both.hits} == {"t0", "t1"}
    assert ask(run, svc, "keyed").coverage.routed == list(range(SHARDS))  # no key pinned: every shard
    loose = ask(run, svc, "keyed", filter={"bool": {"should": [{"term": {"tenant": "t0"}}]}})
    assert loose.coverage.routed == list(range(SHARDS))  # should never pins
    never = ask(run, svc, "keyed", filter={"bool": {"filter": [{"term": {"tenant": "t0"}},
                                                               {"term": {"tenant": "t1"}}]}})
    assert never.coverage.routed == [] and never.hits == [] and not never.partial  # two keys at once: no point


def test_hash_routing_visits_every_shard(world):
    svc, run, _ = world
    got = ask(run, svc, "hashed", filter={"term": {"tenant": "any"}})
    assert got.coverage.routed == [0, 1, 2, 3] and got.coverage.shards_answered == 4 and len(got.hits) == 40


def test_an_upsert_without_the_key_is_422_and_writes_nothing_anywhere(world):
    svc, run, rng = world
    for bad in ({"n": 1}, {"tenant": None}, {"tenant": ["t0", "t1"]}, {"tenant": {"x": 1}}, {"tenant": True}):
        body = {"points": [point(900, "t0", rng), {"id": "p901", "vectors": {"v": vec(rng)}, "payload": bad}]}
        with pytest.raises(InvalidRequest) as err:
            run(svc.upsert("keyed", body))
        assert err.value.field == "points[1].payload.tenant", bad
    layout = held(svc, run)
    assert copies(layout, "p900") == [] and copies(layout, "p901") == []
    assert es_payloads(svc, ["p900", "p901"]) == {}
    assert run(svc.count("keyed", {})).count == N


def test_a_one_value_list_key_is_found_by_its_tenants_query(world):
    svc, run, rng = world
    run(svc.upsert("keyed", {"points": [{"id": "p960", "vectors": {"v": vec(rng)}, "payload": {"tenant": ["t2"]}}]}))
    try:
        assert copies(held(svc, run), "p960") == [owner("t2")]
        got = ask(run, svc, "keyed", filter={"term": {"tenant": "t2"}}, limit=N)
        assert "p960" in {h.id for h in got.hits}
    finally:
        run(svc.delete_points("keyed", {"ids": ["p960"]}))


def test_an_update_that_changes_the_key_moves_the_point(world):
    svc, run, rng = world
    old, new = "t0", next(f"t{k}" for k in range(1, TENANTS) if owner(f"t{k}") != owner("t0"))
    pid = "p000"  # 0 % TENANTS: tenant t0
    assert copies(held(svc, run), pid) == [owner(old)]
    run(svc.upsert("keyed", {"points": [{"id": pid, "vectors": {"v": vec(rng)}, "payload": {"tenant": new, "n": 0}}]}))
    layout = held(svc, run)
    assert copies(layout, pid) == [owner(new)]  # exactly one copy, on the new key's shard, on both replicas
    assert es_payloads(svc, [pid])[pid]["tenant"] == new
    assert pid in {h.id for h in ask(run, svc, "keyed", filter={"term": {"tenant": new}}).hits}
    assert pid not in {h.id for h in ask(run, svc, "keyed", filter={"term": {"tenant": old}}).hits}
    everywhere = [h.id for h in ask(run, svc, "keyed", limit=N).hits]
    assert everywhere.count(pid) == 1 and len(everywhere) == N
    got = run(svc.retrieve("keyed", {"ids": [pid]}))
    assert got.points[0].payload["tenant"] == new and not got.missing
    # a vector update (read by id, written back) keeps it where it is
    run(svc.update_vectors("keyed", {"points": [{"id": pid, "vectors": {"v": vec(rng)}}]}))
    assert copies(held(svc, run), pid) == [owner(new)]


def test_deletes_points_by_id_and_scroll_count_and_get_work(world):
    svc, run, rng = world
    ids = [f"p{i:03d}" for i in (1, 2, 3)]
    run(svc.upsert("keyed", {"points": [point(950 + k, f"t{k}", rng) for k in range(3)]}))
    assert sorted(p.id for p in run(svc.retrieve("keyed", {"ids": ids + ["nope"]})).points) == ids
    gone = run(svc.delete_points("keyed", {"ids": ids + ["p950", "p951", "p952"]}))
    assert gone.deleted == 6
    layout = held(svc, run)
    assert all(copies(layout, i) == [] for i in ids)
    assert run(svc.retrieve("keyed", {"ids": ids})).missing == ids
    assert run(svc.count("keyed", {})).count == N - 3
    seen, cursor = [], None
    while True:
        page = run(svc.scroll("keyed", {"limit": 50, **({"cursor": cursor} if cursor else {})}))
        seen += [p.id for p in page.points]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == N - 3


@pytest.mark.parametrize("probe", [0, -1, "x", 1.5, True, "ALL", [2]])
def test_a_bad_probe_is_422_naming_it(world, probe):
    svc, run, _ = world
    with pytest.raises(InvalidRequest) as err:
        ask(run, svc, "keyed", probe=probe)
    assert err.value.field == "probe"


def test_a_good_probe_is_taken(world):
    svc, run, _ = world
    for probe in (1, 3, "all"):
        assert ask(run, svc, "hashed", probe=probe).coverage.routed == [0, 1, 2, 3]


def test_resharding_a_key_routed_collection_is_refused(world):
    svc, run, _ = world
    with pytest.raises(InvalidRequest, match="routes points by key 'tenant'") as err:
        run(svc.reshard("keyed", {"shards": SHARDS + 1}))
    assert err.value.status == 422 and err.value.field == "shards"
    assert svc.coordinator("keyed").config.shards == SHARDS and not svc.coordinator("keyed").paused


def test_verify_reports_a_point_planted_on_the_wrong_shard(world):
    svc, run, _ = world
    coord = svc.coordinator("keyed")
    assert run(svc.verify("keyed")).misplaced == 0
    pid = "p010"
    home = copies(held(svc, run), pid)[0]
    wrong = (home + 1) % SHARDS
    rows = run(coord.shards[home].read(lambda c: c.export([pid])))
    run(coord.shards[wrong].upsert(rows))  # a stray second copy, on every replica of another shard
    try:
        report = run(svc.verify("keyed"))
        assert report.drift and report.misplaced == 1
        assert [(m.id, m.shard, m.placement) for m in report.sample_misplaced] == [(pid, wrong, home)]
    finally:
        run(coord.shards[wrong].delete([pid]))
    assert run(svc.verify("keyed")).misplaced == 0


def test_verify_reports_a_stale_copy_left_on_the_old_keys_shard(world):
    """A key change whose old copy was never deleted: each copy agrees with its own payload's key, so only a point
    found on two shards gives it away."""
    svc, run, _ = world
    coord = svc.coordinator("keyed")
    pid = "p020"
    home = copies(held(svc, run), pid)[0]
    stale_tenant = next(f"t{k}" for k in range(TENANTS) if owner(f"t{k}") != home)
    (row,) = run(coord.shards[home].read(lambda c: c.export([pid])))
    row.payload["tenant"] = stale_tenant
    run(coord.shards[owner(stale_tenant)].upsert([row]))
    try:
        report = run(svc.verify("keyed"))
        assert report.drift and report.misplaced == 1
        assert [m.id for m in report.sample_misplaced] == [pid]
    finally:
        run(coord.shards[owner(stale_tenant)].delete([pid]))
    assert not run(svc.verify("keyed")).drift


def test_a_key_change_whose_new_copy_misses_its_quorum_leaves_no_old_copy(world, monkeypatch):
    """The new copy's write is logged but short of its quorum (ShardUnavailable: it rolls forward, and
    Elasticsearch keeps the new key): the old copy must go too, or nothing would ever find it again."""
    svc, run, rng = world
    coord = svc.coordinator("keyed")
    pid = "p021"
    (old,) = copies(held(svc, run), pid)
    new = next(f"t{k}" for k in range(TENANTS) if owner(f"t{k}") != old)
    target = coord.shards[owner(new)]
    real = target.upsert

    async def short_of_quorum(rows, wait=True):
        await real(rows, wait)
        raise ShardUnavailable("injected: quorum missed", shards=[owner(new)])

    monkeypatch.setattr(target, "upsert", short_of_quorum)
    with pytest.raises(ShardUnavailable):
        run(svc.upsert("keyed", {"points": [{"id": pid, "vectors": {"v": vec(rng)}, "payload": {"tenant": new}}]}))
    monkeypatch.undo()
    assert copies(held(svc, run), pid) == [owner(new)]
    assert es_payloads(svc, [pid])[pid]["tenant"] == new
    assert not run(svc.verify("keyed")).drift


def test_the_routing_setting_survives_a_restart(tmp_path, es_server):
    cfg = ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "external", "url": es_server.uri})
    rng = np.random.default_rng(1)
    first = PrismService(cfg, metadata=metadata_store(cfg))
    body = {**KEYED, "shards": 2, "replicas": 1}
    asyncio.run(first.create_collection("kept", body))
    asyncio.run(first.upsert("kept", {"points": [point(1, "t1", rng)]}))
    first.close()
    again = PrismService(cfg, metadata=metadata_store(cfg))
    try:
        assert again.open_catalog() == ["kept"]
        assert asyncio.run(again.info("kept")).routing == {"method": "key", "field": "tenant", "state": "ready"}
        with pytest.raises(InvalidRequest):  # the placement is back: the key is required again
            asyncio.run(again.upsert("kept", {"points": [{"id": "x", "vectors": {"v": vec(rng)}}]}))
        got = asyncio.run(again.query("kept", {"prefetch": [{"space": "v", "vector": vec(rng)}],
                                               "filter": {"term": {"tenant": "t1"}}}))
        assert [h.id for h in got.hits] == ["p001"] and got.coverage.routed == [int(HashRing(range(2)).get("t1"))]
    finally:
        asyncio.run(again.delete_collection("kept"))


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_routing_example() -> str:
    section = README.read_text().split("### Routing", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(# prism-example.*?)```", section, flags=re.S)
    return code


def test_the_readme_routing_example_runs(world):
    """The README's Routing example, its HTTP calls answered in process by the service (tests/e2e/test_readme.py
    runs it against a live server too)."""
    svc, run, _ = world

    run_readme_example(readme_routing_example(), svc, run)
    assert "tenants" not in svc.list_collections()
