"""A real two-node Ray cluster on this machine (`ray start --head` and `ray start --address`: two raylets, two
object stores, token authentication), shared by this module's tests: `prism up --ray-address` attaches to it and
spreads replicas over its nodes; then shard replicas lose the worker node (SIGKILL to every process it started)
under mixed load and get it back. That run is `deploy.bench_chaos node_loss` (the chaos benchmark's row, shorter)
in a process of its own: the test session's Ray is a single-node one, and a process joins one Ray cluster only."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cluster.services import free_port, start_ray_node, stop_process_group
from deploy.bench_chaos import node_loss_in_subprocess


@pytest.fixture(scope="module")
def two_nodes():
    token = secrets.token_hex(32)
    temp = Path(tempfile.mkdtemp(prefix="prism-ray-", dir="/tmp"))  # short: Unix socket paths
    head = start_ray_node(temp, token)
    worker = start_ray_node(temp, token, address=head.address)
    yield {"head": head, "worker": worker, "token": token, "temp": temp}
    worker.stop()  # the node_loss run kills this one and stops the one it starts again
    head.stop()


@pytest.mark.slow
def test_prism_up_attaches_to_a_two_node_cluster_and_spreads_replicas(two_nodes, tmp_path):
    """`prism up --ray-address`: no Ray of its own, and GET /v1/collections/{name} shows each shard's replicas on
    different nodes."""
    head, port = two_nodes["head"], free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": two_nodes["token"], "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "cluster.cli", "up", "--data-dir", str(tmp_path / "data"),
                               "--port", str(port), "--grpc-port", "0", "--milvus", "lite", "--elasticsearch", "off",
                               "--ray-address", head.address], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, env=env)
    try:
        deadline, healthy = time.monotonic() + 240, False
        while time.monotonic() < deadline and up.poll() is None and not healthy:
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)  # polling a server that is starting, with a deadline
        log_text = (tmp_path / "up.log").read_text(errors="replace")
        assert healthy, log_text[-3000:]
        assert f"attached to the Ray cluster at {head.address} (2 nodes)" in log_text
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        r = c.put("/v1/collections/mn", json={"shards": 2, "replicas": 2,
                                              "spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}})
        assert r.status_code == 200, r.text
        shards = c.get("/v1/collections/mn").json()["shards"]
        nodes = {s["shard"]: set() for s in shards}
        for s in shards:
            assert s["state"] == "live" and s["node"], s
            nodes[s["shard"]].add(s["node"])
        assert all(len(n) == 2 for n in nodes.values()), shards  # each shard's two replicas: two nodes
        assert len(set().union(*nodes.values())) == 2
    finally:
        stop_process_group(up.pid)


@pytest.mark.slow
def test_losing_a_ray_node_fails_no_read_and_loses_no_acknowledged_write(two_nodes):
    cluster = {"address": two_nodes["head"].address, "worker_pid": two_nodes["worker"].pid,
               "temp": str(two_nodes["temp"])}
    row = node_loss_in_subprocess(seconds=20, concurrency=4, points=1000, cluster=cluster, down_s=5,
                                  token=two_nodes["token"])
    before = row["placement_before"]
    assert before["nodes_alive"] == 2 and before["replicas_on_distinct_nodes"], before  # one replica per node
    assert row["queries"] >= 100 and row["during_fault_by_kind"]["vector"]["queries"] > 0, row
    assert row["failed"] == 0, row  # every read during the loss failed over to the surviving replica
    assert row["writes_acked"] > 0 and row["writes_lost"] == 0, row  # every acknowledged write on every replica
    assert row["replica_counts_equal"], row
    after = row["placement_after"]["layout"]
    assert all(len(nodes) == 2 and None not in nodes for nodes in after.values()), after  # rebuilt, answering
