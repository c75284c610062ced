"""Issue 33 on a real `prism up` started WITH API keys (loopback): collection names that are not names never
reach the guard or the catalog, over gRPC (every method) and HTTP; unknown routes need admin; /health lists
collections only to a key that may see them; a batch costs one token per query; revoking every key leaves the
API shut, not open."""
from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest
import yaml
from google.protobuf import json_format

from cluster.services import free_port, side_port
from cluster.proto.prism.v1 import prism_pb2 as pb, prism_pb2_grpc as pbg
from tests.e2e.conftest import prism_cli

pytestmark = pytest.mark.slow
DIM = 4
POINTS = 12
# Reads: 1 token a second, 60 in the bucket; a batch of 64 queries overdraws it (see the batch tests).
CONFIG = {"auth": {"rate_limits": {"read_per_s": 1.0, "burst_s": 60.0}}}


def vec(i: float) -> list[float]:
    return [1.0, float(i), 0.5, 0.25]


def create_key(data_dir, role: str, collections: str | None = None) -> str:
    args = ["keys", "create", "--role", role, "--data-dir", str(data_dir)]
    if collections:
        args += ["--collections", collections]
    key = prism_cli(*args).stdout.strip()
    assert key.startswith("prism_"), key
    return key


def wait_until(predicate, timeout_s: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # poll: the server re-reads its keys file within a second
    raise AssertionError(f"timed out waiting for {what}")


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def keyed(milvus_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("prism-keyed")
    (data / "prism.yaml").write_text(yaml.safe_dump(CONFIG))
    keys = {"admin": create_key(data, "admin"), "read": create_key(data, "read"),
            "scoped": create_key(data, "admin", "other")}  # keys exist before prism starts: auth is required
    port, gport = free_port(), side_port()
    r = prism_cli("up", "--detach", "--port", str(port), "--grpc-port", str(gport), "--data-dir", str(data),
                  "--config", str(data / "prism.yaml"), "--milvus", milvus_server.uri, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    spec = {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}, "shards": 2}
    assert http.put("/v1/collections/vault", json=spec, headers=bearer(keys["admin"])).status_code == 200
    pts = [{"id": f"v{i}", "payload": {"n": i}, "vectors": {"v": vec(i)}} for i in range(POINTS)]
    r = http.post("/v1/collections/vault/points", json={"points": pts}, headers=bearer(keys["admin"]))
    assert r.status_code == 200, r.text

    class Keyed:
        pass

    inst = Keyed()
    inst.data_dir, inst.http, inst.keys, inst.grpc_target = data, http, keys, f"127.0.0.1:{gport}"
    inst.up = ["up", "--detach", "--port", str(port), "--grpc-port", str(gport), "--data-dir", str(data),
               "--config", str(data / "prism.yaml"), "--milvus", milvus_server.uri]
    yield inst
    http.close()
    prism_cli("down", "--data-dir", str(data), check=False)


def vault_count(inst) -> int:
    r = inst.http.post("/v1/collections/vault/points/count", json={}, headers=bearer(inst.keys["admin"]))
    assert r.status_code == 200, r.text
    return r.json()["count"]


QUERY = {"prefetch": [{"space": "v", "vector": vec(1)}], "fusion": {"method": "none"}, "limit": 3}


def grpc_requests(name: str) -> dict[str, tuple[str, str, object]]:
    """Every gRPC method that takes a collection name: (service, request class, request body)."""
    point = {"id": "v1", "vectors": {"v": {"values": vec(9)}}}
    return {
        "Query": ("Search", "QueryRequest", {"collection": name, **QUERY}),
        "QueryBatch": ("Search", "QueryBatchRequest", {"collection": name, "queries": [QUERY]}),
        "Upsert": ("Search", "UpsertRequest", {"collection": name, "points": [point]}),
        "Delete": ("Search", "DeleteRequest", {"collection": name, "filter": {"bool": {}}}),
        "UpdateVectors": ("Search", "UpdateVectorsRequest", {"collection": name, "points": [point]}),
        "Create": ("Collections", "CreateCollectionRequest", {"name": name, "spec": {"spaces": {"v": {"dim": DIM}}}}),
        "Get": ("Collections", "GetCollectionRequest", {"name": name}),
        "Drop": ("Collections", "DropCollectionRequest", {"name": name}),
    }


def call(channel, key: str | None, service: str, method: str, cls: str, body: dict):
    """One raw gRPC call (no client-side checks): (status code name, details, trailing metadata)."""
    stub = getattr(pbg, f"{service}Stub")(channel)
    msg = json_format.ParseDict(body, getattr(pb, cls)())
    try:
        getattr(stub, method)(msg, metadata=[("authorization", f"Bearer {key}")] if key else [], timeout=60)
        return "OK", "", {}
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", dict(exc.trailing_metadata() or ())


ODD_NAMES = ["../catalog/vault", "/etc/passwd", "vault/../vault", "..", "", "vault\x00", "a__b", "x" * 300,
             "vault.json", "..\\vault", " vault", "vault\n", "v/a/u/l/t", "%2e%2e"]


@pytest.mark.parametrize("who", ["read", "admin", "scoped", None])
def test_grpc_refuses_odd_collection_names_on_every_method_before_the_guard(keyed, who):
    """The exploit of issue 33 (a read key deleting through `../catalog/vault`) and its relatives: every method,
    every key (and none), answers INVALID_ARGUMENT naming the field, and nothing anywhere changes."""
    key = keyed.keys[who] if who else None
    catalog = sorted(p.name for p in (keyed.data_dir / "catalog").iterdir())
    with grpc.insecure_channel(keyed.grpc_target) as ch:
        for name in ODD_NAMES:
            for method, (service, cls, body) in grpc_requests(name).items():
                code, details, trailing = call(ch, key, service, method, cls, body)
                assert code == "INVALID_ARGUMENT", (who, name, method, code, details)
                assert trailing.get("prism-error") == "invalid_request", (name, method, trailing)
                assert trailing.get("prism-field") == ("name" if method in ("Create", "Get", "Drop") else "collection")
    assert vault_count(keyed) == POINTS
    assert sorted(p.name for p in (keyed.data_dir / "catalog").iterdir()) == catalog


def test_a_read_key_cannot_delete_through_a_traversing_name(keyed):
    with grpc.insecure_channel(keyed.grpc_target) as ch:
        code, details, _ = call(ch, keyed.keys["read"], "Search", "Delete", "DeleteRequest",
                                {"collection": "../catalog/vault", "filter": {"bool": {}}})
        assert code == "INVALID_ARGUMENT", (code, details)
        # A valid name still meets the guard: the read key may not delete
        code, _, _ = call(ch, keyed.keys["read"], "Search", "Delete", "DeleteRequest",
                          {"collection": "vault", "filter": {"bool": {}}})
        assert code == "PERMISSION_DENIED"
        # An absolute path reads no file and quotes none
        code, details, _ = call(ch, keyed.keys["admin"], "Collections", "Get", "GetCollectionRequest",
                                {"name": str(keyed.data_dir / "catalog" / "vault")})
        assert code == "INVALID_ARGUMENT" and "spaces" not in details and "FLAT" not in details, details
    assert vault_count(keyed) == POINTS


def test_http_refuses_odd_names_and_unknown_routes_need_admin(keyed):
    c, read = keyed.http, bearer(keyed.keys["read"])
    for path in ("/v1/collections/..%2Fcatalog%2Fvault", "/v1/collections/..%2Fcatalog%2Fvault/points/count",
                 "/v1/collections/vault%00", "/v1/collections/" + "x" * 5000, "/v1/collections/a__b",
                 "/v1/collections/%2E%2E"):
        method = "POST" if path.endswith("count") else "GET"
        r = c.request(method, path, headers=read, json={} if method == "POST" else None)
        assert r.status_code == 422 and r.json()["field"] == "name", (path, r.status_code, r.text)
    for method, path in (("GET", "/v1/collections/vault/bogus"), ("GET", "/v2/anything"),
                         ("POST", "/v1/collections/vault/query/bogus"), ("GET", "/v1/collections/vault/points")):
        r = c.request(method, path, headers=read)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.status_code, r.text)
    assert vault_count(keyed) == POINTS


def test_health_lists_collections_only_to_keys_that_may_see_them(keyed):
    c = keyed.http
    anonymous = c.get("/health").json()
    assert anonymous["auth"] is True and "vault" not in anonymous["collections"], anonymous
    assert "vault" not in c.get("/health", headers=bearer("prism_00000000_not-a-key")).json()["collections"]
    assert "vault" not in c.get("/health", headers=bearer(keyed.keys["scoped"])).json()["collections"]
    assert "vault" in c.get("/health", headers=bearer(keyed.keys["read"])).json()["collections"]


def test_a_batch_costs_one_read_token_per_query_over_http(keyed):
    key = create_key(keyed.data_dir, "read")  # a bucket of its own: 60 tokens, 1 a second
    q = {"prefetch": [{"space": "v", "vector": vec(1)}], "fusion": {"method": "none"}, "limit": 1, "cache": False}
    wait_until(lambda: keyed.http.get("/v1/collections", headers=bearer(key)).status_code == 200, what="the key")
    r = keyed.http.post("/v1/collections/vault/query/batch", json={"queries": [q] * 64}, headers=bearer(key))
    assert r.status_code == 200, r.text
    after = keyed.http.post("/v1/collections/vault/query", json=q, headers=bearer(key))
    assert after.status_code == 429 and int(after.headers["retry-after"]) >= 2, (after.status_code, after.text)


def test_a_batch_costs_one_read_token_per_query_over_grpc(keyed):
    key = create_key(keyed.data_dir, "read")
    wait_until(lambda: keyed.http.get("/v1/collections", headers=bearer(key)).status_code == 200, what="the key")
    with grpc.insecure_channel(keyed.grpc_target) as ch:
        code, details, _ = call(ch, key, "Search", "QueryBatch", "QueryBatchRequest",
                                {"collection": "vault", "queries": [QUERY] * 64})
        assert code == "OK", details
        code, details, trailing = call(ch, key, "Search", "Query", "QueryRequest", {"collection": "vault", **QUERY})
        assert code == "RESOURCE_EXHAUSTED" and trailing.get("prism-error") == "rate_limited", (code, details)


def test_a_corrupt_keys_file_shuts_the_api_without_quoting_it(keyed):
    """Found by the issue 33 review: a keys file that does not parse made the next HTTP request a 500 and the next
    gRPC call an INTERNAL quoting the file's path and the parser's text; every later request then ran on the keys
    read before, revoked ones included. Now such a file holds no key: 401 over both, no path, nothing changed."""
    path = keyed.data_dir / "api-keys.json"
    good = path.read_text()
    admin = keyed.keys["admin"]
    seen = []
    try:
        broken = path.with_name("broken.tmp")
        broken.write_text("{not json")
        broken.replace(path)  # at once: the server never sees an empty file on the way
        with grpc.insecure_channel(keyed.grpc_target) as ch:
            def refused() -> bool:
                r = keyed.http.get("/v1/collections", headers=bearer(admin))
                code, details, _ = call(ch, admin, "Collections", "Get", "GetCollectionRequest", {"name": "vault"})
                seen.append((r.status_code, r.text, code, details))
                return r.status_code == 401 and code == "UNAUTHENTICATED"

            # Before: one 500 / INTERNAL (quoting the file), then the old keys again, for good.
            wait_until(refused, what="the admin key to be refused once the file is unreadable")
            for _ in range(3):
                code, details, _ = call(ch, admin, "Search", "Delete", "DeleteRequest",
                                        {"collection": "vault", "filter": {"bool": {}}})
                assert code == "UNAUTHENTICATED" and str(keyed.data_dir) not in details, (code, details)
                r = keyed.http.delete("/v1/collections/vault", headers=bearer(admin))
                assert r.status_code == 401 and str(keyed.data_dir) not in r.text, r.text
        assert not [s for s in seen if str(keyed.data_dir) in s[1] + s[3] or s[0] >= 500], seen
    finally:
        path.write_text(good)
    wait_until(lambda: keyed.http.get("/v1/collections", headers=bearer(admin)).status_code == 200, what="the keys")
    assert vault_count(keyed) == POINTS


def test_revoking_every_key_shuts_the_api_instead_of_opening_it(keyed):
    """Auth was required at start (keys existed): with every key revoked, an unauthenticated DELETE is refused over
    HTTP and gRPC and the collection survives; a new key works again."""
    data = keyed.data_dir
    listed = json.loads((data / "api-keys.json").read_text())["keys"]
    for record in listed:
        prism_cli("keys", "revoke", record["id"], "--data-dir", str(data))
    assert json.loads((data / "api-keys.json").read_text())["keys"] == []
    wait_until(lambda: keyed.http.get("/v1/collections", headers=bearer(keyed.keys["admin"])).status_code == 401,
               what="the revocation")
    r = keyed.http.delete("/v1/collections/vault")
    assert r.status_code == 401, r.text
    with grpc.insecure_channel(keyed.grpc_target) as ch:
        code, _, _ = call(ch, None, "Collections", "Drop", "DropCollectionRequest", {"name": "vault"})
        assert code == "UNAUTHENTICATED"
    assert keyed.http.get("/health").json()["auth"] is True
    # ... and a restart with every key revoked keeps it shut (it opened before: found by the issue 33 review)
    prism_cli("down", "--data-dir", str(data))
    r = prism_cli(*keyed.up, check=False)
    assert r.returncode == 0 and "auth: on" in r.stderr, r.stdout + r.stderr  # the access line goes to stderr
    assert keyed.http.delete("/v1/collections/vault").status_code == 401
    with grpc.insecure_channel(keyed.grpc_target) as ch:
        assert call(ch, None, "Collections", "Drop", "DropCollectionRequest", {"name": "vault"})[0] == "UNAUTHENTICATED"
    assert keyed.http.get("/health").json()["auth"] is True
    admin = create_key(data, "admin")
    wait_until(lambda: keyed.http.get("/v1/collections", headers=bearer(admin)).status_code == 200, what="a new key")
    keyed.keys["admin"] = admin
    assert vault_count(keyed) == POINTS
