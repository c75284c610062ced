"""`prism ingest`'s quiet console: what libraries write to stderr (Python logging, warnings, C-level writes, child
processes such as Ray's workers) goes to the log file; stdout, the command's own output, is untouched."""
import subprocess
import sys

CHILD = """
import logging, os, subprocess, sys, warnings
from pathlib import Path
from cluster.cli.ingest import console_quiet

logging.basicConfig()
with console_quiet(Path(sys.argv[1])):
    print("progress 1/1", flush=True)
    logging.getLogger("ray.data").warning("Progress bars disabled")
    warnings.warn("pymilvus says something")
    os.write(2, b"[2026-12-05 03:16:53,732 E 1 1] core_worker.cc:2465: from C++\\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('a worker process\\\\n')"], check=True)
sys.stderr.write("after: the console again\\n")
"""


def test_framework_lines_go_to_the_log_file_and_stdout_stays(tmp_path):
    log = tmp_path / "ingest" / "ingest.log"
    r = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "progress 1/1\n"
    assert r.stderr == "after: the console again\n"
    text = log.read_text()
    for line in ("WARNING:ray.data:Progress bars disabled", "UserWarning: pymilvus says something",
                 "core_worker.cc:2465: from C++", "a worker process"):
        assert line in text, text
