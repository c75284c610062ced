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
