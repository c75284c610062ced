"""`prism models install clip --from DIR` validates by embedding, copies into place; `prism models list` shows it."""
from __future__ import annotations

import subprocess
import sys

from deploy.tinyclip import build_tiny_clip
from router.encoding.embed import cuda_visible


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cluster.cli", "models", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_models_install_and_list(tmp_path, monkeypatch):
    import os

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PRISM_MODELS_DIR": ""}
    src = build_tiny_clip(tmp_path / "downloaded-elsewhere")
    models = tmp_path / "models"
    r = cli("list", "--models-dir", str(models), env=env)
    assert r.returncode == 0 and "missing" in r.stdout
    # What auto picks on this machine: the GPU in fp16 where torch sees one, else the CPU in fp32 and why not.
    cuda, why = cuda_visible()
    assert ("device here (encoder_device: auto): cuda, float16\n" if cuda else
            f"device here (encoder_device: auto): cpu, float32 ({why})\n") in r.stdout, r.stdout
    r = cli("install", "clip", "--from", str(src), "--models-dir", str(models), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installed clip (16-d" in r.stdout and (models / "clip" / "config.json").is_file()
    r = cli("list", "--models-dir", str(models), env=env)
    assert r.returncode == 0 and f"clip: present at {models / 'clip'} (16-d" in r.stdout
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    r = cli("install", "clip", "--from", str(bad), "--models-dir", str(tmp_path / "other"), env=env)
    assert r.returncode == 1 and "not a loadable CLIP model" in r.stderr and not (tmp_path / "other" / "clip").exists()
