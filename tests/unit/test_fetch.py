"""Image URLs (images.allow_network) cannot reach inside the network: real HTTP servers on 127.0.0.1, real DNS
resolution of names; nothing here contacts a non-loopback address."""
from __future__ import annotations

import http.server
import ipaddress
import threading

import pytest

from cluster.errors import ImageError, PayloadTooLarge
from router.encoding.fetch import fetch_url, public
from router.encoding.images import load_reference


class Server:
    """A local HTTP server recording every request it gets; `routes` maps a path to (status, headers, body)."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]], trickle_s: float = 0.0):
        self.requests: list[str] = []
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                outer.requests.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    if trickle_s:
                        if outer.stop.wait(trickle_s):  # wait: a slow server, stopped at teardown
                            return
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                if not trickle_s:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()


@pytest.fixture
def server():
    made = []

    def make(routes, trickle_s=0.0):
        made.append(Server(routes, trickle_s))
        return made[-1]
    yield make
    for s in made:
        s.close()


IMAGE = (200, {"Content-Type": "image/png"}, b"\x89PNG fake")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_loopback_is_refused_before_any_connection(server, host):
    srv = server({"/cat.png": IMAGE})
    with pytest.raises(ImageError, match="not a public address") as exc:
        fetch_url(f"http://{host}:{srv.port}/cat.png", "points[0].payload.image", max_bytes=1 << 20)
    assert exc.value.field == "points[0].payload.image"
    assert srv.requests == []  # the server never heard from us
    # The same through the payload path (allow_network on): refused, not fetched.
    with pytest.raises(ImageError, match="not a public address"):
        load_reference(f"http://{host}:{srv.port}/cat.png", "f", allow_network=True)
    assert srv.requests == []


def test_every_resolved_address_must_be_public(server):
    """A name with one public and one private address is refused (a rebinding server picks which one we get)."""
    srv = server({"/x": IMAGE})
    lookups = []

    def resolver(host, port):
        lookups.append(host)
        return ["93.184.215.14", "10.0.0.7"]

    with pytest.raises(ImageError, match="10.0.0.7"):
        fetch_url(f"http://images.example:{srv.port}/x", "f", max_bytes=1024, resolver=resolver)
    assert lookups == ["images.example"] and srv.requests == []


@pytest.mark.parametrize("ip, ok", [
    ("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False),
])
def test_what_counts_as_public(ip, ok):
    assert public(ipaddress.ip_address(ip)) is ok


def loopback_allowed(ip):
    """For the tests below only: let the fetch reach the local test server, to check what it does next."""
    return ip.is_loopback


def test_a_redirect_is_not_followed(server):
    srv = server({"/start": (302, {"Location": "/inside"}, b""), "/inside": IMAGE})
    with pytest.raises(ImageError, match="redirect"):
        fetch_url(f"http://127.0.0.1:{srv.port}/start", "f", max_bytes=1024, allowed=loopback_allowed)
    assert srv.requests == ["/start"]  # never /inside


def test_the_connection_goes_to_the_checked_address_with_the_original_host(server):
    srv = server({"/ok.png": IMAGE})
    asked = []

    def resolver(host, port):
        asked.append((host, port))
        return ["127.0.0.1"]

    body = fetch_url(f"http://cdn.example:{srv.port}/ok.png", "f", max_bytes=1024, resolver=resolver,
                     allowed=loopback_allowed)
    assert body == IMAGE[2] and asked == [("cdn.example", srv.port)] and srv.requests == ["/ok.png"]


def test_size_and_time_are_bounded(server):
    big = server({"/big": (200, {}, b"x" * 5000)})
    with pytest.raises(PayloadTooLarge):
        fetch_url(f"http://127.0.0.1:{big.port}/big", "f", max_bytes=1000, allowed=loopback_allowed)
    slow = server({"/slow": (200, {}, b"y" * 100)}, trickle_s=0.05)  # one byte every 50 ms: 5 s in all
    with pytest.raises(ImageError, match="longer than 0.3s|within 0.3s"):
        fetch_url(f"http://127.0.0.1:{slow.port}/slow", "f", max_bytes=1000, timeout_s=0.3, allowed=loopback_allowed)


def test_urls_stay_off_unless_allowed_and_other_schemes_are_refused():
    with pytest.raises(ImageError, match="allow_network"):
        load_reference("http://127.0.0.1/x.png", "f")
    with pytest.raises(ImageError, match="http"):
        fetch_url("ftp://example.com/x.png", "f", max_bytes=10)
