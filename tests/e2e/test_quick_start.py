"""The README's local quick start, run as written in a fresh directory (its own `prism up`, so a file of its own:
make test schedules files on xdist workers, and this one need not wait behind the shared instance's files)."""
from __future__ import annotations

import re

from tests.e2e.test_readme import README, bash_blocks


def test_readme_quick_start_runs_as_written(tmp_path):
    """The quick start's commands, verbatim, in a fresh directory that holds only what a checkout holds. It serves
    on the default ports (8000, 9000); here `prism up` gets free ones added, so that it runs beside anything else
    on this machine. The other commands find the instance it records in .prism/, as they do after a plain up."""
    import os
    import subprocess

    from cluster.config import ClusterConfig
    from cluster.services import free_port, side_port

    root = README.parent
    blocks = bash_blocks("Local quick start")
    assert blocks, "the README lost its quick start"
    lines = [ln for ln in blocks[0].splitlines() if ln.strip()]
    assert lines[0].startswith("make venv") and lines[-1].startswith(".venv/bin/prism down")
    up_line, comment = lines[1].split("#", 1)
    assert up_line.startswith(".venv/bin/prism up ") and "--port" not in up_line and "--grpc-port" not in up_line
    assert "127.0.0.1:8000" in comment and (ClusterConfig().port, ClusterConfig().grpc_port) == (8000, 9000)
    port, grpc_port = free_port(), side_port()
    lines[1] = f"{up_line.rstrip()} --port {port} --grpc-port {grpc_port}"
    # The venv already exists (make test made it): `make venv` must be a no-op, never a reinstall from here.
    assert subprocess.run(["make", "-q", "venv"], cwd=root).returncode == 0, "the venv is stale: run `make venv`"
    for name in ("Makefile", "pyproject.toml", ".venv", "deploy"):
        (tmp_path / name).symlink_to(root / name)
    outputs = []
    try:
        for line in lines:
            r = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": str(root)})
            outputs.append(r.stdout)
            assert r.returncode == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
    finally:
        subprocess.run([str(root / ".venv/bin/prism"), "down", "--data-dir", str(tmp_path / ".prism")],
                       capture_output=True, timeout=300)
    up, ingest, query, status, down = outputs[1:]
    assert f"prism is up at http://127.0.0.1:{port}" in up
    assert "ingested 64 points" in ingest  # every catalog point acknowledged
    # Shoes for muddy trails: the hiking boot and the two trail shoes lead (text and visual fused, ties by id).
    ranked = re.findall(r"^\W+(\d+) \W+(sku-\d+) ", query, flags=re.M)
    assert [sku for _, sku in ranked[:3]] == ["sku-002", "sku-005", "sku-001"], query
    assert "collection products" in status and f"gRPC: 127.0.0.1:{grpc_port} (grpc.health.v1: SERVING)" in status
    assert "prism is down" in down
