"""`make demo` (the README's first command) runs end to end: up, ingest, the example queries, status, down."""
from __future__ import annotations

import os
import subprocess
import sys

from deploy.tinyclip import build_tiny_clip


def test_the_demo_runs_and_shows_answers(tmp_path):
    # CLIP weights where `prism up` looks for them (PRISM_MODELS_DIR): the demo's image part runs, on every machine.
    build_tiny_clip(tmp_path / "models" / "clip")
    r = subprocess.run([sys.executable, "-m", "cluster.cli.demo"], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PRISM_MODELS_DIR": str(tmp_path / "models")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "prism is up at" in out and "ingested 64 points" in out and "prism is down" in out
    assert "'shoes for running on muddy trails' in text (none)" in out  # the first example query's table
    assert "'a cup of coffee' -> scikit-image photos (CLIP)" in out and "image space off" not in out
    assert "hybrid: keywords+text+visual, rrf, boost, mmr" in out  # the hybrid query with stages
    assert out.count("group: ") == 3                               # and the answer grouped by category


def test_a_missing_config_file_is_a_clear_error_not_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--config", str(tmp_path / "nope.yaml"),
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
