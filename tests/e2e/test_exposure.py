"""What a real `prism up` exposes: slow clients are cut off by its HAProxy, Ray's token file is owner-only."""
from __future__ import annotations

import socket
import stat
from pathlib import Path


def test_a_slowloris_client_gets_a_408_from_the_haproxy_ingress(prism_server):
    """Headers trickled in (never finished) are answered 408 and closed within http_request_timeout_s (10 s), so
    slow clients cannot hold HAProxy's connections (Ray's own config would wait an hour: `timeout client 3600s`)."""
    s = socket.create_connection(("127.0.0.1", prism_server.port), timeout=60)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        got = b""
        while chunk := s.recv(4096):  # returns once HAProxy answers and closes (a socket timeout fails the test)
            got += chunk
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert prism_server.client.get("/health").status_code == 200  # a whole request still goes through


def test_rays_token_file_is_readable_by_its_owner_only(prism_server):
    token = Path.home() / ".ray" / "auth_token"
    assert token.exists()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
