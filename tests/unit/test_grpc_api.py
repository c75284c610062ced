"""The gRPC API's pure core: stubs match the proto, requests become the HTTP bodies, answers fit the proto, errors
map to status codes with the field named, and the guard rules gRPC calls as it rules HTTP ones."""
from __future__ import annotations

import asyncio
import filecmp
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from cluster.auth import KeySource, new_key
from cluster.client import _answer, query_proto_dict
from cluster.errors import (BackendError, CollectionExists, CollectionNotFound, InvalidRequest, PayloadTooLarge,
                            ShardUnavailable)
from router.serving import grpc_api as g
from router.serving.access import Guard
from router.schema.points import UpsertResponse
from router.schema.query import QueryResponse
from cluster.proto.prism.v1 import prism_pb2 as pb
from tests.clock import FakeClock
from tests.grpc_context import Ctx

ROOT = Path(__file__).resolve().parents[2]
PROTO = "cluster/proto/prism/v1/prism.proto"


def test_generated_stubs_match_the_proto(tmp_path):
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", PROTO], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("prism_pb2.py", "prism_pb2_grpc.py"):
        fresh, committed = tmp_path / "cluster/proto/prism/v1" / name, ROOT / "cluster/proto/prism/v1" / name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"{committed} differs from what {PROTO} generates: regenerate it (command in the proto's header)")


def test_the_proto_ships_in_the_package():
    """The .proto is package data of the package that holds it (other languages' stubs are made from it)."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pkg, globs in data.items() for g in globs for p in (ROOT / pkg.replace(".", "/")).glob(g)}
    assert ROOT / PROTO in shipped


def f32(values) -> list[float]:
    return [float(x) for x in np.asarray(values, dtype=np.float32)]


RICH_QUERY = {
    "prefetch": [
        {"space": "emb", "vector": [0.25, -0.5, 0.125], "limit": 7, "params": {"ef": 64},
         "filter": {"bool": {"must": [{"term": {"n": 5}}, {"range": {"price": {"gte": 1.5}}}]}}},
        {"space": "text", "text": "red shoes"},
        {"space": "image", "image": "aGVsbG8="},
    ],
    "fusion": {"method": "rrf", "k": 30, "weights": [1.0, 0.5, 2.0], "window": 40},
    "filter": {"term": {"in_stock": True}},
    "limit": 5, "offset": 0, "with_payload": {"exclude": ["secret"]}, "with_vectors": ["emb"],
    "require_complete": False, "consistency": "strong", "cache": False, "budget_ms": 250, "min_coverage": 0.5,
    "debug": True, "explain": True, "probe": 3,
    "stages": [{"formula": {"boost": [{"field": "in_stock", "equals": True, "add": 0.1},
                                      {"field": "price", "decay": "gauss", "origin": 10, "scale": 5,
                                       "offset": 0, "decay_at": 0.5, "multiply": True}]}, "candidates": 30},
               {"mmr": {"space": "emb", "lambda": 0.7}}, {"group_by": {"field": "category", "size": 2, "groups": 3}}],
}


def to_proto(body: dict, collection: str = "c") -> pb.QueryRequest:
    return json_format.ParseDict(query_proto_dict(body, collection), pb.QueryRequest())


def test_a_query_crosses_the_proto_unchanged():
    """Client (HTTP body -> proto) then server (proto -> HTTP body): every field the HTTP API takes comes back as
    sent, including explicit zeros and falses (presence is kept) and bytes as base64. (Vectors are float32 on the
    wire, as Milvus stores them: these values are exact in float32.)"""
    msg = to_proto(RICH_QUERY)
    assert msg.collection == "c" and msg.prefetch[2].image == b"hello"
    assert g.query_body(msg) == RICH_QUERY


@pytest.mark.parametrize("selector,expected", [(True, True), (False, False), (["a", "b"], ["a", "b"]),
                                               ({"exclude": ["a"]}, {"exclude": ["a"]})])
def test_payload_selectors(selector, expected):
    body = {"prefetch": [{"space": "t", "text": "x"}], "with_payload": selector}
    assert g.query_body(to_proto(body))["with_payload"] == expected


def test_probe_is_an_integer_or_all():
    """proto: int32 probe, or probe_all for "all" (the HTTP body's one field); both at once is a 422."""
    body = {"prefetch": [{"space": "t", "text": "x"}], "probe": "all"}
    msg = to_proto(body)
    assert msg.probe_all and not msg.HasField("probe")
    assert g.query_body(msg) == body
    assert g.query_body(to_proto({**body, "probe": 1}))["probe"] == 1
    assert "probe" not in g.query_body(pb.QueryRequest(prefetch=[pb.Prefetch(space="t", text="x")], probe_all=False))
    with pytest.raises(InvalidRequest) as err:
        g.query_body(pb.QueryRequest(prefetch=[pb.Prefetch(space="t", text="x")], probe=2, probe_all=True))
    assert err.value.field == "probe"


def test_unset_fields_take_the_http_defaults():
    body = g.query_body(pb.QueryRequest(collection="c", prefetch=[pb.Prefetch(space="t", text="x")]))
    assert body == {"prefetch": [{"space": "t", "text": "x"}]}
    explicit = g.query_body(pb.QueryRequest(prefetch=[pb.Prefetch(space="t", text="x")], limit=0, cache=False))
    assert explicit["limit"] == 0 and explicit["cache"] is False  # sent, so validated (limit 0 is then a 422)


def test_struct_numbers_read_as_json_would():
    msg = pb.UpsertRequest(collection="c", points=[pb.Point(id="a", payload={"n": 3, "x": 2.5, "l": [1, 2.0]},
                                                            vectors={"emb": pb.Vector(values=[0.5])})])
    assert g.upsert_body(msg) == {"points": [{"id": "a", "payload": {"n": 3, "x": 2.5, "l": [1, 2]},
                                              "vectors": {"emb": [0.5]}}]}


def test_a_batch_query_may_not_name_another_collection():
    req = pb.QueryBatchRequest(collection="a", queries=[pb.QueryRequest(collection="b", prefetch=[
        pb.Prefetch(space="t", text="x")])])
    with pytest.raises(InvalidRequest) as e:
        g.batch_body(req)
    assert e.value.field == "queries.collection"
    same = pb.QueryBatchRequest(collection="a", queries=[pb.QueryRequest(collection="a", prefetch=[
        pb.Prefetch(space="t", text="x")]), pb.QueryRequest(prefetch=[pb.Prefetch(space="t", text="y")])])
    assert [q["prefetch"][0]["text"] for q in g.batch_body(same)["queries"]] == ["x", "y"]


def test_an_answer_fits_the_proto_and_reads_back_the_same():
    answer = QueryResponse.model_validate({
        "hits": [{"id": "a", "score": 0.123456789012, "payload": {"n": 3, "s": "x", "l": [1, "b"], "o": {"k": True}},
                  "vectors": {"emb": f32([0.25, 0.5])},
                  "explain": {"prefetch": [{"space": "emb", "rank": 1, "score": 0.9, "contribution": 0.016},
                                           {"space": "text", "contribution": 0.0}],
                              "fused": 0.016, "stages": [{"stage": "mmr", "before": 0.016, "after": 0.01}],
                              "score": 0.01}}],
        "groups": [{"value": "shoes", "hits": [{"id": "a", "score": 0.5}]}],
        "coverage": {"shards_total": 3, "shards_answered": 2,
                     "failed": [{"shard": 1, "reason": "timeout", "message": "no answer in 50 ms"}]},
        "partial": True, "took_ms": 12.5, "filter_rounds": 1, "filter_plans": ["pushdown"], "notes": ["n"],
        "cached": False, "timings_ms": {"fan_out": 3.5}, "search_params": {"emb": {"ef": 64}}})
    msg = g.to_message(g.query_message(answer), pb.QueryResponse)
    back = _answer(json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True))
    want = answer.model_dump(mode="json")
    assert back["hits"][0]["score"] == want["hits"][0]["score"]  # a double: no precision lost
    assert back["hits"][0]["payload"] == want["hits"][0]["payload"]
    assert back["hits"][0]["vectors"] == want["hits"][0]["vectors"]
    assert back["coverage"] == want["coverage"] and back["partial"] is True
    assert back["groups"][0]["value"] == "shoes" and back["search_params"] == {"emb": {"ef": 64}}
    assert back["hits"][0]["explain"]["prefetch"][1] == {"space": "text", "contribution": 0.0}


def test_an_answer_field_the_proto_lacks_is_an_error_not_dropped():
    with pytest.raises(json_format.ParseError):
        g.to_message({**g._json(UpsertResponse(upserted=1)), "new_field": 1}, pb.UpsertResponse)


@pytest.mark.parametrize("exc,code", [
    (InvalidRequest("limit: too big", field="limit"), grpc.StatusCode.INVALID_ARGUMENT),
    (PayloadTooLarge("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CollectionNotFound("no c"), grpc.StatusCode.NOT_FOUND),
    (CollectionExists("c exists"), grpc.StatusCode.ALREADY_EXISTS),
    (ShardUnavailable("shard 1 down", shards=[1]), grpc.StatusCode.UNAVAILABLE),
    (BackendError("milvus failed"), grpc.StatusCode.UNAVAILABLE),
])
def test_errors_map_to_status_codes_with_the_field(exc, code):
    ctx = Ctx()
    out = asyncio.run(g.handle("Query", pb.QueryRequest(collection="c"), ctx, service=Failing(exc), guard=None))
    assert out == pb.QueryResponse() and ctx.code == code and ctx.details == exc.message
    assert ctx.trailing["prism-error"] == exc.code
    rich = status_pb2.Status.FromString(ctx.trailing["grpc-status-details-bin"])
    assert rich.code == code.value[0] and rich.message == exc.message
    if exc.field:
        assert ctx.trailing["prism-field"] == exc.field
        bad = error_details_pb2.BadRequest()
        assert rich.details[1].Unpack(bad) and bad.field_violations[0].field == exc.field
    else:
        assert "prism-field" not in ctx.trailing


class Failing:
    def __init__(self, exc):
        self.exc = exc

    async def query(self, name, body):
        raise self.exc


class Recording:
    """A service that records what it is asked and answers like the real one's models."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    async def query(self, name, body):
        self.calls.append(("query", name, body))
        return QueryResponse(hits=[], coverage={"shards_total": 1, "shards_answered": 1}, partial=False, took_ms=1.0)

    async def upsert(self, name, body):
        self.calls.append(("upsert", name, body))
        return UpsertResponse(upserted=len(body["points"]))

    def list_collections(self):
        return ["a", "b"]


def test_the_guard_rules_grpc_as_http():
    read, read_rec = new_key("read")
    scoped, scoped_rec = new_key("read", ["a"])
    clock = FakeClock()
    guard = Guard(KeySource([read_rec, scoped_rec], None, environ={}), read_per_s=2, burst_s=1, clock=clock)
    svc = Recording()
    q = pb.QueryRequest(collection="a", prefetch=[pb.Prefetch(space="t", text="x")])

    def call(method, req, metadata=()):
        ctx = Ctx(metadata)
        return asyncio.run(g.handle(method, req, ctx, service=svc, guard=guard)), ctx

    _, ctx = call("Query", q)
    assert ctx.code == grpc.StatusCode.UNAUTHENTICATED and "API key" in ctx.details
    _, ctx = call("Query", q, [("authorization", "Bearer prism_nope_nope")])
    assert ctx.code == grpc.StatusCode.UNAUTHENTICATED
    up = pb.UpsertRequest(collection="a", points=[pb.Point(id="p")])
    _, ctx = call("Upsert", up, [("authorization", f"Bearer {read}")])
    assert ctx.code == grpc.StatusCode.PERMISSION_DENIED and "'write'" in ctx.details
    assert [c[0] for c in svc.calls] == []  # nothing refused reached the service
    listed, ctx = call("List", pb.ListCollectionsRequest(), [("x-api-key", scoped)])
    assert ctx.code is None and list(listed.collections) == ["a"]  # a scoped key sees its collections only
    _, ctx = call("Query", pb.QueryRequest(collection="b"), [("x-api-key", scoped)])
    assert ctx.code == grpc.StatusCode.PERMISSION_DENIED and "'b'" in ctx.details
    clock.advance(10)
    answers = [call("Query", q, [("authorization", f"Bearer {read}")])[1] for _ in range(3)]
    assert [a.code for a in answers[:2]] == [None, None]
    assert answers[2].code == grpc.StatusCode.RESOURCE_EXHAUSTED and answers[2].trailing["retry-after"] == "1"
    assert answers[2].trailing["prism-error"] == "rate_limited"


def test_the_budget_metadata_becomes_budget_ms_unless_the_request_sets_one():
    svc = Recording()
    q = pb.QueryRequest(collection="a", prefetch=[pb.Prefetch(space="t", text="x")])
    asyncio.run(g.handle("Query", q, Ctx([("prism-budget-ms", "800")]), service=svc, guard=None))
    q.budget_ms = 100
    asyncio.run(g.handle("Query", q, Ctx([("prism-budget-ms", "800")]), service=svc, guard=None))
    assert [c[2].get("budget_ms") for c in svc.calls] == [800, 100]
    ctx = Ctx([("prism-budget-ms", "soon")])
    asyncio.run(g.handle("Query", q, ctx, service=svc, guard=None))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and ctx.trailing["prism-field"] == "prism-budget-ms"


def test_health_names_the_services():
    from grpc_health.v1 import health_pb2

    assert g.health_status("") == (health_pb2.HealthCheckResponse.SERVING, "")
    assert g.health_status("prism.v1.Search")[0] == health_pb2.HealthCheckResponse.SERVING
    status, why = g.health_status("other.Service")
    assert status is None and "prism.v1.Search" in why


def test_every_method_of_the_proto_has_a_route_and_a_servicer():
    from cluster.proto.prism.v1 import prism_pb2_grpc as pbg

    names = {m.name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert names == set(g.RPCS)
    assert all(hasattr(pbg, f.rsplit(".", 1)[1]) for f in g.SERVICER_FUNCTIONS if "prism" in f)


ODD_NAMES = ["../catalog/a", "/etc/passwd", "a/../a", "..", "", "a\x00", "a__b", "x" * 300, "a.json", " a"]


def _with_name(method: str, name: str):
    named = {"Create": pb.CreateCollectionRequest, "Get": pb.GetCollectionRequest, "Drop": pb.DropCollectionRequest}
    if method in named:
        return named[method](name=name)
    if method in ("SetAlias", "DropAlias"):
        return (pb.SetAliasRequest if method == "SetAlias" else pb.DropAliasRequest)(alias=name)
    cls = {"Query": pb.QueryRequest, "QueryBatch": pb.QueryBatchRequest, "Upsert": pb.UpsertRequest,
           "Delete": pb.DeleteRequest, "UpdateVectors": pb.UpdateVectorsRequest}[method]
    return cls(collection=name)


class Everything:
    """A service that would do whatever it is asked: reaching it at all is the failure."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        async def record(*args, **kwargs):
            self.calls.append((name, args))
            raise AssertionError(f"{name}{args} reached the service")
        return record


@pytest.mark.parametrize("method", [m for m in g.RPCS if m not in ("List", "ListAliases")])
def test_odd_collection_names_are_refused_before_the_guard_and_the_service(method):
    """C1: every method, with an admin key and a read key: the name rule answers first (INVALID_ARGUMENT naming
    the field), the guard is never asked about a path built from such a name, the service never sees it."""
    admin, admin_rec = new_key("admin")
    read, read_rec = new_key("read")
    asked: list[str] = []
    guard = Guard(KeySource([admin_rec, read_rec], None, environ={}), clock=FakeClock())
    real_check = guard.check
    guard.check = lambda m, path, *a, **k: (asked.append(path), real_check(m, path, *a, **k))[1]
    svc = Everything()
    for name in ODD_NAMES:
        for key in (admin, read, None):
            ctx = Ctx([("x-api-key", key)] if key else [])
            out = asyncio.run(g.handle(method, _with_name(method, name), ctx, service=svc, guard=guard))
            assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT, (method, name, ctx.code, ctx.details)
            assert ctx.trailing["prism-field"] == g.RPCS[method].named
            assert out == g.RPCS[method].response()
    assert asked == [] and svc.calls == []


def test_an_exception_outside_the_error_tree_never_reaches_the_client_with_its_text():
    """C1: a pydantic error quoting a file, an OSError naming a path: INTERNAL with a reference, nothing else."""
    for exc in (ValueError("spaces: {'secret': 'FLAT'} at /etc/prism/catalog"), OSError(36, "File name too long",
                                                                                      "/var/lib/prism/x.json")):
        ctx = Ctx()
        asyncio.run(g.handle("Query", pb.QueryRequest(collection="c"), ctx, service=Failing(exc), guard=None))
        assert ctx.code == grpc.StatusCode.INTERNAL and ctx.trailing["prism-error"] == "internal"
        assert "secret" not in ctx.details and "/var/lib" not in ctx.details and "/etc" not in ctx.details, ctx.details
        assert "ref " in ctx.details


def test_a_message_over_the_configured_size_is_refused():
    svc = Recording()
    q = pb.QueryRequest(collection="a", prefetch=[pb.Prefetch(space="t", vector=[0.5] * 1000)])
    ctx = Ctx()
    asyncio.run(g.handle("Query", q, ctx, service=svc, guard=None, max_message_bytes=1024))
    assert ctx.code == grpc.StatusCode.RESOURCE_EXHAUSTED and ctx.trailing["prism-error"] == "payload_too_large"
    assert svc.calls == []
    asyncio.run(g.handle("Query", q, Ctx(), service=svc, guard=None, max_message_bytes=1 << 20))
    assert len(svc.calls) == 1


def test_a_grpc_batch_costs_one_token_per_query():
    read, rec = new_key("read")
    clock = FakeClock()
    guard = Guard(KeySource([rec], None, environ={}), read_per_s=1, burst_s=5, clock=clock)

    class Batch(Recording):
        async def query_batch(self, name, body):
            return type("A", (), {"results": []})()

    svc = Batch()
    md = [("x-api-key", read)]
    q = pb.QueryRequest(prefetch=[pb.Prefetch(space="t", text="x")])
    ctx = Ctx(md)
    asyncio.run(g.handle("QueryBatch", pb.QueryBatchRequest(collection="a", queries=[q] * 8), ctx, service=svc,
                         guard=guard))
    assert ctx.code is None
    ctx = Ctx(md)
    asyncio.run(g.handle("Query", pb.QueryRequest(collection="a", prefetch=[q.prefetch[0]]), ctx, service=svc,
                         guard=guard))
    assert ctx.code == grpc.StatusCode.RESOURCE_EXHAUSTED and ctx.trailing["retry-after"] == "4"


def test_a_guard_failure_answers_internal_without_its_text():
    """Found by the issue 33 review: the guard ran outside handle's error handling, so anything it raised (a keys
    file it could not parse) reached the client as Serve's INTERNAL with the exception's text (the file's path)."""
    class Broken:
        def check(self, *args, **kwargs):
            raise OSError(13, "Permission denied", "/var/lib/prism/api-keys.json")

    svc = Recording()
    ctx = Ctx()
    out = asyncio.run(g.handle("Query", pb.QueryRequest(collection="c"), ctx, service=svc, guard=Broken()))
    assert ctx.code == grpc.StatusCode.INTERNAL and ctx.trailing["prism-error"] == "internal"
    assert "/var/lib" not in ctx.details and "ref " in ctx.details and out == pb.QueryResponse()
    assert svc.calls == []


def test_nan_in_a_struct_or_an_infinite_budget_is_invalid_argument_not_internal():
    """Found by the issue 33 review: a Struct number NaN (a payload value, a filter bound) cannot be turned into JSON
    and the ValueError answered INTERNAL; `prism-budget-ms: inf` raised OverflowError, INTERNAL too."""
    svc = Recording()
    up = pb.UpsertRequest(collection="a", points=[pb.Point(id="p")])
    up.points[0].payload["n"] = float("nan")
    q = pb.QueryRequest(collection="a", prefetch=[pb.Prefetch(space="t", vector=[1.0])])
    q.filter.update({"range": {"n": {"gte": float("inf")}}})
    for method, req, md in (("Upsert", up, ()), ("Query", q, ()),
                            ("Query", pb.QueryRequest(collection="a", prefetch=[pb.Prefetch(space="t", text="x")]),
                             [("prism-budget-ms", "inf")])):
        ctx = Ctx(md)
        asyncio.run(g.handle(method, req, ctx, service=svc, guard=None))
        assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT, (method, ctx.code, ctx.details)
        assert ctx.trailing["prism-error"] == "invalid_request"
    assert svc.calls == []
