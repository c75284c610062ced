"""`prism loadtest` against the live server: report files, counts that match the server's own counters."""
from __future__ import annotations

import json
import re

from tests.e2e.conftest import prism_cli

QUERIES = ("/v1/collections/{name}/query", "/v1/collections/{name}/query/batch")
WRITES = ("/v1/collections/{name}/points", "/v1/collections/{name}/points/delete")


def served(metrics_text: str, endpoints: tuple[str, ...]) -> int:
    total = 0.0
    for line in metrics_text.splitlines():
        m = re.match(r'prism_requests_total\{endpoint="([^"]+)",method="POST",status="\d+"\} ([0-9.e+]+)', line)
        if m and m.group(1) in endpoints:
            total += float(m.group(2))
    return int(total)


def test_loadtest_runs_and_its_counts_match_the_server(products, prism_server, tmp_path):
    c = prism_server.client
    before = c.get("/metrics").text
    out = tmp_path / "report"
    r = prism_cli("loadtest", "--url", prism_server.url, "--collection", "products", "--users", "3",
                  "--spawn-rate", "3", "--run-time", "10s", "--out", str(out), "--write-share", "0.1")
    after = c.get("/metrics").text
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("locust_stats.csv", "locust_stats_history.csv", "final_stats.json", "summary.json",
                 "latency_percentiles.png", "qps.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert {"query:text", "query:fused", "query:batch", "write:upsert", "write:delete"} <= set(summary["types"])
    total = summary["total"]
    assert total["requests"] > 20 and total["error_rate"] == 0.0 and summary["partial_rate"] == 0.0
    for entry in summary["types"].values():
        assert entry["p50_ms"] <= entry["p95_ms"] <= entry["p99_ms"]
    # Every request Locust counted reached the server's own counters. Queries: exactly, but for the one each of the
    # 3 users may have in flight at the stop. Writes: at least as many (the session's server is shared, and a write
    # made elsewhere in this session, such as a straggling ingest task's upsert, may land in this window too).
    queries = sum(e["requests"] for k, e in summary["types"].items() if k.startswith("query:"))
    writes = sum(e["requests"] for k, e in summary["types"].items() if k.startswith("write:"))
    seen_queries = served(after, QUERIES) - served(before, QUERIES)
    assert 0 <= seen_queries - queries <= 3, (seen_queries, queries)
    assert served(after, WRITES) - served(before, WRITES) >= writes
    assert "requests" in r.stdout and "report in" in r.stdout


def test_bad_configuration_is_a_clear_message_not_a_traceback(products, prism_server, tmp_path):
    from cluster.services import free_port

    r = prism_cli("loadtest", "--url", f"http://127.0.0.1:{free_port()}", "--collection", "products",
                  "--run-time", "2s", "--out", str(tmp_path / "a"), check=False)
    assert r.returncode == 2 and "cannot reach prism" in r.stderr and "Traceback" not in r.stderr + r.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = prism_cli("loadtest", "--url", prism_server.url, "--collection", "products", "--corpus", str(empty),
                  "--run-time", "2s", "--out", str(tmp_path / "b"), check=False)
    assert r.returncode == 2 and "is empty" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = prism_cli("loadtest", "--url", prism_server.url, "--collection", "nope", "--run-time", "2s",
                  "--out", str(tmp_path / "c"), check=False)
    assert r.returncode == 2 and "'nope'" in r.stderr and "Traceback" not in r.stderr + r.stdout


def grpc_served(metrics_text: str, methods: tuple[str, ...]) -> int:
    total = 0.0
    for line in metrics_text.splitlines():
        m = re.match(r'prism_requests_total\{endpoint="grpc:([^"]+)",method="GRPC",status="OK"\} ([0-9.e+]+)', line)
        if m and m.group(1) in methods:
            total += float(m.group(2))
    return int(total)


def test_loadtest_over_grpc_sends_its_mix_through_the_grpc_api(products, prism_server, tmp_path):
    c = prism_server.client
    before = c.get("/metrics").text
    out = tmp_path / "grpc-report"
    r = prism_cli("loadtest", "--url", prism_server.url, "--protocol", "grpc", "--grpc", prism_server.grpc_target,
                  "--collection", "products", "--users", "2", "--spawn-rate", "2", "--run-time", "6s",
                  "--out", str(out), "--write-share", "0.1")
    after = c.get("/metrics").text
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "grpc" and summary["url"] == f"grpc://{prism_server.grpc_target}"
    assert {"query:text", "query:fused", "query:batch"} <= set(summary["types"])
    assert summary["total"]["requests"] > 5 and summary["total"]["error_rate"] == 0.0
    queries = sum(e["requests"] for k, e in summary["types"].items() if k.startswith("query:"))
    seen = grpc_served(after, ("Query", "QueryBatch")) - grpc_served(before, ("Query", "QueryBatch"))
    assert 0 <= seen - queries <= 2, (seen, queries)  # at most one call per user in flight at the stop
    assert served(after, QUERIES) == served(before, QUERIES)  # none of it went over HTTP
