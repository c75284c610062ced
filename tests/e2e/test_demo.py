"""`make demo` (the README's first command) runs end to end: up, ingest, the example queries, status, down."""
from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_and_shows_answers():
    r = subprocess.run([sys.executable, "-m", "cluster.cli.demo"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "prism is up at" in out and "ingested 64 points" in out and "prism is down" in out
    assert "'shoes for running on muddy trails' in text (none)" in out  # the first example query's table
    assert "image space off" in out or "scikit-image photos (CLIP)" in out  # says what it does about images
    assert "hybrid: keywords+text+visual, rrf, boost, mmr" in out  # the hybrid query with stages
    assert out.count("group: ") == 3                               # and the answer grouped by category


def test_a_missing_config_file_is_a_clear_error_not_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--config", str(tmp_path / "nope.yaml"),
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
