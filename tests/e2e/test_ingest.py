"""Bulk ingestion into a live prism, on both paths: exactly once, idempotent re-runs, resume after a crash (by the
command, on the instance's own Ray cluster), a bad point reported alone; small loads embedded by the running
instance, with nothing but the command's own lines on the console."""
from __future__ import annotations

import json
import re

import pytest

from cluster.cli.ingest import run_ingest
from tests.e2e.conftest import prism_cli

# 1500 points in 8 write batches of 200: the crash lands after 3 acknowledged batches, the resume writes the other 5
# (5000 in batches of 500 asked the same questions at three times the embedding time).
N = 1500
WORDS = ["red", "blue", "shoe", "coat", "lamp", "mug", "tent", "bag", "warm", "light", "sport", "classic"]


@pytest.fixture(scope="module")
def target(prism_server):
    c = prism_server.client
    spec = {"spaces": {"text": {"dim": 384, "encoder": "minilm", "source": "title", "index": {"type": "HNSW"}}},
            "shards": 3, "metadata": {"n": "integer"}}
    assert c.put("/v1/collections/bulk", json=spec).status_code == 200
    return c


def write_points(path, n=N):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"b{i}", "title": f"{WORDS[i % 12]} {WORDS[(i * 7) % 12]} item {i}", "n": i}) + "\n")


def count(c) -> int:
    return c.get("/v1/collections/bulk").json()["counts"]["text"]


class Crash(Exception):
    pass


def crash_after(n: int):
    """A progress callback that crashes the run once `n` points have been written (each batch is acknowledged and
    in the ledger before progress hears of it): a run killed mid-way."""
    done = [0]

    def progress(points: int) -> None:
        done[0] += points
        if done[0] >= n:
            raise Crash(f"crashed after {done[0]} points")

    return progress


@pytest.mark.slow
def test_ray_data_ingest_exactly_once_and_resumes(target, prism_server, ray_session, tmp_path):
    src = tmp_path / "points.jsonl"
    write_points(src)
    ledger = tmp_path / "ledger.acked"
    before = count(target)  # counts by delta: the small-load tests below write to this collection too
    with pytest.raises(Crash):
        run_ingest(src, "bulk", prism_server.url, ledger_path=ledger, batch_size=64, write_batch=200,
                   progress=crash_after(600), direct_below=0)
    first = count(target) - before
    assert 600 <= first < N
    # The resume is the command a person runs on the instance's host: its pipeline joins the instance's own Ray
    # cluster (none started), and the console keeps only the command's own lines.
    r = prism_cli("ingest", str(src), "--collection", "bulk", "--data-dir", str(prism_server.data_dir),
                  "--ledger", str(ledger), "--write-batch", "200", "--direct-below", "0", check=False, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    assert re.search(rf"^ingested {N - first} points in [\d.]+s \([\d.]+ points/s, embedded on Ray Data in the "
                     rf"instance's Ray cluster\), {first} already acknowledged, 0 failures$", r.stdout, re.M), r.stdout
    assert [ln for ln in r.stdout.splitlines() if FRAMEWORK_LINE.search(ln)] == [], r.stdout
    assert count(target) - before == N
    again = run_ingest(src, "bulk", prism_server.url, ledger_path=ledger)
    assert again.upserted == 0 and again.skipped == N
    assert count(target) - before == N
    title = f"{WORDS[1234 % 12]} {WORDS[(1234 * 7) % 12]} item 1234"
    hit = target.post("/v1/collections/bulk/query", json={"prefetch": [{"space": "text", "text": title}],
                                                           "fusion": {"method": "none"}, "limit": 5}).json()["hits"]
    assert hit[0]["id"] == "b1234" and hit[0]["score"] > 0.99  # stored vector == the query's: same text, same model


# What Ray, Ray Data, pymilvus and the logging module print: `2026-12-05 03:16:53,691\tINFO streaming_executor.py...`,
# `[2026-12-05 03:16:53,732 E 31559 31559] core_worker.cc:2465: ...`, `WARNING:root:...`, `... UserWarning: ...`.
FRAMEWORK_LINE = re.compile(r"\b(INFO|WARNING|DEBUG|ERROR)\b|core_worker|\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+|Warning:")
SMALL = 150  # three write batches of 50: a crash after the first, a resume that writes the other two


def write_small(path, ids, bad_at: int | None = None):
    """Points with titles; at `bad_at`, a point with nothing to embed (the server refuses it, naming it), and after
    it a line that is not JSON."""
    lines = [json.dumps({"id": i, "title": f"{WORDS[n % 12]} {WORDS[(n * 5) % 12]} small {n}"}) for n, i in enumerate(ids)]
    if bad_at is not None:
        lines[bad_at:bad_at] = [json.dumps({"id": "nothing-to-embed", "n": 1}), "{not json"]
    path.write_text("\n".join(lines) + "\n")


def test_a_small_load_is_embedded_by_the_instance_resumes_and_reports_its_bad_point_alone(target, prism_server,
                                                                                         tmp_path):
    """On the Ray Data test's collection (no second collection to create), with ids of its own: counts by delta."""
    src, ledger = tmp_path / "small.jsonl", tmp_path / "small.acked"
    write_small(src, [f"s{i}" for i in range(SMALL)], bad_at=80)
    before = count(target)
    with pytest.raises(Crash):
        run_ingest(src, "bulk", prism_server.url, ledger_path=ledger, write_batch=50, progress=crash_after(50))
    assert count(target) - before == 50
    rep = run_ingest(src, "bulk", prism_server.url, ledger_path=ledger, write_batch=50)
    assert rep.path == "direct" and rep.skipped == 50 and rep.upserted == SMALL - 50
    assert [i for i, _ in rep.failures] == ["line 82", "nothing-to-embed"]  # its batch's other 49 points landed
    assert "not JSON" in rep.failures[0][1]
    assert rep.failures[1][1].startswith("HTTP 422: ") and "no source text to embed" in rep.failures[1][1]
    assert count(target) - before == SMALL
    again = run_ingest(src, "bulk", prism_server.url, ledger_path=ledger)  # only the refused point is tried again
    assert again.upserted == 0 and again.skipped == SMALL and [i for i, _ in again.failures][1:] == ["nothing-to-embed"]
    assert count(target) - before == SMALL
    title = f"{WORDS[120 % 12]} {WORDS[(120 * 5) % 12]} small 120"
    hit = target.post("/v1/collections/bulk/query", json={"prefetch": [{"space": "text", "text": title}],
                                                          "fusion": {"method": "none"}, "limit": 1}).json()["hits"]
    assert hit[0]["id"] == "s120" and hit[0]["score"] > 0.99  # embedded by the instance: the query's own vector


def test_the_ingest_command_prints_only_its_own_lines(target, prism_server, tmp_path):
    src = tmp_path / "cli.jsonl"
    write_small(src, [f"c{i}" for i in range(20)], bad_at=5)
    r = prism_cli("ingest", str(src), "--collection", "bulk", "--url", prism_server.url,
                  "--data-dir", str(tmp_path / "data"), check=False, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # failures: exit 1, as on the Ray Data path
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert [ln for ln in lines if FRAMEWORK_LINE.search(ln)] == [], r.stdout + r.stderr
    assert r.stderr == ""
    assert re.search(r"^ingested 20 points in [\d.]+s \([\d.]+ points/s, embedded by the running instance\), "
                     r"0 already acknowledged, 2 failures$", r.stdout, re.M), r.stdout
    assert "failed line 7: not JSON" in r.stdout and "failed nothing-to-embed: HTTP 422" in r.stdout
    assert (tmp_path / "data" / "ingest" / "cli.jsonl.bulk.acked").read_text().split() == [f"c{i}" for i in range(20)]
