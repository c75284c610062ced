"""What the keyed instance (tests/e2e/keyed_instance.py) shows beyond its routes: the OpenAPI description, Ray's
ports without Ray's token, the load test harness with a key, schemathesis over the whole API, and a second
instance beside it on one host."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from tests.e2e.conftest import prism_cli

pytestmark = pytest.mark.slow


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
    # Every generated case passed every check: "N generated, N passed" with nothing failed, errored or skipped.
    # (Its closing line is "2 warnings": coverage hints, most generated names and bodies meet a 404 or a 422, which
    # rc 0 allows; "No checks ran" or "Empty test suite" would have no such line.)
    cases = re.search(r"^\s*(\d+) generated, (\d+) passed$", r.stdout, flags=re.M)
    assert cases and int(cases[1]) == int(cases[2]) > 0, r.stdout[-3000:]


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
