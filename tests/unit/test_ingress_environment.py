"""The HTTP ingress Ray is started with: HAProxy (default) or Serve's Python proxy, said in one line."""
import itertools
import socket

from cluster.config import ClusterConfig
from cluster.services import SIDE_PORTS, side_port
from cluster.cli.bootstrap import ingress_environment


def test_haproxy_gets_four_distinct_side_ports_and_says_where():
    ports = itertools.chain([20001, 20001], itertools.count(20002))  # a repeated draw is drawn again
    env, line = ingress_environment(ClusterConfig(), lambda: next(ports))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    side = [env[k] for k in ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
                             "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")]
    assert len(set(side)) == 4
    assert "HAProxy" in line and env["RAY_SERVE_HAPROXY_STATS_PORT"] in line


def test_the_python_proxy_turns_haproxy_off_even_if_the_environment_had_it_on():
    env, line = ingress_environment(ClusterConfig(ingress="proxy"), side_port)
    assert env == {"RAY_SERVE_ENABLE_HA_PROXY": "0"} and "Python proxy" in line


def test_side_ports_lie_outside_every_range_handed_out_at_random_and_are_free():
    port = side_port()
    assert SIDE_PORTS[0] <= port <= SIDE_PORTS[1]
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # free on every interface, as HAProxy binds its stats page


def test_haproxy_runs_through_the_request_deadline_guard(tmp_path):
    from cluster import haproxy_guard

    guard = haproxy_guard.install(tmp_path / "prism-haproxy")
    env, line = ingress_environment(ClusterConfig(http_request_timeout_s=2.5), side_port, guard)
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(guard) and env[haproxy_guard.TIMEOUT_ENV] == "2.5"
    assert env[haproxy_guard.BINARY_ENV] == haproxy_guard.real_binary() and "within 2.5 s" in line
    assert guard.stat().st_mode & 0o777 == 0o755 and "-m cluster.haproxy_guard" in guard.read_text()


def test_the_guard_puts_a_request_deadline_in_every_defaults_section_once():
    from cluster.haproxy_guard import with_request_timeout

    ray_like = ("global\n    maxconn 4096\ndefaults\n    mode http\n    timeout client 3600s\n    \n"
                "    timeout http-request 3600s\nfrontend f\n    bind :80\n    timeout http-request 1s\n"
                "defaults named\n    mode tcp\nlisten stats\n  bind *:1\n")
    out = with_request_timeout(ray_like, 1.5)
    assert with_request_timeout(out, 1.5) == out  # every reload patches again: idempotent
    sections = out.split("\n")
    assert out.count("timeout http-request 1500ms") == 2 and out.count("option http-buffer-request") == 2
    assert "timeout http-request 3600s" not in out  # replaced
    assert "    timeout http-request 1s" in sections  # a frontend's own setting is the operator's: kept
    assert with_request_timeout(out, 30).count("timeout http-request 30000ms") == 2
