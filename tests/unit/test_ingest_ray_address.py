"""`prism ingest` joins the Ray cluster of the instance recorded in its data dir, and only that one: the same URL,
a live process, a cluster the instance started itself."""
import json
import os
import subprocess
import sys

from cluster.cli.bootstrap import STATE_FILE, local_ray_address

URL = "http://127.0.0.1:8123"


def record(tmp_path, **state):
    (tmp_path / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "url": URL, "ray_gcs": "127.0.0.1:6379",
                                                   **state}))


def test_the_recorded_live_instance_at_the_same_url_is_joined(tmp_path):
    record(tmp_path)
    assert local_ray_address(tmp_path, URL) == "127.0.0.1:6379"
    assert local_ray_address(tmp_path, URL + "/") == "127.0.0.1:6379"


def test_another_url_a_dead_instance_an_attached_one_or_none_is_not(tmp_path):
    assert local_ray_address(tmp_path, URL) is None  # nothing recorded
    record(tmp_path)
    assert local_ray_address(tmp_path, "http://127.0.0.1:9999") is None  # --url names another instance
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record(tmp_path, pid=int(gone.stdout))
    assert local_ray_address(tmp_path, URL) is None  # its process has exited: a stale state file
    record(tmp_path, ray_gcs=None)
    assert local_ray_address(tmp_path, URL) is None  # it attached to a cluster of several nodes: not joined
