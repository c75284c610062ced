"""deploy/serve-config.yaml's import path builds a real app on a local Ray and answers /health."""
from __future__ import annotations

import importlib
from pathlib import Path

import httpx
import yaml

from cluster.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_serve_parses_the_grpc_options_of_serve_config():
    """Serve's own gRPCOptions takes deploy/serve-config.yaml's grpc_options and resolves prism's three servicers."""
    from ray.serve.config import gRPCOptions

    from router.serving.grpc_api import SERVICER_FUNCTIONS

    opts = gRPCOptions(**yaml.safe_load((ROOT / "deploy" / "serve-config.yaml").read_text())["grpc_options"])
    assert opts.grpc_servicer_functions == SERVICER_FUNCTIONS and len(opts.grpc_servicer_func_callable) == 3


def test_serve_config_import_path_builds_and_serves(ray_session, tmp_path, monkeypatch):
    from ray import serve

    config = yaml.safe_load((ROOT / "deploy" / "serve-config.yaml").read_text())
    app = config["applications"][0]
    module, attr = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    port = free_port()
    args = dict(app["args"])
    # Same builder and arguments, pointed at local pieces: milvus-lite, no Elasticsearch, a temp data dir.
    args["config"] = {**args["config"], "data_dir": str(tmp_path), "host": "127.0.0.1", "port": port,
                      "milvus": {"mode": "lite"}, "elasticsearch": {"mode": "off"}, "encoder_replicas": 1}
    monkeypatch.setenv("PRISM_MILVUS_URI", "")  # empty variables are ignored, set ones override
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(builder(args), name="prism-config-test", route_prefix="/")
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=60).json()
        assert health["status"] == "ok" and health["encoders"]["minilm"]["available"]
        r = httpx.put(f"http://127.0.0.1:{port}/v1/collections/k8s", timeout=60,
                      json={"spaces": {"v": {"dim": 2, "index": {"type": "FLAT"}},
                                       "t": {"dim": 384, "encoder": "minilm", "source": "text",
                                             "index": {"type": "FLAT"}}}})
        assert r.status_code == 200, r.text
        # The encoder's float32 vector through Serve, the ingress and a Ray shard actor into milvus-lite, and back
        # as JSON floats: the query's own vector finds the point at similarity 1.
        r = httpx.post(f"http://127.0.0.1:{port}/v1/collections/k8s/points", timeout=60,
                       json={"points": [{"id": "a", "payload": {"text": "a red shoe"}}]})
        assert r.status_code == 200, r.text
        r = httpx.post(f"http://127.0.0.1:{port}/v1/collections/k8s/query", timeout=60, json={
            "prefetch": [{"space": "t", "text": "a red shoe"}], "fusion": {"method": "none"}, "with_vectors": ["t"],
            "limit": 1})
        hit = r.json()["hits"][0]
        assert hit["id"] == "a" and abs(hit["score"] - 1) < 1e-4 and len(hit["vectors"]["t"]) == 384
        assert all(isinstance(x, float) for x in hit["vectors"]["t"])
    finally:
        serve.shutdown()
