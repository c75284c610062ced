"""Shared fixtures: one session-scoped Ray, the bundled Milvus server started on free ports and stopped by
process group. CI starts with nothing running; everything a test needs is started here."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="prism-tests",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    from cluster.services import start_milvus_server

    handle = start_milvus_server(tmp_path_factory.mktemp("milvus-server"))
    yield handle
    handle.stop()


@pytest.fixture(params=["lite", "server"])
def milvus_backend(request, tmp_path):
    """(MilvusConfig, server uri) for each real backend."""
    from cluster.config import MilvusConfig

    if request.param == "lite":
        return MilvusConfig(mode="lite"), None
    handle = request.getfixturevalue("milvus_server")
    return MilvusConfig(mode="server", uri=handle.uri), handle.uri


@pytest.fixture(scope="session")
def es_server(tmp_path_factory):
    """The bundled Elasticsearch-API server (noida-db), on a free port."""
    from cluster.services import start_elasticsearch

    handle = start_elasticsearch(tmp_path_factory.mktemp("noida"))
    yield handle
    handle.stop()
