"""The loader's answer to a server that says "retry" (503: a shard did not acknowledge in time, writes paused; 429:
rate limit): the batch is sent again after Retry-After or a backoff, at most `retries` times, then reported. The
server's answers are scripted at the HTTP transport; the waits go to a recording sleep (no time passes)."""
from __future__ import annotations

import json

import httpx

from cluster.cli.ingest import IngestReport, Ledger, Writer


def writer(tmp_path, answers: list[httpx.Response], retries: int = 5):
    sent, waits = [], []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append([p["id"] for p in json.loads(request.content)["points"]])
        return answers.pop(0) if answers else httpx.Response(200, json={"upserted": len(sent[-1]), "failed": []})

    client = httpx.Client(transport=httpx.MockTransport(handle))
    report = IngestReport()
    w = Writer(client, "http://prism", "c", Ledger(tmp_path / "acked"), report, None, retries=retries,
               sleep=waits.append)
    return w, report, sent, waits


def batch(n: int) -> list[tuple[dict, str]]:
    return [({"id": f"p{i}", "title": f"t{i}"}, "") for i in range(n)]


def test_a_503_and_a_429_are_sent_again_after_the_wait_the_server_names_and_land(tmp_path):
    busy = httpx.Response(503, json={"message": "write to shard 2 not acknowledged ... retrying it is safe"})
    limited = httpx.Response(429, headers={"retry-after": "3"}, json={"message": "rate limit"})
    w, report, sent, waits = writer(tmp_path, [busy, limited, busy])
    w.write(batch(4))
    assert sent == [["p0", "p1", "p2", "p3"]] * 4 and waits == [1.0, 3.0, 4.0]  # backoff 1, Retry-After 3, backoff 4
    assert report.upserted == 4 and report.failures == [] and report.retried == 3
    assert (tmp_path / "acked").read_text().split() == ["p0", "p1", "p2", "p3"]


def test_a_server_that_keeps_refusing_fails_the_batch_after_its_tries_and_acknowledges_nothing(tmp_path):
    w, report, sent, waits = writer(tmp_path, [httpx.Response(503, json={"message": "down"})] * 10, retries=2)
    w.write(batch(2))
    assert len(sent) == 3 and waits == [1.0, 2.0] and report.retried == 2
    assert report.upserted == 0 and [i for i, _ in report.failures] == ["p0", "p1"]
    assert all(reason.startswith("HTTP 503: down") for _, reason in report.failures)
    assert not (tmp_path / "acked").exists() or (tmp_path / "acked").read_text() == ""


def test_other_refusals_are_not_retried(tmp_path):
    w, report, sent, waits = writer(tmp_path, [httpx.Response(500, json={"message": "boom"})])
    w.write(batch(2))
    assert len(sent) == 1 and waits == [] and report.retried == 0 and len(report.failures) == 2


def test_a_retry_after_that_is_no_positive_number_gets_the_backoff_and_a_huge_one_is_capped(tmp_path):
    answers = [httpx.Response(503, headers={"retry-after": v}, json={"message": "busy"})
               for v in ("-5", "nan", "0", "Wed, 21 Oct 2026 07:28:00 GMT", "99999")]
    w, report, sent, waits = writer(tmp_path, answers)
    w.write(batch(1))
    assert waits == [1.0, 2.0, 4.0, 8.0, 30.0] and report.upserted == 1 and report.retried == 5
