"""Slowloris against a real HAProxy running the config Ray Serve itself renders (its own template and dataclasses,
no Ray cluster needed): as Ray writes it, a client sending its headers slowly keeps its connection; through
cluster.haproxy_guard (what `prism up` and the chart make Ray run) it gets a 408 and is closed."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cluster.haproxy_guard import BINARY_ENV, TIMEOUT_ENV, real_binary
from cluster.services import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[2]


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = b"replica"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def replica():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def ray_config(tmp: Path, replica_port: int) -> tuple[Path, int]:
    """Ray Serve's HAProxy config for one app with one ingress replica, written by Ray's own code."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions

    port = free_port()
    cfg = HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=port), stats_port=free_port(),
                        metrics_port=free_port(), socket_path=str(tmp / "admin.sock"), server_state_base=str(tmp),
                        server_state_file=str(tmp / "state"), enable_hap_optimization=False, metrics_enabled=False,
                        is_head=True, log_target="/dev/null")
    backend = BackendConfig(name="prism", path_prefix="/", app_name="prism",
                            servers=[ServerConfig(name="r1", host="127.0.0.1", port=replica_port)])
    api = HAProxyApi(cfg, {"prism": backend}, config_file_path=str(tmp / "haproxy.cfg"))
    api._generate_config_file_internal()
    return tmp / "haproxy.cfg", port


def start(cmd: list[str], port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
    for _ in range(200):  # poll: until HAProxy accepts connections
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            threading.Event().wait(0.05)  # poll
    raise AssertionError(log.read_text())


def slow_client(port: int, wait_s: float) -> bytes | None:
    """Send a request line and one header, never the blank line; what the server answers before it closes (b""
    closed without a word), or None if it neither answered nor closed within `wait_s`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait_s)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: prism\r\n")
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return got
            got += chunk
    except socket.timeout:
        return None
    finally:
        s.close()


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: prism\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


@pytest.mark.parametrize("guarded", [False, True], ids=["as-ray-writes-it", "through-the-guard"])
def test_a_slowloris_client_is_cut_off_only_through_the_guard(tmp_path, replica, guarded):
    config, port = ray_config(tmp_path, replica)
    assert "timeout http-request" not in config.read_text()  # Ray's own config has none (the finding)
    haproxy = real_binary()
    cmd = ([sys.executable, "-m", "cluster.haproxy_guard"] if guarded else [haproxy]) + ["-db", "-f", str(config)]
    proc = start(cmd, port, {TIMEOUT_ENV: "1", BINARY_ENV: haproxy, "PYTHONPATH": str(ROOT)}, tmp_path / "log")
    try:
        assert get(port).endswith(b"replica")  # a normal request goes through either way
        if guarded:
            text = config.read_text()
            assert "timeout http-request 1000ms" in text and "option http-buffer-request" in text
            answer = slow_client(port, wait_s=15)
            assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
            # exec'd: the process Ray started is HAProxy itself (Ray checks its pid and command line)
            assert Path(f"/proc/{proc.pid}/exe").resolve() == Path(haproxy).resolve()
        else:
            assert slow_client(port, wait_s=4) is None  # still held open long after the guard's 1 s
    finally:
        stop_process_group(proc.pid, timeout_s=5)
