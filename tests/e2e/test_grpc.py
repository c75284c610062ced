"""The gRPC API end to end against the same `prism up --detach` the HTTP tests use: the same queries over gRPC and
HTTP give the same answers, writes over one are seen by the other, and errors map to gRPC status codes."""
from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest

from cluster.client import PrismClient, PrismClientError
from tests.e2e.conftest import emb, png


def f32(values) -> list[float]:
    """Vectors cross gRPC as float32 (as Milvus stores them): send HTTP the very same values."""
    return [float(x) for x in np.asarray(values, dtype=np.float32)]


@pytest.fixture(scope="module")
def clients(products, prism_server):
    with PrismClient(prism_server.url) as http, PrismClient(f"grpc://{prism_server.grpc_target}") as rpc:
        yield http, rpc


def same_answer(a: dict, b: dict) -> None:
    assert [h["id"] for h in a["hits"]] == [h["id"] for h in b["hits"]]
    assert [h["score"] for h in a["hits"]] == [h["score"] for h in b["hits"]]  # exactly
    assert [h.get("payload") for h in a["hits"]] == [h.get("payload") for h in b["hits"]]
    assert a["coverage"] == b["coverage"] and a["partial"] == b["partial"]
    assert a["filter_plans"] == b["filter_plans"]


QUERIES = {
    "text": {"prefetch": [{"space": "text", "text": "espresso and coffee"}], "fusion": {"method": "none"}, "limit": 5,
             "cache": False},
    "vector": {"prefetch": [{"space": "emb", "vector": f32(emb(7))}], "limit": 6, "with_payload": ["name", "price"],
               "with_vectors": ["emb"], "cache": False, "probe": "all"},
    "fused": {"prefetch": [{"space": "text", "text": "waterproof boots for kids", "limit": 20},
                           {"space": "visual", "text": "small shiny yellow rubber boots", "limit": 20},
                           {"space": "emb", "vector": f32(emb(40)), "limit": 20}],
              "fusion": {"method": "rrf", "weights": [1.0, 0.5, 0.25]}, "limit": 8, "cache": False},
    "dbsf": {"prefetch": [{"space": "text", "text": "camping gear"}, {"space": "emb", "vector": f32(emb(3))}],
             "fusion": {"method": "dbsf"}, "limit": 8, "cache": False},
    "filtered": {"prefetch": [{"space": "text", "text": "shoes for running"}], "fusion": {"method": "none"},
                 "filter": {"bool": {"must": [{"range": {"price": {"gte": 20}}}, {"term": {"in_stock": True}}]}},
                 "limit": 5, "cache": False},
    "staged": {"prefetch": [{"space": "text", "text": "kitchen"}, {"space": "emb", "vector": f32(emb(11))}],
               "stages": [{"formula": {"boost": [{"field": "in_stock", "equals": True, "add": 0.01}]}},
                          {"group_by": {"field": "category", "size": 2, "groups": 3}}],
               "limit": 6, "explain": True, "cache": False},
}


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_grpc_answers_equal_http_answers(clients, kind):
    http, rpc = clients
    a, b = http.query("products", QUERIES[kind]), rpc.query("products", QUERIES[kind])
    assert a["hits"], a
    same_answer(a, b)
    if kind == "vector":
        assert np.allclose(b["hits"][0]["vectors"]["emb"], a["hits"][0]["vectors"]["emb"], atol=0)
    if kind == "staged":
        assert [[h["id"] for h in g["hits"]] for g in a["groups"]] == [[h["id"] for h in g["hits"]] for g in b["groups"]]
        assert [h["explain"]["score"] for h in a["hits"]] == [h["explain"]["score"] for h in b["hits"]]


def test_batch_and_image_bytes(clients, photos, prism_server):
    http, rpc = clients
    qs = [QUERIES["text"], QUERIES["vector"], QUERIES["filtered"]]
    a, b = http.query_batch("products", qs), rpc.query_batch("products", qs)
    for x, y in zip(a["results"], b["results"], strict=True):
        same_answer(x, y)
    img = {"prefetch": [{"space": "image", "image": base64.b64encode(png("astronaut")).decode()}],
           "fusion": {"method": "none"}, "limit": 3, "cache": False}
    a, b = http.query("photos", img), rpc.query("photos", img)
    assert a["hits"][0]["id"] == "astronaut"
    same_answer(a, b)


def test_writes_over_grpc_are_seen_over_http(clients, prism_server):
    http, rpc = clients
    spec = {"spaces": {"v": {"dim": 4, "metric": "cosine", "index": {"type": "FLAT"}}}, "shards": 2,
            "metadata": {"kind": "keyword", "n": "integer"}}
    info = rpc.create_collection("grpc_rw", spec)
    assert info["name"] == "grpc_rw" and len(info["shards"]) == 2
    assert "grpc_rw" in rpc.list_collections() and "grpc_rw" in http.list_collections()
    pts = [{"id": f"p{i}", "payload": {"kind": "even" if i % 2 == 0 else "odd", "n": i},
            "vectors": {"v": f32(np.random.default_rng(i).standard_normal(4))}} for i in range(10)]
    assert rpc.upsert("grpc_rw", pts) == {"upserted": 10, "failed": [], "notes": [], "visible": True}
    assert http.get_collection("grpc_rw")["counts"] == {"v": 10} == rpc.get_collection("grpc_rw")["counts"]
    q = {"prefetch": [{"space": "v", "vector": pts[3]["vectors"]["v"]}], "limit": 10, "cache": False}
    a, b = http.query("grpc_rw", q), rpc.query("grpc_rw", q)
    assert a["hits"][0]["id"] == "p3" and a["hits"][0]["payload"] == {"kind": "odd", "n": 3}
    same_answer(a, b)
    new = f32([1, 0, 0, 0])
    assert rpc.update_vectors("grpc_rw", [{"id": "p5", "vectors": {"v": new}}])["upserted"] == 1
    top = http.query("grpc_rw", {"prefetch": [{"space": "v", "vector": new}], "limit": 1, "cache": False})
    assert top["hits"][0]["id"] == "p5"
    assert rpc.delete("grpc_rw", filter={"term": {"kind": "even"}})["deleted"] == 5
    assert rpc.delete("grpc_rw", ids=["p1"])["deleted"] == 1
    left = http.query("grpc_rw", {**q, "limit": 10})
    assert sorted(h["id"] for h in left["hits"]) == ["p3", "p5", "p7", "p9"]
    assert rpc.drop_collection("grpc_rw") == {"deleted": "grpc_rw"}
    assert "grpc_rw" not in http.list_collections()


@pytest.mark.parametrize("call, code, error, field", [
    (lambda c: c.query("nope", QUERIES["text"]), "NOT_FOUND", "collection_not_found", None),
    (lambda c: c.query("products", {**QUERIES["text"], "limit": 0}), "INVALID_ARGUMENT", "invalid_request", "limit"),
    (lambda c: c.query("products", {**QUERIES["text"], "probe": 0}), "INVALID_ARGUMENT", "invalid_request", "probe"),
    (lambda c: c.query("products", {"prefetch": [{"space": "emb", "vector": [0.5] * 3}]}), "INVALID_ARGUMENT",
     "invalid_request", None),
    # One key in the echoed object: a Struct's keys cross the wire in no promised order, so a message quoting a
    # two-key object could list them differently over gRPC than over HTTP.
    (lambda c: c.query("products", {**QUERIES["text"], "filter": {"range": {"price": {"bogus": 1}}}}),
     "INVALID_ARGUMENT", "invalid_filter", "filter.range.price"),
    (lambda c: c.query("products", {"prefetch": [{"space": "audio", "vector": [0.5]}]}), "NOT_FOUND",
     "space_not_found", None),
    (lambda c: c.create_collection("products", {"spaces": {"v": {"dim": 4}}}), "ALREADY_EXISTS",
     "collection_exists", None),
    (lambda c: c.get_collection("nope"), "NOT_FOUND", "collection_not_found", None),
    (lambda c: c.upsert("products", [{"id": "x", "payload": {"price": "not a number"}}]), "INVALID_ARGUMENT", None,
     None),
])
def test_errors_map_to_status_codes(clients, call, code, error, field):
    http, rpc = clients
    with pytest.raises(PrismClientError) as over_grpc:
        call(rpc)
    with pytest.raises(PrismClientError) as over_http:
        call(http)
    e, h = over_grpc.value, over_http.value
    assert e.status == code and e.error == h.error and e.message == h.message and e.field == h.field
    if error:
        assert e.error == error
    if field:
        assert e.field == field


def test_the_standard_error_details_name_the_field(prism_server):
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from cluster.proto.prism.v1 import prism_pb2 as pb, prism_pb2_grpc as pbg

    with grpc.insecure_channel(prism_server.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pbg.SearchStub(ch).Query(pb.QueryRequest(collection="products", limit=0, prefetch=[
                pb.Prefetch(space="text", text="x")]), timeout=60)
    status = rpc_status.from_call(e.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details) and bad.field_violations[0].field == "limit"


def test_oversize_messages_and_deadlines(clients, prism_server):
    http, rpc = clients
    huge = {"prefetch": [{"space": "emb", "vector": [0.5] * (3 << 20)}]}  # 12 MiB of float32 > the 8 MiB limit
    with pytest.raises(PrismClientError) as e:
        rpc.query("products", huge)
    assert e.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(PrismClientError) as e:
        rpc.query("products", QUERIES["fused"], timeout=0.0005)  # a deadline no search can meet: never a hang
    assert e.value.status == "DEADLINE_EXCEEDED"
    answer = rpc.query("products", QUERIES["fused"], timeout=60)  # the budget sent (48 s) is within every limit
    assert answer["hits"] and not answer["partial"]


def test_health_service(prism_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with PrismClient(f"grpc://{prism_server.grpc_target}") as c:
        assert c.health() == {"status": "SERVING"}
    with grpc.insecure_channel(prism_server.grpc_target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        assert stub.Check(health_pb2.HealthCheckRequest(service="prism.v1.Search"), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_calls_are_counted_in_metrics(clients, prism_server):
    http, rpc = clients
    rpc.query("products", QUERIES["text"])
    text = http._http.get("/metrics").text
    assert 'endpoint="grpc:Query"' in text and 'method="GRPC"' in text


def test_the_cli_queries_over_grpc_as_over_http(products, prism_server):
    """`prism query` runs on PrismClient: over gRPC (the recorded instance's port) it prints what it prints over
    HTTP, and a gRPC error is the CLI's error, status named."""
    from tests.e2e.conftest import prism_cli

    args = ("query", "waterproof boots", "--collection", "products", "--limit", "4", "--data-dir",
            str(prism_server.data_dir))
    http = prism_cli(*args).stdout
    rpc = prism_cli(*args, "--protocol", "grpc").stdout
    rows = lambda out: [ln.split("took")[0] for ln in out.splitlines() if "│" in ln or "shards answered" in ln]  # noqa: E731
    assert rows(http) == rows(rpc) and len(rows(http)) >= 5, (http, rpc)
    missing = prism_cli("query", "x", "--collection", "nope", "--url", f"grpc://{prism_server.grpc_target}",
                        check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr + missing.stdout
