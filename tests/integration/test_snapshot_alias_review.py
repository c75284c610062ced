"""Review of issue 32 (snapshots, restore, aliases), in process over milvus-lite, HTTP through the FastAPI app:
a snapshot named through an alias is its target's; a key scoped to
some collections cannot restore another's snapshot nor switch an alias onto a collection it cannot see (HTTP and
gRPC); a read key changes nothing; odd payloads survive a snapshot and restore; a missing file is refused naming it
and leaves nothing behind; every read and write endpoint takes an alias."""
from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from cluster.auth import KeySource, new_key
from cluster.config import ClusterConfig
from cluster.errors import CollectionExists, InvalidRequest
from cluster.proto.prism.v1 import prism_pb2 as pb
from router.collection.service import PrismService
from router.serving import grpc_api as g
from router.serving.access import Guard
from tests.clock import FakeClock
from tests.grpc_context import Ctx

DIM = 4
SPACE = {"v": {"dim": DIM, "index": {"type": "FLAT"}}}
ODD = [  # unicode ids and payloads, nested JSON, nulls, a big payload
    {"id": "ünï-☃", "payload": {"t": "日本語 ✓", "n": None, "deep": {"a": [1, {"b": None}, "x"]}}},
    {"id": "p1", "payload": {"big": "x" * 60_000, "list": [None, True, 1.5]}},
    {"id": "p2", "payload": {}},
    {"id": "p3", "payload": {"emoji": "🦀", "k": "k"}},
]


def vec(k: int) -> list[float]:
    return [float(k), 1.0, 0.5, -1.0]


def body(points: list[dict]) -> dict:
    return {"points": [{**p, "vectors": {"v": vec(i)}} for i, p in enumerate(points)]}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """One service for the file (each test names its own new collections; the last one changes A)."""
    s = PrismService(ClusterConfig(data_dir=str(tmp_path_factory.mktemp("review")), elasticsearch={"mode": "off"}))

    async def setup():
        await s.create_collection("A", {"spaces": SPACE, "shards": 2})
        await s.create_collection("B", {"spaces": SPACE})
        await s.upsert("A", body(ODD))
        await s.upsert("B", body([{"id": f"b{i}", "payload": {"secret": i}} for i in range(3)]))
        await s.set_alias("prod", {"collection": "A"})
    asyncio.run(setup())
    return s


def state(rows) -> dict:
    return {r.id: (r.payload, [round(x, 5) for x in r.vectors["v"]]) for r in rows}


async def held(s: PrismService, name: str) -> dict:
    out = {}
    for sh in s.coordinator(name).shards:
        ids = await sh.read(lambda c: c.ids())
        out.update(state(await sh.read(lambda c, ids=ids: c.export(ids))))
    return out


def test_a_snapshot_through_an_alias_is_its_targets_and_odd_payloads_restore_exactly(svc):
    async def scenario():
        s = await svc.snapshots.create("prod")
        listed = [x["id"] for x in (await svc.snapshots.list("A"))["snapshots"]]
        r = await svc.snapshots.restore("A2", {"snapshot": s["id"], "shards": 3})
        return s, listed, r, await held(svc, "A"), await held(svc, "A2")

    s, listed, r, a, a2 = asyncio.run(scenario())
    assert s["collection"] == "A" and s["id"].startswith("A-")  # named by the collection, not the alias
    assert listed == [s["id"]]
    assert r["points"] == len(ODD) and a2 == a and set(a) == {p["id"] for p in ODD}
    for taken in ("A", "prod", "PROD", "a"):  # a collection's, an alias's name, or one differing only in case
        with pytest.raises(CollectionExists):
            asyncio.run(svc.snapshots.restore(taken, {"snapshot": s["id"]}))
    assert not {"PROD", "a"} & set(svc.list_collections()) and svc.catalog.aliases() == {"prod": "A"}
    assert asyncio.run(svc.snapshots.delete("prod", s["id"])) == {"deleted": s["id"]}  # the alias names A
    assert asyncio.run(svc.snapshots.list("A"))["snapshots"] == []


def test_a_missing_file_is_refused_naming_it_and_leaves_nothing(svc):
    sid = asyncio.run(svc.snapshots.create("A"))["id"]
    store = svc.snapshots.store
    store.fs.rm(f"{store.root}/{sid}/shards/1/v.parquet")
    with pytest.raises(InvalidRequest, match="file shards/1/v.parquet is missing"):
        asyncio.run(svc.snapshots.restore("A3", {"snapshot": sid}))
    assert "A3" not in svc.list_collections() and svc.catalog.stamp("A3") is None
    assert not (svc.config.data_path / "collections" / "A3").exists()


@pytest.fixture
def http(svc, monkeypatch):
    from router.serving.app import api
    from router.serving.metrics import process_state

    keys = {"admin": new_key("admin"), "read": new_key("read"), "scoped": new_key("admin", ["A", "A4", "prod"])}
    guard = Guard(KeySource([rec for _, rec in keys.values()], None, environ={}), clock=FakeClock())
    monkeypatch.setattr(process_state(), "guard", guard)
    monkeypatch.setattr(process_state(), "service", svc)

    async def call(method: str, path: str, who: str, json=None):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://127.0.0.1") as c:
            return await c.request(method, path, json=json, headers={"x-api-key": keys[who][0]})

    def rpc(method, request, who):
        ctx = Ctx([("x-api-key", keys[who][0])])
        return asyncio.run(g.handle(method, request, ctx, service=svc, guard=guard)), ctx

    return lambda *a, **k: asyncio.run(call(*a, **k)), rpc, keys


def test_a_read_key_or_a_scoped_key_changes_nothing_it_may_not(svc, http):
    call, rpc, keys = http
    sid_b = call("POST", "/v1/collections/B/snapshots", "admin").json()["id"]
    sid_a = call("POST", "/v1/collections/A/snapshots", "admin").json()["id"]
    before = len(svc.snapshots.store.ids())
    fs, root = svc.snapshots.store.fs, svc.snapshots.store.root
    held_bytes = b"".join(fs.cat_file(f) for f in fs.find(f"{root}/{sid_a}"))
    for key, rec in keys.values():  # no key, nor what is stored instead of one, is in a snapshot's files
        assert key.encode() not in held_bytes and rec.hash.encode() not in held_bytes
    assert call("POST", "/v1/collections/A/snapshots", "read").status_code == 403
    assert call("DELETE", f"/v1/collections/A/snapshots/{sid_a}", "read").status_code == 403
    assert call("POST", "/v1/collections/N/restore", "read", json={"snapshot": sid_a}).status_code == 403
    assert call("PUT", "/v1/aliases/prod", "read", json={"collection": "B"}).status_code == 403
    assert call("DELETE", "/v1/aliases/prod", "read").status_code == 403
    assert call("POST", "/v1/collections/B/snapshots", "scoped").status_code == 403
    # scoped to A, A4 and prod: B's snapshot is not its to restore, B not its to point prod at
    r = call("POST", "/v1/collections/A4/restore", "scoped", json={"snapshot": sid_b})
    assert r.status_code == 403, r.text
    assert "A4" not in svc.list_collections()
    r = call("PUT", "/v1/aliases/prod", "scoped", json={"collection": "B"})
    assert r.status_code == 403, r.text
    _, ctx = rpc("SetAlias", pb.SetAliasRequest(alias="prod", collection="B"), "scoped")
    assert ctx.code == grpc.StatusCode.PERMISSION_DENIED
    assert call("PUT", "/v1/aliases/other", "scoped", json={"collection": "A"}).status_code == 403  # not its name
    assert svc.catalog.aliases() == {"prod": "A"} and len(svc.snapshots.store.ids()) == before
    # what it may do, it can
    assert call("POST", "/v1/collections/A4/restore", "scoped", json={"snapshot": sid_a}).status_code == 200
    assert call("DELETE", "/v1/collections/A/snapshots/" + sid_a, "scoped").status_code == 200
    for name in ("A", "prod"):  # aliased: refused on gRPC (HTTP and the service: tests/integration/test_aliases)
        _, ctx = rpc("Drop", pb.DropCollectionRequest(name=name), "admin")
        assert ctx.code is not None and "alias 'prod'" in ctx.details
    assert "A" in svc.list_collections()


def test_every_read_and_write_endpoint_takes_an_alias(svc, http):
    """The Ingress class's routes are thin calls of these service methods (run over HTTP in tests/e2e); the
    /qdrant routes and gRPC run here through their own entry points."""
    call, rpc, _ = http

    async def service():
        return (await svc.scroll("prod", {"limit": 10}), await svc.count("prod", {}),
                await svc.retrieve("prod", {"ids": ["p2"]}),
                await svc.query_batch("prod", {"queries": [{"prefetch": [{"space": "v", "vector": vec(1),
                                                                          "limit": 2}], "limit": 2}]}),
                await svc.update_vectors("prod", {"points": [{"id": "p2", "vectors": {"v": vec(9)}}]}),
                await svc.delete_points("prod", {"ids": ["p3"]}))

    scrolled, counted, got, batch, _, _ = asyncio.run(service())
    assert len(scrolled.points) == counted.count == len(ODD) and [r.id for r in got.points] == ["p2"]
    assert len(batch.results[0].hits) == 2
    held_a = asyncio.run(held(svc, "A"))
    assert "p3" not in held_a and held_a["p2"][1] == vec(9)
    qd = [call("POST", "/qdrant/collections/prod/points/count", "read", json={}),
          call("POST", "/qdrant/collections/prod/points/scroll", "read", json={"limit": 10}),
          call("GET", "/qdrant/collections/prod", "read")]
    assert [r.status_code for r in qd] == [200] * 3, [r.text[:300] for r in qd]
    assert qd[0].json()["result"]["count"] == len(ODD) - 1
    for method, req in (("Query", pb.QueryRequest(collection="prod", limit=2,
                                                   prefetch=[pb.Prefetch(space="v", vector=vec(1))])),
                        ("Get", pb.GetCollectionRequest(name="prod"))):
        answer, ctx = rpc(method, req, "read")
        assert ctx.code is None, (method, ctx.details)
