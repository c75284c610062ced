"""Aliases end to end on two ingress replicas (two PrismService instances over one data dir, real milvus-lite shards
shared as Ray's named actors are): a switch under a running query load fails no query and every query begun after
it reads the new collection on both ingresses; an aliased collection cannot be deleted; gRPC and HTTP take the
alias, and a read key cannot switch it."""
from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from cluster.auth import KeySource, new_key
from cluster.errors import CollectionAliased, CollectionExists
from cluster.proto.prism.v1 import prism_pb2 as pb
from router.serving import grpc_api as g
from router.serving.access import Guard
from tests.clock import FakeClock
from tests.grpc_context import Ctx
from tests.integration.test_shared_catalog import DIM, Actors, vec


def points(prefix: str, n: int) -> dict:
    return {"points": [{"id": f"{prefix}{k}", "payload": {"n": k}, "vectors": {"v": vec(k)}} for k in range(n)]}


@pytest.fixture
def two(tmp_path):
    actors = Actors(tmp_path)
    a, b = actors.service(), actors.service()
    for name in ("A", "B"):
        asyncio.run(a.create_collection(name, {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}}))
        asyncio.run(a.upsert(name, points(name.lower(), 20)))
    asyncio.run(a.set_alias("prod", {"collection": "A"}))
    yield a, b
    for seq in list(actors.sequencers.values()):
        seq.host.journal.close()
    for row in actors.shards.values():
        for c in row:
            c.target.close()


def sources(answer) -> set[str]:
    return {h.id[0] for h in answer.hits}


def test_a_switch_under_query_load_fails_no_query_and_then_reads_the_new_collection(two):
    a, b = two
    query = {"prefetch": [{"space": "v", "vector": vec(3), "limit": 5}], "limit": 5, "cache": False}
    log: list[tuple[bool, set[str]]] = []  # (begun after the switch returned, collections the hits came from)
    failures: list[BaseException] = []
    switched = asyncio.Event()

    async def client(svc, after: int):
        seen_after = 0
        while seen_after < after:
            begun_after = switched.is_set()
            try:
                log.append((begun_after, sources(await svc.query("prod", query))))
            except Exception as exc:  # noqa: BLE001 - counted: the test asserts there are none
                failures.append(exc)
            seen_after += begun_after
            await asyncio.sleep(0)

    async def scenario():
        clients = [asyncio.create_task(client(svc, 15)) for svc in (a, b, a, b)]
        while len(log) < 20:
            await asyncio.sleep(0)
        assert (await a.set_alias("prod", {"collection": "B"})).previous == "A"
        switched.set()
        await asyncio.gather(*clients)

    asyncio.run(scenario())
    assert failures == []
    before = [s for begun_after, s in log if not begun_after]
    after = [s for begun_after, s in log if begun_after]
    assert len(before) >= 20 and len(after) >= 60
    assert all(s == {"a"} for s in before[:20]) and all(s in ({"a"}, {"b"}) for s in before)
    assert all(s == {"b"} for s in after)  # both ingresses, every query begun after the switch
    assert b.list_aliases().aliases == {"prod": "B"}
    assert (asyncio.run(b.info("prod"))).name == "B"


def test_an_aliased_collection_cannot_be_deleted_nor_a_collection_take_an_alias_name(two):
    a, b = two
    with pytest.raises(CollectionAliased, match="alias 'prod'"):
        asyncio.run(b.delete_collection("A"))
    with pytest.raises(CollectionAliased, match="alias 'prod'"):
        asyncio.run(b.delete_collection("prod"))  # through the alias: the same collection, the same refusal
    with pytest.raises(CollectionExists, match="alias 'prod'"):
        asyncio.run(b.create_collection("prod", {"spaces": {"v": {"dim": DIM}}}))
    assert asyncio.run(b.count("prod", {})).count == 20  # nothing was dropped
    asyncio.run(a.set_alias("prod", {"collection": "B"}))
    assert asyncio.run(b.delete_collection("A")) == {"deleted": "A"}  # no alias points to it any more
    asyncio.run(a.delete_alias("prod"))
    assert asyncio.run(b.delete_collection("B")) == {"deleted": "B"}


def test_grpc_and_http_take_the_alias_and_a_read_key_cannot_switch_it(two, monkeypatch):
    from router.serving.app import api
    from router.serving.metrics import process_state

    a, _ = two
    (admin, admin_rec), (read, read_rec) = new_key("admin"), new_key("read")
    guard = Guard(KeySource([admin_rec, read_rec], None, environ={}), clock=FakeClock())

    def rpc(method, request, key):
        ctx = Ctx([("x-api-key", key)])
        return asyncio.run(g.handle(method, request, ctx, service=a, guard=guard)), ctx

    q = pb.QueryRequest(collection="prod", limit=3, prefetch=[pb.Prefetch(space="v", vector=vec(1))])
    answer, ctx = rpc("Query", q, read)
    assert ctx.code is None and {h.id[0] for h in answer.hits} == {"a"}
    _, ctx = rpc("SetAlias", pb.SetAliasRequest(alias="prod", collection="B"), read)
    assert ctx.code == grpc.StatusCode.PERMISSION_DENIED
    listed, ctx = rpc("ListAliases", pb.ListAliasesRequest(), read)
    assert ctx.code is None and dict(listed.aliases) == {"prod": "A"}

    monkeypatch.setattr(process_state(), "guard", guard)
    monkeypatch.setattr(process_state(), "service", a)

    async def http():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://127.0.0.1") as c:
            refused = await c.put("/v1/aliases/prod", json={"collection": "B"}, headers={"x-api-key": read})
            listed = await c.get("/v1/aliases", headers={"x-api-key": read})
            done = await c.put("/v1/aliases/prod", json={"collection": "B"}, headers={"x-api-key": admin})
            return refused, listed, done

    refused, listed, done = asyncio.run(http())
    assert refused.status_code == 403 and listed.json() == {"aliases": {"prod": "A"}}
    assert done.status_code == 200 and done.json() == {"alias": "prod", "collection": "B", "previous": "A"}
    answer, ctx = rpc("Query", q, read)
    assert ctx.code is None and {h.id[0] for h in answer.hits} == {"b"}
