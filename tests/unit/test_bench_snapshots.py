"""deploy/bench_snapshots.py's pure parts: the writer's windows, the JSON it writes, its docs table."""
from deploy import bench_snapshots as bs
from deploy.report import SECTIONS


def measured(pause_ms: float, restore_s: float) -> dict:
    window = {"writes": 3, "p99_ms": 9.0, "max_ms": 9.5, "p50_ms": 4.0}
    return {"load": {"create_s": 1.0, "write_s": 10.0, "index_wait_s": 2.0},
            "snapshot": {"counts": {"points": 1000}, "bytes": 12345, "write_pause_ms": pause_ms},
            "snapshot_s": 0.04, "restore_s": restore_s, "restore_index_wait_s": 1.5,
            "before": window, "during": {**window, "p99_ms": 30.0}, "failed_writes": 0}


def test_summary_has_the_issue_keys_and_judges_each_target():
    d = bs.summarise(measured(pause_ms=150.0, restore_s=5.0), n=1000, before_s=1.0)
    for key in ("points", "ingest_points_per_s", "snapshot_points_per_s", "restore_points_per_s", "write_pause_ms",
                "writer_p99_ms_during", "writer_p99_ms_before", "targets"):
        assert key in d
    assert (d["ingest_points_per_s"], d["snapshot_points_per_s"], d["restore_points_per_s"]) == (100.0, 25000.0, 200.0)
    assert d["restore_vs_ingest"] == 2.0
    assert (d["writer_p99_ms_before"], d["writer_p99_ms_during"]) == (9.0, 30.0)
    assert d["met"] == {"snapshot_points_per_s": True, "write_pause_ms": False, "restore_vs_ingest": True}
    slow = bs.summarise(measured(pause_ms=50.0, restore_s=20.0), n=1000, before_s=1.0)
    assert slow["met"]["write_pause_ms"] and not slow["met"]["restore_vs_ingest"]


def test_table_and_report_line_render_the_summary():
    d = {"machine": {}, **bs.summarise(measured(pause_ms=150.0, restore_s=5.0), n=1000, before_s=1.0)}
    text = bs.table(d)
    assert "| snapshot, writer on | 0.04 | 25000.0 |" in text and "write_pause_ms **no**" in text
    (about,) = [a for name, module, _, a in SECTIONS if name == "snapshots" and module == "deploy.bench_snapshots"]
    assert "1,000 x 384 points, 4 shards" in about(d)


def test_writer_window_counts_writes_by_when_they_were_due():
    w = bs.Writer.__new__(bs.Writer)
    w.done = [(0.5, 1.0), (1.5, 100.0), (2.5, 3.0)]
    got = w.window(1.0, 2.0)
    assert (got["writes"], got["max_ms"]) == (1, 100.0)
