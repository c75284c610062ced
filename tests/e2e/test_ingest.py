"""Bulk ingestion on Ray Data into a live prism: exactly once, idempotent re-runs, resume after a crash."""
from __future__ import annotations

import json

import pytest

from cluster.cli.ingest import run_ingest

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
    with pytest.raises(Crash):
        run_ingest(src, "bulk", prism_server.url, ledger_path=ledger, batch_size=64, write_batch=200,
                   progress=crash_after(600))
    first = count(target)
    assert 600 <= first < N
    rep = run_ingest(src, "bulk", prism_server.url, ledger_path=ledger, batch_size=64, write_batch=200)
    assert rep.skipped == first and rep.upserted == N - first and rep.failures == []
    assert count(target) == N
    again = run_ingest(src, "bulk", prism_server.url, ledger_path=ledger)
    assert again.upserted == 0 and again.skipped == N
    assert count(target) == N
    title = f"{WORDS[1234 % 12]} {WORDS[(1234 * 7) % 12]} item 1234"
    hit = target.post("/v1/collections/bulk/query", json={"prefetch": [{"space": "text", "text": title}],
                                                           "fusion": {"method": "none"}, "limit": 5}).json()["hits"]
    assert hit[0]["id"] == "b1234" and hit[0]["score"] > 0.99  # stored vector == the query's: same text, same model
