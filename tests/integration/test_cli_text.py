"""The CLI prints text it did not write (error messages, names, paths) as plain text: rich markup in it is shown,
never interpreted (a `[/x]` in an HAProxy error once crashed `prism up` with rich.errors.MarkupError). And
collection names are checked by the CLI before any request is built from them."""
from __future__ import annotations

import os
import subprocess
import sys


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PRISM_API_KEY": ""}, cwd=cwd)


def test_messages_with_markup_are_printed_verbatim(tmp_path):
    r = cli("keys", "revoke", "[/x]", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "MarkupError" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "no key '[/x]'" in r.stderr, r.stderr
    bad = tmp_path / "conf[/x][bold]" / "prism.yaml"
    r = cli("up", "--config", str(bad), "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "MarkupError" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "conf[/x][bold]" in r.stderr, r.stderr


def test_collection_names_are_checked_before_any_request(tmp_path):
    for args in (("reshard", "--collection", "../catalog/x", "--shards", "2"),
                 ("rebalance", "--collection", "../catalog/x"),
                 ("verify", "--collection", "/etc/passwd"),
                 ("query", "hello", "--collection", "a__b"),
                 ("keys", "create", "--role", "read", "--collections", "ok,../x"),
                 ("ingest", __file__, "--collection", "x/y"),
                 ("loadtest", "--collection", "..", "--run-time", "1s")):
        r = cli(*args, "--data-dir", str(tmp_path), *(() if args[0] == "keys" else ("--url", "http://127.0.0.1:9")))
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stdout, r.stderr)
        assert "is not valid" in r.stderr, (args, r.stderr)
    assert not (tmp_path / "api-keys.json").exists()  # no key was made for a bad scope
