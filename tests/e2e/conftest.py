"""A real `prism up --detach` on a free port, stopped with `prism down` (checked by pid)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster.services import free_port


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def prism_cli(*args: str, check: bool = True, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=check)


class Instance:
    def __init__(self, data_dir: Path, port: int, milvus: str):
        self.data_dir, self.port, self.milvus = data_dir, port, milvus
        self.url = f"http://127.0.0.1:{port}"
        self.pid: int | None = None

    def up(self) -> None:
        r = prism_cli("up", "--detach", "--port", str(self.port), "--data-dir", str(self.data_dir),
                      "--milvus", self.milvus, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        import json

        self.pid = json.loads((self.data_dir / "prism-instance.json").read_text())["pid"]

    def down(self) -> list[int]:
        """Stop it; returns the processes of its group that are still alive afterwards (should be none)."""
        before = group_members(self.pid)
        assert before, "prism up should own live processes before down"
        r = prism_cli("down", "--data-dir", str(self.data_dir))
        assert "prism is down" in r.stdout
        return [p for p in before if p in group_members(self.pid)]


@pytest.fixture(scope="session")
def prism_server(milvus_server, tmp_path_factory):
    inst = Instance(tmp_path_factory.mktemp("prism-e2e"), free_port(), milvus_server.uri)
    inst.up()
    inst.client = httpx.Client(base_url=inst.url, timeout=120)
    yield inst
    inst.client.close()
    if inst.pid and group_members(inst.pid):
        prism_cli("down", "--data-dir", str(inst.data_dir), check=False)
