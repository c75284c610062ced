"""Access control on a real `prism up`: started on 0.0.0.0 with --insecure and no keys (it warns), then keys are
created with the CLI while it runs (auth turns on within a second), then every route x every kind of key; key
rotation; rate limits; strict limits; the OpenAPI description; Ray's ports without Ray's token; schemathesis."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
import yaml

from cluster.services import free_port, side_port
from tests.e2e.conftest import Instance, prism_cli

pytestmark = pytest.mark.slow
DIM = 4
WRITES_PER_S = 4.0
CONFIG = {"auth": {"rate_limits": {"write_per_s": WRITES_PER_S, "burst_s": 1.0}},
          "limits": {"max_limit": 100, "max_upsert_points": 50, "max_shards": 2, "max_replicas": 2,
                     "max_collections": 4}}


def vec(i: float) -> list[float]:
    return [1.0, i, 0.5, 0.25]


def wait_until(predicate, timeout_s: float = 10.0, what: str = "condition"):
    """Poll a condition (the server re-reads its keys file within a second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)  # poll
    raise AssertionError(f"timed out waiting for {what}")


def create_key(data_dir: Path, role: str, collections: str | None = None) -> str:
    args = ["keys", "create", "--role", role, "--data-dir", str(data_dir)]
    if collections:
        args += ["--collections", collections]
    r = prism_cli(*args)
    key = r.stdout.strip()
    assert key.startswith("prism_") and key not in r.stderr, r.stdout + r.stderr
    return key


class Keyed:
    """An httpx client that honours Retry-After on 429 (write routes share a small rate limit here)."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=base, timeout=120)

    def send(self, method: str, path: str, key: str | None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        while True:
            r = self.http.request(method, path, headers=headers, **kw)
            if r.status_code != 429:
                return r
            time.sleep(float(r.headers["retry-after"]))  # poll: the limiter says when a token is back


@pytest.fixture(scope="module")
def secured(milvus_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("prism-secured")
    cfg_file = data / "prism.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    port, gport = free_port(), side_port()
    refused = prism_cli("up", "--detach", "--host", "0.0.0.0", "--port", str(port), "--grpc-port", str(gport),
                        "--data-dir", str(data),
                        "--config", str(cfg_file), check=False, timeout=60)
    assert refused.returncode == 2 and "refusing to serve on '0.0.0.0' without API keys" in refused.stderr
    assert not (data / "prism-instance.json").exists()  # nothing was started
    r = prism_cli("up", "--detach", "--insecure", "--host", "0.0.0.0", "--port", str(port), "--grpc-port", str(gport),
                  "--data-dir", str(data),
                  "--config", str(cfg_file), "--milvus", milvus_server.uri, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING: auth is off and 0.0.0.0 is not a loopback address" in r.stderr
    inst = Instance(data, port, milvus_server.uri, grpc_port=gport)
    inst.pid = json.loads((data / "prism-instance.json").read_text())["pid"]
    inst.url = f"http://127.0.0.1:{port}"
    client = Keyed(inst.url)
    assert client.send("GET", "/v1/collections", None).status_code == 200  # auth off: open
    keys = {role: create_key(data, role) for role in ("read", "write", "admin")}
    keys["scoped"] = create_key(data, "admin", "other")
    wait_until(lambda: client.send("GET", "/v1/collections", None).status_code == 401, what="auth to turn on")
    assert client.send("GET", "/health", None).json()["auth"] is True
    spec = {"spaces": {"v": {"dim": DIM, "index": {"type": "FLAT"}}}, "shards": 2}
    assert client.send("PUT", "/v1/collections/books", keys["admin"], json=spec).status_code == 200
    pts = [{"id": f"b{i}", "payload": {"genre": "sf" if i % 2 else "crime", "pages": 100 + i}, "vectors": {"v": vec(i)}}
           for i in range(6)]
    assert client.send("POST", "/v1/collections/books/points", keys["write"], json={"points": pts}).status_code == 200
    inst.keys, inst.client = keys, client
    yield inst
    client.http.close()
    prism_cli("down", "--data-dir", str(data), check=False)


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


def test_openapi_documents_every_body_and_error(secured):
    doc = secured.client.send("GET", "/openapi.json", None).json()
    schemas = doc["components"]["schemas"]
    assert {"bearer", "apiKey"} <= set(doc["components"]["securitySchemes"])
    checked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if path in ("/health", "/openapi.json", "/docs", "/redoc"):
                assert op.get("security") == [], path
                continue
            assert {"401", "403", "429"} <= codes, (method, path, codes)
            if method in ("post", "put"):
                body = op.get("requestBody", {}).get("content", {})
                assert body, (method, path)
                for media in body.values():
                    ref = media["schema"].get("$ref")
                    if ref:  # JSON bodies: a named model; multipart (query/image): FastAPI's own form schema
                        assert ref.split("/")[-1] in schemas, ref
                assert "422" in codes and "413" in codes
            if "{name}" in path and method != "put":  # PUT creates it
                assert "404" in codes
            for code in codes - {"200"}:
                assert op["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
            checked += 1
    assert checked >= 16


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    out.append((pid, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


# A real method of each Ray service: called without Ray's token it must be refused, never answered.
RAY_METHODS = {"gcs_server": "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
               "raylet": "/ray.rpc.NodeManagerService/GetNodeStats"}
CORE_WORKER = "/ray.rpc.CoreWorkerService/NumPendingTasks"


def _grpc_code(port: int, method: str) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        fn = ch.unary_unary(method, request_serializer=lambda x: x, response_deserializer=lambda x: x)
        try:
            fn(b"", timeout=5)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def test_ray_ports_refuse_callers_without_the_ray_token(secured):
    """Ray's gRPC servers listen on every interface (Ray has no bind option); what keeps them shut is Ray's token
    authentication, which `prism up` keeps on. Each is probed through loopback, which reaches a wildcard socket
    just as another host would."""
    state = json.loads((secured.data_dir / "prism-instance.json").read_text())
    assert state["ray_auth"] == "token"
    root = psutil.Process(secured.pid)
    procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    ray_pids = {pid for pid, p in procs.items() if p.name() in RAY_METHODS or p.name().startswith("ray::")
                or pid == secured.pid}
    seen: dict[str, int] = {}
    for pid, ip, port in _listening(ray_pids):
        if ip in ("127.0.0.1", "::1"):
            continue
        name = procs[pid].name()
        kind = name if name in RAY_METHODS else "core_worker"
        code = _grpc_code(port, RAY_METHODS.get(name, CORE_WORKER))
        assert code != "OK", f"{name} (pid {pid}) port {port} answered without Ray's token"
        if code == "UNAUTHENTICATED":
            seen[kind] = seen.get(kind, 0) + 1
    assert seen.get("gcs_server") and seen.get("raylet") and seen.get("core_worker", 0) >= 3, seen
    status = prism_cli("status", "--data-dir", str(secured.data_dir), env={"PRISM_API_KEY": secured.keys["read"]})
    assert "token authentication on" in status.stdout and "API keys: required" in status.stdout


def test_the_load_test_harness_sends_its_key(secured, tmp_path):
    c, keys = secured.client, secured.keys
    spec = {"spaces": {"text": {"dim": 384, "encoder": "minilm", "source": "description"}}}
    assert c.send("PUT", "/v1/collections/shop", keys["admin"], json=spec).status_code == 200
    pts = [{"id": f"s{i}", "payload": {"description": d}} for i, d in enumerate(
        ["waterproof hiking boots", "wool sweater", "trail running shoes", "rain jacket"])]
    assert c.send("POST", "/v1/collections/shop/points", keys["write"], json={"points": pts}).status_code == 200
    refused = prism_cli("loadtest", "--url", secured.url, "--collection", "shop", "--run-time", "2s",
                        "--out", str(tmp_path / "nokey"), check=False, env={"PRISM_API_KEY": ""})
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "Traceback" not in refused.stderr
    out = tmp_path / "report"
    r = prism_cli("loadtest", "--url", secured.url, "--collection", "shop", "--users", "2", "--spawn-rate", "2",
                  "--run-time", "5s", "--out", str(out), "--api-key", keys["read"])
    assert r.returncode == 0, r.stdout + r.stderr
    total = json.loads((out / "summary.json").read_text())["total"]
    assert total["requests"] > 0 and total["error_rate"] == 0, total
    c.send("DELETE", "/v1/collections/shop", keys["admin"])


def test_schemathesis_finds_no_server_error_and_no_schema_violation(secured, tmp_path):
    """A short fuzz run over the whole OpenAPI with an admin key (`make bench` documents a longer one)."""
    exe = Path(sys.executable).with_name("schemathesis")
    # Most generated names would only ever meet a 404: aim most at the real collection and point.
    (tmp_path / "schemathesis.toml").write_text(
        '[dictionaries.names]\nvalues = ["books", "missing"]\n'
        '[dictionaries.points]\nvalues = ["b1", "b2", "absent"]\n'
        '[parameters]\n"path.name" = { dictionary = "names", probability = 0.8 }\n'
        '"path.point_id" = { dictionary = "points", probability = 0.8 }\n')
    cmd = [str(exe), "--no-color", "run", f"{secured.url}/openapi.json", "-H", f"Authorization: Bearer {secured.keys['admin']}",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
           "response_schema_conformance", "--phases", "examples,coverage,fuzzing", "--max-examples", "8",
           "--rate-limit", "auto", "--request-timeout", "60", "--workers", "1", "--max-time", "60",
           "--seed", "17",
           # Dropping the collection the dictionaries aim at would leave every later case a 404; DELETE is
           # covered by the matrix above.
           "--exclude-method", "DELETE"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path,
                       env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "No issues found" in r.stdout or "passed" in r.stdout.lower(), r.stdout[-3000:]


def test_two_instances_on_one_host_answer_only_their_own_calls(secured, prism_server, products):
    """Each `prism up` serves from its own block of Serve direct-ingress ports (cluster/ports.py). With Serve's
    fixed ranges the second instance's gRPC server bound the first one's port too (SO_REUSEPORT), and a gRPC
    connection through one instance's HAProxy could land on the other instance's replica (measured: 20 of 20 calls
    to one instance answered by the other, in one of two runs)."""
    from cluster.client import PrismClient, PrismClientError

    def session_ports(sid: int) -> set[int]:
        """Ports the processes of a `prism up` session (Serve, its replicas, HAProxy) listen on."""
        pids = set()
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == sid:
                    pids.add(p.pid)
            except OSError:
                continue
        return {port for _, _, port in _listening(pids)}

    ports = {inst.pid: session_ports(inst.pid) for inst in (secured, prism_server)}
    blocks = {}
    for inst, other in ((secured, prism_server), (prism_server, secured)):
        d = json.loads((inst.data_dir / "prism-instance.json").read_text())["direct_ingress"]
        http = set(range(int(d["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(d["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])))
        grpc_ = set(range(int(d["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"]), int(d["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"])))
        blocks[inst.pid] = http | grpc_
        # Its ingress replica serves HTTP and gRPC from its own block, and the other instance from none of it.
        assert ports[inst.pid] & http and ports[inst.pid] & grpc_, (inst.url, sorted(ports[inst.pid]), d)
        assert not ports[other.pid] & blocks[inst.pid], (inst.url, sorted(ports[other.pid] & blocks[inst.pid]))
    assert not blocks[secured.pid] & blocks[prism_server.pid]
    for _ in range(20):  # a new connection each time
        with PrismClient(f"grpc://{secured.grpc_target}", api_key=secured.keys["admin"]) as rpc:
            names = rpc.list_collections()
        assert "books" in names and "products" not in names
        with PrismClient(f"grpc://{prism_server.grpc_target}") as rpc:
            names = rpc.list_collections()
        assert "products" in names and "books" not in names
        with PrismClient(f"grpc://{secured.grpc_target}") as rpc, pytest.raises(PrismClientError) as refused:
            rpc.list_collections()  # no key: the secured instance refuses, never the open one answers
        assert refused.value.status == "UNAUTHENTICATED", refused.value
        for inst, mine, other in ((secured, "books", "products"), (prism_server, "products", "books")):
            headers = {"Authorization": f"Bearer {secured.keys['admin']}"} if inst is secured else {}
            with httpx.Client(base_url=inst.url, timeout=60, headers=headers) as http:
                names = http.get("/v1/collections").json()["collections"]
            assert mine in names and other not in names
        with httpx.Client(base_url=secured.url, timeout=60) as http:
            assert http.get("/v1/collections").status_code == 401
