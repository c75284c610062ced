"""Access control on a real `prism up` (the session's keyed instance, tests/e2e/keyed_instance.py): every route x
every kind of key over HTTP, gRPC and the Qdrant API; key rotation; rate limits; strict and layout limits."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.e2e.conftest import prism_cli
from tests.e2e.keyed_instance import DIM, WRITES_PER_S, create_key, vec, wait_until

pytestmark = pytest.mark.slow


def routes(who: str) -> list[tuple[str, str, str, dict]]:
    """(method, path, role needed, request kwargs); writes use ids of their own so refused ones can be checked."""
    q = {"prefetch": [{"space": "v", "vector": vec(1)}], "fusion": {"method": "none"}, "limit": 3}
    return [
        ("GET", "/v1/collections", "read", {}),
        ("GET", "/v1/collections/books", "read", {}),
        ("POST", "/v1/collections/books/query", "read", {"json": q}),
        ("POST", "/v1/collections/books/query/batch", "read", {"json": {"queries": [q]}}),
        ("POST", "/v1/collections/books/points/get", "read", {"json": {"ids": ["b1"]}}),
        ("POST", "/v1/collections/books/points/scroll", "read", {"json": {"limit": 2}}),
        ("POST", "/v1/collections/books/points/count", "read", {"json": {}}),
        ("GET", "/v1/collections/books/points/b1", "read", {}),
        ("POST", "/v1/collections/books/points", "write",
         {"json": {"points": [{"id": f"new-{who}", "vectors": {"v": vec(9)}}]}}),
        ("POST", "/v1/collections/books/points/vectors", "write",
         {"json": {"points": [{"id": "b2", "vectors": {"v": vec(2)}}]}}),
        ("POST", "/v1/collections/books/points/delete", "write", {"json": {"ids": [f"gone-{who}"]}}),
        ("POST", "/v1/collections/books/reshard", "admin", {"json": {"shards": 2}}),
        ("GET", "/v1/collections/books/verify", "admin", {}),
        ("GET", "/v1/collections/books/snapshots", "admin", {}),
        ("PUT", f"/v1/collections/tmp_{who}", "admin",
         {"json": {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}}}),
        ("DELETE", f"/v1/collections/tmp_{who}", "admin", {}),
    ]


RANK = {"read": 0, "write": 1, "admin": 2}


@pytest.mark.parametrize("who", ["none", "wrong", "read", "write", "admin", "scoped"])
def test_every_route_answers_each_kind_of_key_as_documented(secured, who):
    c, keys = secured.client, secured.keys
    key = {"none": None, "wrong": "prism_00000000_not-a-real-key"}.get(who, keys.get(who))
    for method, path, role, kw in routes(who):
        r = c.send(method, path, key, **kw)
        if who in ("none", "wrong"):
            want = 401
        elif who == "scoped":
            want = 200 if path == "/v1/collections" else 403
        else:
            want = 200 if RANK[who] >= RANK[role] else 403
        assert r.status_code == want, (who, method, path, r.status_code, r.text)
        if want >= 400:
            body = r.json()
            assert body["error"] == ("unauthenticated" if want == 401 else "forbidden")
            assert key is None or key not in r.text  # a key is never echoed
            assert (r.headers.get("www-authenticate") == 'Bearer realm="prism"') == (want == 401)
    for open_path in ("/health", "/metrics", "/openapi.json"):
        assert c.send("GET", open_path, key).status_code == 200
    if who == "scoped":
        assert c.send("GET", "/v1/collections", key).json() == {"collections": []}  # books is out of its scope
    # nothing a refused request asked for happened
    admin = keys["admin"]
    got = c.send("POST", "/v1/collections/books/points/get", admin, json={"ids": [f"new-{who}"]}).json()
    assert bool(got["points"]) == (who in ("write", "admin")), got
    names = c.send("GET", "/v1/collections", admin).json()["collections"]
    assert "books" in names and f"tmp_{who}" not in names


def grpc_calls(who: str) -> list[tuple[str, str, object]]:
    """(method, role needed, call on a PrismClient) for every gRPC method."""
    q = {"prefetch": [{"space": "v", "vector": vec(1)}], "fusion": {"method": "none"}, "limit": 3}
    return [
        ("List", "read", lambda c: c.list_collections()),
        ("Get", "read", lambda c: c.get_collection("books")),
        ("Query", "read", lambda c: c.query("books", q)),
        ("QueryBatch", "read", lambda c: c.query_batch("books", [q])),
        ("Upsert", "write", lambda c: c.upsert("books", [{"id": f"grpc-{who}", "vectors": {"v": vec(9)}}])),
        ("UpdateVectors", "write", lambda c: c.update_vectors("books", [{"id": "b2", "vectors": {"v": vec(2)}}])),
        ("Delete", "write", lambda c: c.delete("books", ids=[f"gone-{who}"])),
        ("Create", "admin", lambda c: c.create_collection(f"tmpg_{who}", {"spaces": {"v": {
            "dim": DIM, "index": {"type": "FLAT"}}}})),
        ("Drop", "admin", lambda c: c.drop_collection(f"tmpg_{who}")),
    ]


@pytest.mark.parametrize("who", ["none", "wrong", "read", "write", "admin", "scoped"])
def test_grpc_methods_answer_each_kind_of_key_as_http_does(secured, who):
    from cluster.client import PrismClient, PrismClientError

    keys = secured.keys
    key = {"none": None, "wrong": "prism_00000000_not-a-real-key"}.get(who, keys.get(who))
    with PrismClient(f"grpc://{secured.grpc_target}", api_key=key) as c:
        for method, role, call in grpc_calls(who):
            if who in ("none", "wrong"):
                want = "UNAUTHENTICATED"
            elif who == "scoped":
                want = "OK" if method == "List" else "PERMISSION_DENIED"
            else:
                want = "OK" if RANK[who] >= RANK[role] else "PERMISSION_DENIED"
            while True:
                try:
                    call(c)
                    got = "OK"
                except PrismClientError as exc:
                    if exc.error == "rate_limited":  # write methods share a small rate limit here
                        time.sleep(float(exc.retry_after))  # poll: the limiter says when a token is back
                        continue
                    got = exc.status
                    assert exc.error == ("unauthenticated" if want == "UNAUTHENTICATED" else "forbidden"), exc
                    assert key is None or key not in exc.message
                break
            assert got == want, (who, method, got)
    admin = keys["admin"]
    got = secured.client.send("POST", "/v1/collections/books/points/get", admin, json={"ids": [f"grpc-{who}"]}).json()
    assert bool(got["points"]) == (who in ("write", "admin")), got  # nothing a refused call asked for happened
    names = secured.client.send("GET", "/v1/collections", admin).json()["collections"]
    assert "books" in names and f"tmpg_{who}" not in names


WHO = ["none", "wrong", "read", "write", "admin", "scoped"]
QID = {who: 501 + i for i, who in enumerate(WHO)}  # each kind of key writes a point of its own


def qdrant_calls(c, who: str) -> list[tuple[str, object]]:
    """(role needed, call) through qdrant-client for each kind of /qdrant route."""
    from qdrant_client import models

    return [
        ("read", lambda: c.get_collections()),
        ("read", lambda: c.get_collection("books")),
        ("read", lambda: c.query_points("books", query=vec(1), using="v", limit=3)),
        ("read", lambda: c.count("books")),
        ("read", lambda: c.scroll("books", limit=2)),
        ("read", lambda: c.retrieve("books", [1])),
        ("write", lambda: c.upsert("books", [models.PointStruct(id=QID[who], vector={"v": vec(9)},
                                                                payload={"who": who})])),
        ("write", lambda: c.set_payload("books", {"seen": who}, points=[QID[who]])),
        ("write", lambda: c.delete("books", models.PointIdsList(points=[900]))),
        ("admin", lambda: c.create_collection(f"qtmp_{who}", vectors_config=models.VectorParams(
            size=DIM, distance=models.Distance.DOT))),
        ("admin", lambda: c.delete_collection(f"qtmp_{who}")),
    ]


@pytest.mark.parametrize("who", WHO)
def test_the_qdrant_api_takes_prisms_keys_in_its_api_key_header(secured, who):
    """qdrant-client's `api_key` (sent as `api-key`) is a prism key: its role and scope decide, refusals come in
    Qdrant's shape, and nothing a refused call asked for happens."""
    from qdrant_client import QdrantClient
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
    from qdrant_client.http.exceptions import UnexpectedResponse

    keys = secured.keys
    key = {"none": None, "wrong": "prism_00000000_not-a-real-key"}.get(who, keys.get(who))
    c = QdrantClient(url=secured.url, prefix="qdrant", api_key=key, timeout=60, check_compatibility=False)
    for i, (role, call) in enumerate(qdrant_calls(c, who)):
        if who in ("none", "wrong"):
            want = 401
        elif who == "scoped":  # an admin key scoped to another collection: it may list, nothing else here
            want = 200 if i == 0 else 403
        else:
            want = 200 if RANK[who] >= RANK[role] else 403
        while True:
            try:
                answer, got, body = call(), 200, None
            except ResourceExhaustedResponse as exc:  # writes share a small rate limit here
                time.sleep(exc.retry_after_s)  # poll: the limiter says when a token is back
                continue
            except UnexpectedResponse as exc:
                answer, got, body = None, exc.status_code, json.loads(exc.content)
            break
        assert got == want, (who, role, i, got, body)
        if want >= 400:
            assert set(body) == {"status", "time"} and (key is None or key not in json.dumps(body)), body
        if who == "scoped" and i == 0:
            assert "books" not in {d.name for d in answer.collections}  # out of its scope
    assert httpx.get(f"{secured.url}/qdrant").status_code == 200  # the root (title, version) is open
    admin = keys["admin"]
    got = QdrantClient(url=secured.url, prefix="qdrant", api_key=admin, check_compatibility=False).retrieve(
        "books", [QID[who]])
    assert [p.payload for p in got] == ([{"who": who, "seen": who}] if who in ("write", "admin") else []), got
    names = secured.client.send("GET", "/v1/collections", admin).json()["collections"]
    assert f"qtmp_{who}" not in names


def test_keys_rotate_without_a_restart(secured):
    c, data = secured.client, secured.data_dir
    old, new = create_key(data, "read"), None
    wait_until(lambda: c.send("GET", "/v1/collections", old).status_code == 200, what="the new key")
    new = create_key(data, "read")
    wait_until(lambda: c.send("GET", "/v1/collections", new).status_code == 200, what="the second key")
    assert c.send("GET", "/v1/collections", old).status_code == 200  # both valid at once
    prism_cli("keys", "revoke", old.split("_")[1], "--data-dir", str(data))
    wait_until(lambda: c.send("GET", "/v1/collections", old).status_code == 401, what="the revocation")
    assert c.send("GET", "/v1/collections", new).status_code == 200
    listed = prism_cli("keys", "list", "--data-dir", str(data)).stdout
    assert new.split("_")[1] in listed and old.split("_")[1] not in listed and new not in listed


def test_a_burst_of_writes_gets_429_with_retry_after_then_recovers(secured):
    http, key = secured.client.http, secured.keys["write"]
    headers = {"X-API-Key": key}
    statuses = []
    # A write to a missing collection costs the limiter a token and the server almost nothing (then a 404), so
    # the burst outruns the refill.
    for _ in range(int(WRITES_PER_S) * 3):
        r = http.post("/v1/collections/missing/points/delete", json={"ids": ["nobody"]}, headers=headers)
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert statuses[-1] == 429 and 404 in statuses, statuses
    assert r.json()["error"] == "rate_limited"
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= 2
    t0 = time.monotonic()
    wait_until(lambda: http.post("/v1/collections/missing/points/delete", json={"ids": ["nobody"]},
                                 headers=headers).status_code == 404, timeout_s=retry + 2, what="recovery")
    assert time.monotonic() - t0 <= retry + 1.5
    # reads are not limited here, and limits are per key
    assert all(http.get("/v1/collections", headers={"X-API-Key": secured.keys["read"]}).status_code == 200
               for _ in range(10))


@pytest.mark.parametrize("path,body,field,limit", [
    ("query", {"prefetch": [{"space": "v", "vector": vec(1)}], "fusion": {"method": "none"}, "limit": 101},
     "limit", "max_limit"),
    ("points", {"points": [{"id": f"x{i}", "vectors": {"v": vec(i)}} for i in range(51)]}, "points",
     "max_upsert_points"),
])
def test_strict_limits_are_422s_naming_field_and_limit(secured, path, body, field, limit):
    r = secured.client.send("POST", f"/v1/collections/books/{path}", secured.keys["admin"], json=body)
    assert r.status_code == 422 and r.json()["field"] == field and limit in r.json()["message"], r.text


def test_layout_limits_refuse_a_collection_too_large(secured):
    spec = {"spaces": {"v": {"dim": DIM}}, "shards": 3}
    r = secured.client.send("PUT", "/v1/collections/big", secured.keys["admin"], json=spec)
    assert r.status_code == 422 and r.json()["field"] == "shards" and "max_shards" in r.json()["message"]
    assert "big" not in secured.client.send("GET", "/v1/collections", secured.keys["admin"]).json()["collections"]
