"""Issue 33 on the shared `prism up` (loopback, no API keys: the default local setup): adversarial bodies are refused
fast, bodies are bounded while they are read, bad input in reads is a 4xx that never counts as a replica fault nor
fails the queries batched with it, ids and names have one character rule, and a web page can neither post JSON
as text nor reach prism under another host name."""
from __future__ import annotations

import base64
import json
import select
import socket
import threading

import grpc
import pytest
from google.protobuf import json_format

from cluster.proto.prism.v1 import prism_pb2 as pb, prism_pb2_grpc as pbg
from tests.e2e.conftest import emb

JSON = {"content-type": "application/json"}


def post_raw(c, path: str, raw: bytes | str, headers=None):
    return c.post(path, content=raw.encode() if isinstance(raw, str) else raw, headers={**JSON, **(headers or {})})


@pytest.fixture(scope="module")
def scratch(prism_server):
    """A small collection of its own (the shared `products` keeps its exact contents for other tests)."""
    c = prism_server.client
    spec = {"spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}, "shards": 2, "metadata": {"tag": "keyword", "n": "integer"}}
    assert c.put("/v1/collections/scratch", json=spec).status_code == 200
    pts = [{"id": f"s{i}", "payload": {"tag": "a" if i % 2 else "b"}, "vectors": {"v": [1.0, i, 0.5, 0.25]}}
           for i in range(10)]
    assert c.post("/v1/collections/scratch/points", json={"points": pts}).status_code == 200
    yield c
    c.delete("/v1/collections/scratch")


def count(c, name: str = "scratch") -> int:
    return c.post(f"/v1/collections/{name}/points/count", json={}).json()["count"]


# ---- H1: the depth check is linear ----

def test_a_1mb_adversarial_body_is_refused_not_stalled(products):
    """`{` x 65 then an unterminated run of `\\"` pairs: quadratic in the old depth check (134 s for 1 MB, no
    answer). It must come back as a 4xx (the client gives it 60 s; the bench times it: deploy/bench_json_depth.py)."""
    body = b"{" * 65 + b'"' + b'\\"' * ((1 << 20) // 2)
    r = post_raw(products, "/v1/collections/products/query", body)
    assert 400 <= r.status_code < 500, r.text
    # ... and an unterminated string without the depth trip is refused as malformed JSON, just as fast
    r = post_raw(products, "/v1/collections/products/query", b"{" * 10 + b'"' + b'\\"' * ((1 << 20) // 2))
    assert r.status_code == 422, r.text


# ---- Medium: bodies are bounded while they are read ----

def _chunked_until_answered(port: int, head: bytes, chunk: bytes, total: int) -> tuple[int, bytes]:
    """Send `head` then `chunk` as HTTP/1.1 chunks until the server answers or `total` bytes went; returns (bytes
    sent, the answer's first bytes). The server is never told where the body ends unless all of it went."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(head)
        while sent < total:
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                break
            try:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            s.sendall(b"0\r\n\r\n")
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                got = s.recv(65536)
                if not got:
                    break
                answer += got
        except (ConnectionResetError, socket.timeout):
            pass
        return sent, answer


# Far more than the kernel's socket buffers on the way (client -> HAProxy -> replica: tens of MB on loopback) can
# hold: a server that reads the whole body before answering answers only after all of it went.
ENDLESS = 256 << 20


def test_a_chunked_json_body_is_cut_off_at_the_limit(products, prism_server):
    head = (b"POST /v1/collections/products/query HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent, answer = _chunked_until_answered(prism_server.port, head, b" " * 65536, ENDLESS)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < ENDLESS, "the server answered only once the whole body had been sent"


def test_a_chunked_multipart_upload_is_cut_off_at_the_limit(products, prism_server):
    head = (b"POST /v1/collections/products/query/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"11b\r\n" + (b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                          b"Content-Type: image/png\r\n\r\n").ljust(0x11B, b"A") + b"\r\n")
    sent, answer = _chunked_until_answered(prism_server.port, head, b"A" * 65536, ENDLESS)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < ENDLESS, "the server answered only once the whole upload had been sent"


# ---- Medium: a bad read is a 4xx at validation, never a replica fault, never fails its batch-mates ----

def faults(c, name: str = "products") -> list[tuple[int, int, int]]:
    return [(s["shard"], s["replica"], s["faults"]) for s in c.get(f"/v1/collections/{name}").json()["shards"]]


BAD_READS = [
    ("points/get", '{"ids": ["a\\ud800"]}'),
    ("query", '{"prefetch": [{"space": "emb", "vector": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}], '
              '"fusion": {"method": "none"}, "filter": {"term": {"brand": "x\\udc00"}}}'),
    ("query", json.dumps({"prefetch": [{"space": "emb", "vector": [1e39] + [0.1] * 7}], "fusion": {"method": "none"}})),
    ("query", '{"prefetch": [{"space": "emb", "vector": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}], '
              '"fusion": {"method": "none"}, "filter": {"ids": {"values": ["\\ud800"]}}}'),
    ("points/scroll", '{"filter": {"term": {"brand": "\\ud800"}}, "limit": 3}'),
    ("points/count", '{"filter": {"term": {"brand": "\\ud800"}}}'),
    ("query/batch", json.dumps({"queries": [{"prefetch": [{"space": "emb", "vector": [-1e39] + [0.1] * 7}]}]})),
]


def test_bad_reads_are_422_and_neither_replica_faults_nor_fail_their_batch(products):
    before = faults(products)
    good = {"prefetch": [{"space": "emb", "vector": emb(5)}], "fusion": {"method": "none"}, "limit": 5,
            "cache": False}
    want = [h["id"] for h in products.post("/v1/collections/products/query", json=good).json()["hits"]]
    results: dict[str, list] = {"good": [], "bad": []}

    def ask_good():
        for _ in range(6):
            r = products.post("/v1/collections/products/query", json=good)
            results["good"].append((r.status_code, r.json()))

    def ask_bad():
        for path, raw in BAD_READS:
            r = post_raw(products, f"/v1/collections/products/{path}", raw)
            results["bad"].append((path, r.status_code, r.text))

    threads = [threading.Thread(target=f) for f in (ask_good, ask_bad, ask_good, ask_bad, ask_good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 422 for _, status, _ in results["bad"]), results["bad"]
    for status, body in results["good"]:
        assert status == 200 and not body["partial"] and [h["id"] for h in body["hits"]] == want, body
    assert faults(products) == before


# ---- Medium: NaN / Infinity / overflow in numbers, over-long names ----

@pytest.mark.parametrize("raw, needle", [
    ('{"prefetch": [{"space": "emb", "vector": %s}, {"space": "emb", "vector": %s}], '
     '"fusion": {"method": "rrf", "weights": [NaN, 1.0]}}', "NaN"),
    ('{"prefetch": [{"space": "emb", "vector": %s}, {"space": "emb", "vector": %s}], '
     '"fusion": {"method": "rrf", "weights": [1e400, 1.0]}}', "weights"),
    ('{"prefetch": [{"space": "emb", "vector": %s, "params": {"ef": Infinity}}, {"space": "emb", "vector": %s}]}',
     "Infinity"),
    ('{"prefetch": [{"space": "emb", "vector": %s, "params": {"ef": 1e999}}, {"space": "emb", "vector": %s}]}',
     "params"),
    ('{"prefetch": [{"space": "emb", "vector": %s}, {"space": "emb", "vector": %s}], "min_coverage": NaN}', "NaN"),
    ('{"prefetch": [{"space": "emb", "vector": %s}, {"space": "emb", "vector": %s}], '
     '"filter": {"range": {"price": {"gte": -1e400}}}}', "filter"),
])
def test_non_finite_numbers_are_422_not_500(products, raw, needle):
    """NaN/Infinity literals are refused by the parser (naming the literal); numbers that overflow to an infinity
    by the field they are in."""
    r = post_raw(products, "/v1/collections/products/query", raw % (json.dumps(emb(1)), json.dumps(emb(2))))
    assert r.status_code == 422 and needle in (r.json().get("field") or "") + r.json()["message"], r.text


def test_over_long_names_are_422(products):
    for path in ("/v1/collections/" + "x" * 5000, "/v1/collections/" + "x" * 5000 + "/points/count"):
        r = products.request("POST" if path.endswith("count") else "GET", path,
                             json={} if path.endswith("count") else None)
        assert r.status_code == 422 and r.json()["field"] == "name", r.text
    r = products.post("/v1/collections/products/query", json={"prefetch": [{"space": "s" * 100_000, "vector": [1.0]}]})
    assert 400 <= r.status_code < 500 and len(r.text) < 2000, r.text[:300]


# ---- H4: one id character rule at every entry ----

BAD_IDS = ["a\u0001b", "a\x7fb", "a\u0085b", "tab\there", "line\nbreak", "a\ud800"]


def test_ids_with_control_characters_are_refused_at_every_entry(scratch, prism_server):
    c = scratch
    n = count(c)
    for bad in BAD_IDS:
        raw_id = json.dumps(bad)  # \\u escapes: a lone surrogate travels as JSON text only this way
        for path, raw in (("points", '{"points": [{"id": %s, "vectors": {"v": [1, 0, 0, 0]}}]}' % raw_id),
                          ("points/get", '{"ids": [%s]}' % raw_id),
                          ("points/delete", '{"ids": [%s]}' % raw_id),
                          ("points/vectors", '{"points": [{"id": %s, "vectors": {"v": [1, 0, 0, 0]}}]}' % raw_id)):
            r = post_raw(c, f"/v1/collections/scratch/{path}", raw)
            assert r.status_code == 422, (bad, path, r.status_code, r.text)
        cursor = base64.urlsafe_b64encode(json.dumps({"after": bad}).encode()).decode().rstrip("=")
        r = c.post("/v1/collections/scratch/points/scroll", json={"cursor": cursor, "limit": 2})
        assert r.status_code == 422 and r.json()["field"] == "cursor", (bad, r.text)
    r = c.get("/v1/collections/scratch/points/a%01b")
    assert r.status_code == 422, r.text
    with grpc.insecure_channel(prism_server.grpc_target) as ch:
        msg = json_format.ParseDict({"collection": "scratch", "points": [
            {"id": "a\u0001b", "vectors": {"v": {"values": [1, 0, 0, 0]}}}]}, pb.UpsertRequest())
        with pytest.raises(grpc.RpcError) as e:
            pbg.SearchStub(ch).Upsert(msg, timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert count(c) == n
    v = c.get("/v1/collections/scratch/verify").json()
    assert v["shard_points"] == n and not v["drift"], v


def test_numbers_and_ids_a_store_would_refuse_are_422_and_write_nothing(scratch, prism_server):
    """Found by the issue 33 review (each answered as noted before the fix): payload integers past 64 bits (a new
    field of 10**400: 500; 10**30 in a nested object: 502 from Elasticsearch; 2**63 in an integer field: stored,
    though an Elasticsearch long holds at most 2**63-1), an id of 800 UTF-8 bytes (502: Elasticsearch's `_id`
    holds 512), and over gRPC NaN in a Struct (INTERNAL), 1e300 in an integer field (UNAVAILABLE), an infinite
    `prism-budget-ms` (INTERNAL). Each is a 422 / INVALID_ARGUMENT and no store changes."""
    c = scratch
    n = count(c)
    mapping = c.get("/v1/collections/scratch").json()["config"]["metadata"]
    point = '{"points": [{"id": %s, "payload": %s, "vectors": {"v": [1, 0, 0, 0]}}]}'
    for pid, payload in (('"big1"', '{"fresh": 1%s}' % ("0" * 400)), ('"big2"', '{"o": {"x": 1%s}}' % ("0" * 30)),
                         ('"big3"', '{"n": 9223372036854775808}'), ('"big4"', '{"n": 1e300}'),
                         (json.dumps("\U0001f600" * 200), '{}')):
        r = post_raw(c, "/v1/collections/scratch/points", point % (pid, payload))
        assert r.status_code == 422, (pid, payload[:40], r.status_code, r.text)
    q = {"prefetch": [{"space": "v", "vector": [1, 0, 0, 0]}], "limit": 3}
    with grpc.insecure_channel(prism_server.grpc_target) as ch:
        stub = pbg.SearchStub(ch)
        calls = []
        for value in (float("nan"), 1e300):
            up = pb.UpsertRequest(collection="scratch", points=[pb.Point(id="big5")])
            up.points[0].vectors["v"].values.extend([1, 0, 0, 0])
            up.points[0].payload["n"] = value
            calls.append((stub.Upsert, up, []))
        nan_filter = json_format.ParseDict({"collection": "scratch", **q}, pb.QueryRequest())
        nan_filter.filter.update({"range": {"n": {"gte": float("nan")}}})
        calls.append((stub.Query, nan_filter, []))
        calls.append((stub.Query, json_format.ParseDict({"collection": "scratch", **q}, pb.QueryRequest()),
                      [("prism-budget-ms", "inf")]))
        for fn, msg, md in calls:
            with pytest.raises(grpc.RpcError) as e:
                fn(msg, metadata=md, timeout=60)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (msg, e.value.code(), e.value.details())
    got = c.post("/v1/collections/scratch/points/get", json={"ids": [f"big{i}" for i in range(1, 6)]}).json()
    assert got["points"] == [] and count(c) == n
    assert c.get("/v1/collections/scratch").json()["config"]["metadata"] == mapping  # no field mapped either
    v = c.get("/v1/collections/scratch/verify").json()
    assert v["shard_points"] == n and not v["drift"], v


# ---- H5: names that would collide are refused; nothing existing is adopted ----

def test_names_that_collide_in_a_backend_are_refused(prism_server):
    c = prism_server.client
    spec = {"spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}}
    assert c.put("/v1/collections/casey", json=spec).status_code == 200
    try:
        r = c.put("/v1/collections/Casey", json=spec)  # one Elasticsearch index (prism-casey) for both
        assert r.status_code == 409 and "casey" in r.json()["message"], r.text
        for name, body in (("a__b", spec), ("ab", {"spaces": {"x__y": {"dim": 4}}})):
            r = c.put(f"/v1/collections/{name}", json=body)  # a__b+c and a+b__c: one Milvus collection name
            assert r.status_code == 422 and "__" in r.json()["message"], r.text
        assert "Casey" not in c.get("/v1/collections").json()["collections"]
    finally:
        c.delete("/v1/collections/casey")


def test_an_existing_index_or_milvus_collection_is_never_adopted(prism_server, milvus_server):
    from elasticsearch import Elasticsearch
    from pymilvus import DataType, MilvusClient

    c = prism_server.client
    state = json.loads((prism_server.data_dir / "prism-instance.json").read_text())
    es = Elasticsearch(state["elasticsearch"])
    es.index(index="prism-adopted", id="someone-elses", document={"secret": 1}, refresh=True)
    spec = {"spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}, "shards": 1}
    r = c.put("/v1/collections/adopted", json=spec)
    assert r.status_code == 409 and "prism-adopted" in r.json()["message"], r.text
    assert es.get(index="prism-adopted", id="someone-elses")["_source"] == {"secret": 1}
    assert "adopted" not in c.get("/v1/collections").json()["collections"]

    m = MilvusClient(uri=milvus_server.uri)
    schema = m.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=4)
    m.create_collection("orphan__v__s0_r0", schema=schema)
    try:
        r = c.put("/v1/collections/orphan", json=spec)
        assert r.status_code == 409 and "orphan__v__s0_r0" in r.json()["message"], r.text
        assert m.has_collection("orphan__v__s0_r0") and "orphan" not in c.get("/v1/collections").json()["collections"]
    finally:
        m.drop_collection("orphan__v__s0_r0")
        m.close()
        es.indices.delete(index="prism-adopted")


# ---- H8: no JSON as text, no other host names ----

def test_json_bodies_need_a_json_content_type(scratch):
    c = scratch
    n = count(c)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": ctype} if ctype else {}
        r = c.post("/v1/collections/scratch/points/delete", content=b'{"ids": ["s1", "s2"]}', headers=headers)
        assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type", (ctype, r.text)
    assert count(c) == n
    r = c.post("/v1/collections/scratch/points/get", content=b'{"ids": ["s1"]}',
               headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.json()["points"][0]["id"] == "s1"


def test_requests_for_another_host_name_are_refused(scratch, prism_server):
    c, port = scratch, prism_server.port
    n = count(c)
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "attacker"):
        r = c.post("/v1/collections/scratch/points/delete", json={"ids": ["s3"]}, headers={"host": host})
        assert r.status_code == 400 and r.json()["error"] == "invalid_host", (host, r.text)
        assert c.get("/v1/collections", headers={"host": host}).status_code == 400
    assert count(c) == n
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert c.get("/v1/collections", headers={"host": host}).status_code == 200, host
