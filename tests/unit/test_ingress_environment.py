"""The HTTP ingress Ray is started with: HAProxy (default) or Serve's Python proxy, said in one line; and the
direct-ingress ports each instance claims for its own."""
import itertools
import random
import socket

import pytest

from cluster.config import ClusterConfig
from cluster.ports import claim_direct_ingress_ports
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


# ---- Serve's direct-ingress ports: a block per instance (cluster/ports.py) ----

def held_by_child(where, seed: int):
    """Another process claims a block (as a second `prism up` would) and holds it until its stdin closes."""
    import subprocess
    import sys

    code = ("import random, sys\nfrom pathlib import Path\nfrom cluster.ports import claim_direct_ingress_ports\n"
            f"b = claim_direct_ingress_ports(1, where=Path({str(where)!r}), rng=random.Random({seed}))\n"
            "print(b.http[0], b.http[1], b.grpc[0], b.grpc[1], flush=True)\nsys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lo, mid, mid2, hi = map(int, child.stdout.readline().split())
    return child, (lo, mid), (mid2, hi)


def test_a_block_has_room_for_every_ingress_replica_in_its_own_ranges(tmp_path):
    from cluster.ports import DIRECT_INGRESS_PORTS, ENV_NAMES, ports_needed

    for replicas in (1, 16, 64):
        b = claim_direct_ingress_ports(replicas, where=tmp_path)
        try:
            (h0, h1), (g0, g1) = b.http, b.grpc
            assert h1 - h0 >= ports_needed(replicas) and g1 - g0 >= ports_needed(replicas)
            assert DIRECT_INGRESS_PORTS[0] <= h0 < h1 <= g0 < g1 <= DIRECT_INGRESS_PORTS[1] + 1
            assert b.env() == dict(zip(ENV_NAMES, map(str, (h0, h1, g0, g1))))
        finally:
            b.release()


def test_two_instances_never_get_overlapping_ports_and_a_released_block_is_free_again(tmp_path):
    first = claim_direct_ingress_ports(1, where=tmp_path, rng=random.Random(3))
    second = claim_direct_ingress_ports(1, where=tmp_path, rng=random.Random(3))  # tries the same block first
    ports = [set(range(*b.http)) | set(range(*b.grpc)) for b in (first, second)]
    assert ports[0] and ports[1] and not ports[0] & ports[1]
    first.release()
    again = claim_direct_ingress_ports(1, where=tmp_path, rng=random.Random(3))
    assert (again.http, again.grpc) == (first.http, first.grpc)
    again.release()
    second.release()


def test_a_block_another_process_holds_is_skipped_until_that_process_ends(tmp_path):
    child, http, grpc = held_by_child(tmp_path, seed=5)
    try:
        mine = claim_direct_ingress_ports(1, where=tmp_path, rng=random.Random(5))
        assert not (set(range(*mine.http)) | set(range(*mine.grpc))) & (set(range(*http)) | set(range(*grpc)))
        mine.release()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    after = claim_direct_ingress_ports(1, where=tmp_path, rng=random.Random(5))  # its lock went with it
    assert (after.http, after.grpc) == (http, grpc)
    after.release()


def test_a_port_in_use_keeps_its_block_out(tmp_path):
    probe = claim_direct_ingress_ports(1, where=tmp_path, rng=random.Random(9))
    taken = probe.grpc[0] + 1
    probe.release()
    with socket.socket() as s:
        s.bind(("0.0.0.0", taken))
        s.listen()
        b = claim_direct_ingress_ports(1, where=tmp_path, rng=random.Random(9))
        assert b.http[0] != probe.http[0] and taken not in range(*b.http) and taken not in range(*b.grpc)
        b.release()


def test_a_full_band_is_an_error_naming_it(tmp_path):
    from cluster.errors import BackendError
    from cluster.ports import SLOT, _free

    # Room for exactly one block of one replica, in a band nothing listens on now: a fixed band (31000-31031) lies
    # in the direct-ingress band, where the instances other tests run beside this one take their blocks.
    lo = next(p for p in range(20000, 29000, 2 * SLOT) if all(_free(q) for q in range(p, p + 2 * SLOT)))
    band = (lo, lo + 2 * SLOT - 1)
    b = claim_direct_ingress_ports(1, where=tmp_path, band=band)
    with pytest.raises(BackendError, match=f"no free block of 32 ports .* in {band[0]}-{band[1]}"):
        claim_direct_ingress_ports(1, where=tmp_path, band=band)
    b.release()


def test_prism_up_claims_a_block_with_haproxy_and_keeps_ranges_an_operator_set(monkeypatch):
    from cluster.cli.bootstrap import direct_ingress
    from cluster.ports import ENV_NAMES

    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    ranges, line, block = direct_ingress(ClusterConfig(), {"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    try:
        assert ranges == block.env() and set(ranges) == set(ENV_NAMES) and line.startswith("direct-ingress ports HTTP ")
    finally:
        block.release()
    assert direct_ingress(ClusterConfig(ingress="proxy"), {"RAY_SERVE_ENABLE_HA_PROXY": "0"}) == ({}, "", None)
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", "43000")
    ranges, line, block = direct_ingress(ClusterConfig(), {"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    assert ranges == {"RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "43000"} and block is None and "43000" in line
