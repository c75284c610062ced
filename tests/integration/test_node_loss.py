"""A real two-node Ray cluster on this machine (`ray start --head` and `ray start --address`: two raylets, two
object stores, token authentication), shard replicas placed on different nodes, and the worker node killed
(SIGKILL to every process it started) under mixed load, then started again. It runs in a process of its own
(`deploy.bench_chaos node_loss`, the same run as the chaos benchmark's row, shorter): the test session's Ray is
a single-node one, and a process can be connected to one Ray cluster only."""
from __future__ import annotations

import pytest

from deploy.bench_chaos import node_loss_in_subprocess


@pytest.mark.slow
def test_losing_a_ray_node_fails_no_read_and_loses_no_acknowledged_write():
    row = node_loss_in_subprocess(seconds=30, concurrency=4, points=1000)
    before = row["placement_before"]
    assert before["nodes_alive"] == 2 and before["replicas_on_distinct_nodes"], before  # one replica per node
    assert row["queries"] >= 100 and row["during_fault_by_kind"]["vector"]["queries"] > 0, row
    assert row["failed"] == 0, row  # every read during the loss failed over to the surviving replica
    assert row["writes_acked"] > 0 and row["writes_lost"] == 0, row  # every acknowledged write on every replica
    assert row["replica_counts_equal"], row
    after = row["placement_after"]["layout"]
    assert all(len(nodes) == 2 and None not in nodes for nodes in after.values()), after  # rebuilt, answering
