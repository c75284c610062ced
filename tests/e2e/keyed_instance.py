"""The keyed instance the access tests share (tests/e2e/test_access*.py), started once per session: a real
`prism up` on 0.0.0.0 with --insecure and no keys (it warns), then keys are created with the CLI while it runs
(auth turns on within a second). Its tests use collections of their own beside `books`; the instance-wide state
they change (keys added and revoked, a rate-limit burst that recovers) is what the next test finds after them in
one module as well."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.services import free_port, side_port
from tests.e2e.conftest import Instance, prism_cli

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


@pytest.fixture(scope="session")
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
