"""A real `prism up --detach` on a free port, stopped with `prism down` (checked by pid)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import base64
import json

import httpx
import numpy as np
import psutil
import pytest

from cluster.ports import ENV_NAMES as DIRECT_INGRESS_ENV
from cluster.services import free_port, side_port


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group `pgid`."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return out


def prism_cli(*args: str, check: bool = True, timeout: float = 400,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Serve's direct-ingress ranges are left to `prism up` (each instance claims its own block), even where the
    # environment sets them: instances started here must never share ports.
    base = {k: v for k, v in os.environ.items() if k not in DIRECT_INGRESS_ENV}
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=check, env={**base, **(env or {})})


class Instance:
    def __init__(self, data_dir: Path, port: int, milvus: str, env: dict[str, str] | None = None,
                 grpc_port: int | None = None):
        self.data_dir, self.port, self.milvus, self.env = data_dir, port, milvus, env
        self.grpc_port = side_port() if grpc_port is None else grpc_port
        self.url = f"http://127.0.0.1:{port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.pid: int | None = None

    def up(self) -> None:
        r = prism_cli("up", "--detach", "--port", str(self.port), "--grpc-port", str(self.grpc_port),
                      "--data-dir", str(self.data_dir),
                      "--milvus", self.milvus, check=False, env=self.env)
        assert r.returncode == 0, r.stdout + r.stderr
        import json

        self.pid = json.loads((self.data_dir / "prism-instance.json").read_text())["pid"]

    def down(self) -> list[int]:
        """Stop it; returns the processes of its group that are still alive afterwards (should be none)."""
        before = group_members(self.pid)
        assert before, "prism up should own live processes before down"
        r = prism_cli("down", "--data-dir", str(self.data_dir))
        assert "prism is down" in r.stdout
        return [p for p in before if p in group_members(self.pid)]


@pytest.fixture(scope="session")
def prism_server(milvus_server, tmp_path_factory):
    from deploy.tinyclip import build_tiny_clip

    data = tmp_path_factory.mktemp("prism-e2e")
    build_tiny_clip(data / "models" / "clip")  # found by `prism up` in DATA_DIR/models: the real loading path
    inst = Instance(data, free_port(), milvus_server.uri)
    inst.up()
    inst.client = httpx.Client(base_url=inst.url, timeout=120)
    yield inst
    inst.client.close()
    if inst.pid and group_members(inst.pid):
        prism_cli("down", "--data-dir", str(inst.data_dir), check=False)


CATALOG = [json.loads(line) for line in (Path(__file__).resolve().parents[2] / "deploy" / "data" / "catalog.jsonl").read_text().splitlines()]
DIM = 8


def emb(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


SPEC = {
    "spaces": {
        "text": {"dim": 384, "encoder": "minilm", "source": "description", "index": {"type": "HNSW"}},
        "visual": {"dim": 384, "encoder": "minilm", "source": "visual", "index": {"type": "HNSW"}},
        "emb": {"dim": DIM, "metric": "cosine", "index": {"type": "FLAT"}},
    },
    "shards": 3,
    "metadata": {"name": "text", "category": "keyword", "subcategory": "keyword", "brand": "keyword",
                 "color": "keyword", "price": "float", "in_stock": "boolean", "description": "text"},
}


@pytest.fixture(scope="session")
def products(prism_server):
    c = prism_server.client
    r = c.put("/v1/collections/products", json=SPEC)
    assert r.status_code == 200, r.text
    points = [{"id": p["id"], "payload": {k: v for k, v in p.items() if k != "id"}, "vectors": {"emb": emb(i)}}
              for i, p in enumerate(CATALOG)]
    r = c.post("/v1/collections/products/points", json={"points": points})
    assert r.status_code == 200, r.text
    assert r.json()["upserted"] == len(CATALOG)
    return c




PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "horse")


def png(name: str) -> bytes:
    """A scikit-image sample photo as PNG bytes."""
    import io

    import skimage.data
    from PIL import Image

    arr = getattr(skimage.data, name)()
    arr = np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr[..., :3]
    buf = io.BytesIO()
    Image.fromarray(arr.astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos(prism_server):
    c = prism_server.client
    from deploy.tinyclip import DIM

    assert c.get("/health").json()["encoders"]["clip"]["dim"] == DIM  # the tiny CLIP in DATA_DIR/models
    spec = {"spaces": {"image": {"dim": DIM, "encoder": "clip", "source": "image", "modality": "image",
                                 "index": {"type": "FLAT"}},
                       "caption": {"dim": DIM, "encoder": "clip", "source": "caption", "index": {"type": "FLAT"}}},
            "shards": 2}
    assert c.put("/v1/collections/photos", json=spec).status_code == 200
    pts = [{"id": n, "payload": {"caption": f"a photo of a {n}", "image": base64.b64encode(png(n)).decode()}}
           for n in PHOTOS]
    pts.append({"id": "broken", "payload": {"caption": "broken", "image": base64.b64encode(b"not an image").decode()}})
    r = c.post("/v1/collections/photos/points", json={"points": pts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["upserted"] == len(PHOTOS) and [f["id"] for f in body["failed"]] == ["broken"]
    return c




# The keyed instance the access tests share (session-scoped; at the end: it builds on Instance and prism_cli above).
from tests.e2e.keyed_instance import secured  # noqa: E402,F401
