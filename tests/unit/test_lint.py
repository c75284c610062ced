"""The linter `make test` runs before the tests: what it is configured to catch, and where it looks."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_an_import_rebinding_another_name_fails_the_lint():
    """The shape of the bug that silently killed the ingress heal loop: `describe` imported twice."""
    code = ("from cluster.errors import describe\nfrom router.serving.openapi import describe\n\n\n"
            "def heal(exc):\n    return describe(exc)\n")
    r = ruff("check", "--no-cache", "--stdin-filename", "router/serving/app.py", "-", stdin=code)
    assert r.returncode == 1 and "F811" in r.stdout, r.stdout + r.stderr
    r = ruff("check", "--no-cache", "--stdin-filename", "tests/unit/test_x.py", "-", stdin="import os\n")
    assert r.returncode == 1 and "F401" in r.stdout, r.stdout + r.stderr  # tests are linted too


def test_every_source_file_is_linted_except_the_generated_stubs():
    r = ruff("check", "--no-cache", "--show-files", ".")
    files = {Path(line).resolve().relative_to(ROOT).as_posix() for line in r.stdout.split() if line.endswith(".py")}
    stubs = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*_pb2*.py") if ".venv" not in p.parts}
    assert stubs and not files & stubs
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert set(tracked) - stubs <= files, sorted(set(tracked) - stubs - files)


def test_the_tree_is_clean():
    r = ruff("check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_make_test_lints_first_and_lists_the_slowest_tests():
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1).split("\n\t")
    steps = [s.strip() for s in recipe]
    assert steps[0] == "$(PY) -m ruff check ." and "-m pytest" in steps[1] and "--durations=30" in steps[1], steps
