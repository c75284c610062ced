"""Shared fixtures: one session-scoped Ray, the bundled Milvus server started on free ports and stopped by
process group. CI starts with nothing running; everything a test needs is started here."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# `make test` runs the suite on pytest-xdist workers with --dist loadgroup. Each test joins a group, and a group runs
# on one worker: the tests on a shared `prism up` (the keyed instance, then the open one) join that instance's group,
# so each starts once in a run rather than once per worker; every other test joins its module's group, so a module
# fixture starts once. Session fixtures (Ray, the Milvus server, noida-db) start once per worker that needs them, on
# free ports and under the worker's own tmp dir. An explicit @pytest.mark.xdist_group wins.
SHARED_INSTANCES = ("secured", "prism_server")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        fixtures = getattr(item, "fixturenames", ())
        group = next((f for f in SHARED_INSTANCES if f in fixtures), item.nodeid.split("::")[0])
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # "local": a new Ray of this test process's own, never the one a `ray start` on this machine recorded in
    # RAY_TMPDIR (another xdist worker's test, or a helper's), which ray.init() without an address would join.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="prism-tests",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    from tests.milvus_start import start_milvus_server

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
