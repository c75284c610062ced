"""Shared fixtures: one session-scoped Ray, the bundled Milvus server started on free ports and stopped by
process group. CI starts with nothing running; everything a test needs is started here."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# `make test` runs the suite on pytest-xdist workers. Tests go to workers by group, each group whole to one worker:
# the tests on a shared `prism up` (the keyed instance, the open one) are one group per instance, so each starts
# once in a run rather than once per worker (both instances' groups on one worker); every other file is a group of
# its own (module fixtures start once).
# Session fixtures (Ray, the Milvus server, noida-db) start once per worker that needs them, on free ports, under the
# worker's own tmp dir. The groups are named by file because xdist schedules from node ids alone (its
# xdist_group mark does not reach the node ids under pytest 9); pytest_itemcollected keeps the table honest.
INSTANCE_GROUPS = {
    "secured": ("tests/e2e/test_access.py", "tests/e2e/test_access_surface.py"),
    "prism_server": ("tests/e2e/test_exposure.py", "tests/e2e/test_grpc.py", "tests/e2e/test_http.py",
                     "tests/e2e/test_images.py", "tests/e2e/test_ingest.py", "tests/e2e/test_loadtest.py",
                     "tests/e2e/test_qdrant.py", "tests/e2e/test_readme.py", "tests/e2e/test_security_open.py",
                     "tests/e2e/test_verify.py"),
}
GROUP_OF = {path: group for group, paths in INSTANCE_GROUPS.items() for path in paths}
# Both instances' files go to one worker: a test that uses both (two instances on one host) would otherwise start a
# second `prism_server` on the keyed group's worker (70 s under load), and together they are well under half the run.
SCOPE = "shared_instances"
# What the longest groups took in `make test` (-n 2 then, quiet 2-core machine, 2026-12-05, --junitxml sums): the
# scheduler starts them first. Only the order depends on these; a stale number costs balance, never a test.
GROUP_SECONDS = {
    SCOPE: 500, "tests/integration/test_node_loss.py": 156, "tests/e2e/test_security_keyed.py": 126,
    "tests/e2e/test_lifecycle.py": 118, "tests/e2e/test_demo.py": 103, "tests/integration/test_core.py": 90,
    "tests/integration/test_filters.py": 65, "tests/e2e/test_quick_start.py": 63,
    "tests/integration/test_replication.py": 53, "tests/integration/test_milvus_outage.py": 50,
    "tests/integration/test_milvus_auth.py": 44, "tests/integration/test_routing_vectors.py": 40,
    "tests/integration/test_freshness.py": 40, "tests/integration/test_serve_config.py": 38,
    "tests/integration/test_replica_agreement.py": 36, "tests/integration/test_scroll_count_mapping.py": 34,
    "tests/integration/test_batching.py": 32,
}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByInstance(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SCOPE if path in GROUP_OF else path

        def _assign_work_unit(self, node) -> None:
            # Longest first (LPT): xdist orders groups by their number of tests, which sent the one-test files that
            # take a minute or more (quick start, lifecycle, demo) last, to a tail one worker ran alone (the last
            # 70 s of a 952 s run, vmstat: 60-93 % idle).
            if not self.ordered:
                order = sorted(self.workqueue.items(), key=lambda kv: (-GROUP_SECONDS.get(kv[0], 0), -len(kv[1])))
                self.workqueue.clear()
                self.workqueue.update(order)
                self.ordered = True
            super()._assign_work_unit(node)

    return ByInstance(config, log)


def pytest_itemcollected(item):
    """A test on a shared instance must sit in a file of that instance's group (the first instance it uses)."""
    fixtures = getattr(item, "fixturenames", ())
    path = item.nodeid.split("::", 1)[0]
    uses = next((name for name in INSTANCE_GROUPS if name in fixtures), None)
    if uses is not None and GROUP_OF.get(path) != uses:
        raise pytest.UsageError(f"{item.nodeid} uses the shared `{uses}` instance: add {path} to "
                                f"INSTANCE_GROUPS[{uses!r}] in tests/conftest.py")


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
