"""API keys, the route policy, token buckets and the guard (pure; the clock is a FakeClock)."""
import json

import pytest

from cluster.auth import (
    KEYS_ENV, KeyRecord, KeyRing, KeySource, client_headers, exposure, new_key, read_keys_file, split_key,
    write_keys_file,
)
from cluster.errors import ConfigError
from router.serving.access import Guard, Refusal, TokenBuckets, presented_key, route_access
from tests.clock import FakeClock


def test_a_key_is_shown_once_and_only_its_salted_hash_is_kept():
    key, rec = new_key("read", ["a"], "ci", clock=lambda: 5.0)
    kid, secret = split_key(key)
    assert kid == rec.id and secret not in rec.model_dump_json() and key not in rec.model_dump_json()
    assert rec.created == 5.0 and rec.collections == ["a"]
    key2, rec2 = new_key("read")
    assert rec2.salt != rec.salt and rec2.hash != rec.hash and key2 != key
    ring = KeyRing([rec, rec2])
    assert ring.verify(key).key_id == rec.id and ring.verify(key2).collections is None


@pytest.mark.parametrize("bad", ["", "prism", "prism_", "nope_12345678_x", "prism_1234567_x", "prism_deadbeef_",
                                 "garbage with spaces"])
def test_malformed_unknown_and_wrong_keys_verify_to_nobody(bad):
    key, rec = new_key("admin")
    ring = KeyRing([rec])
    assert ring.verify(bad) is None
    assert ring.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # one character off
    assert ring.verify(f"prism_{'0' * 8}_{split_key(key)[1]}") is None     # right secret, other id


def test_roles_nest_and_scopes_restrict():
    _, rec = new_key("write", ["books"])
    key, _ = new_key("write")
    p = KeyRing([rec]).verify(key)
    assert p is None
    key, rec = new_key("write", ["books"])
    p = KeyRing([rec]).verify(key)
    assert p.allows("read", "books") and p.allows("write", "books") and not p.allows("admin", "books")
    assert not p.allows("read", "films") and p.allows("read", None)


def test_keys_file_round_trip_and_rotation_without_restart(tmp_path):
    path = tmp_path / "keys.json"
    clock = FakeClock(0.0)
    source = KeySource([], path, environ={}, clock=clock)
    assert len(source.refresh()) == 0
    k1, r1 = new_key("read")
    k2, r2 = new_key("admin")
    write_keys_file(path, [r1, r2])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(source.refresh()) == 0          # checked at most once a second
    clock.advance(1.0)
    ring = source.refresh()
    assert ring.verify(k1) and ring.verify(k2)  # two keys valid at once
    write_keys_file(path, [r2])                 # k1 revoked
    clock.advance(1.0)
    ring = source.refresh()
    assert ring.verify(k1) is None and ring.verify(k2).role == "admin"
    assert read_keys_file(path) == [r2]


def test_keys_from_config_and_environment(tmp_path):
    k1, r1 = new_key("read")
    k2, r2 = new_key("write")
    env = {KEYS_ENV: json.dumps([r2.model_dump()])}
    ring = KeySource([r1], None, environ=env).refresh()
    assert ring.verify(k1).role == "read" and ring.verify(k2).role == "write"
    with pytest.raises(ConfigError, match=KEYS_ENV):
        KeySource([], None, environ={KEYS_ENV: "[{\"id\": 1}]"})
    (tmp_path / "bad.json").write_text("{\"keys\": [{\"id\": \"x\"}]}")
    with pytest.raises(ConfigError, match="not a valid prism keys file"):
        read_keys_file(tmp_path / "bad.json")


def test_key_record_rejects_what_is_not_a_hash():
    with pytest.raises(ValueError):
        KeyRecord(id="12345678", role="read", salt="00" * 16, hash="plaintext-key")


def test_exposure_refuses_a_public_bind_without_keys_unless_insecure():
    assert "auth: off" in exposure("127.0.0.1", 8000, 0, False)
    assert "auth: off" in exposure("localhost", 8000, 0, False)
    assert "auth: on (2 API keys)" in exposure("0.0.0.0", 8000, 2, False)
    with pytest.raises(ConfigError, match="refusing to serve on '0.0.0.0' without API keys"):
        exposure("0.0.0.0", 8000, 0, False)
    assert exposure("0.0.0.0", 8000, 0, True).startswith("WARNING: auth is off")


ROUTES = [
    ("GET", "/health", None), ("GET", "/docs", None), ("GET", "/openapi.json", None), ("GET", "/metrics", None),
    ("GET", "/v1/collections", "read"), ("GET", "/v1/collections/c", "read"), ("PUT", "/v1/collections/c", "admin"),
    ("DELETE", "/v1/collections/c", "admin"), ("POST", "/v1/collections/c/reshard", "admin"),
    ("POST", "/v1/collections/c/rebalance", "admin"), ("GET", "/v1/collections/c/rebalance", "admin"),
    ("GET", "/v1/collections/c/verify", "admin"),
    ("POST", "/v1/collections/c/points", "write"), ("POST", "/v1/collections/c/points/delete", "write"),
    ("POST", "/v1/collections/c/points/vectors", "write"), ("POST", "/v1/collections/c/points/get", "read"),
    ("POST", "/v1/collections/c/points/scroll", "read"), ("POST", "/v1/collections/c/points/count", "read"),
    ("GET", "/v1/collections/c/points/p1", "read"), ("POST", "/v1/collections/c/query", "read"),
    ("POST", "/v1/collections/c/query/batch", "read"), ("POST", "/v1/collections/c/query/image", "read"),
    ("GET", "/nothing/here", "admin"), ("POST", "/v1/collections/c/points/x/y", "admin"),
    # Deny by default: a route prism does not serve needs admin (then 404/405), whatever it looks like.
    ("GET", "/v1/collections/c/bogus", "admin"), ("POST", "/v1/collections/c/query/bogus", "admin"),
    ("GET", "/v1/collections/c/points", "admin"), ("POST", "/v1/collections", "admin"), ("GET", "/v2/x", "admin"),
    ("GET", "//v1/collections/c", "admin"), ("PATCH", "/v1/collections/c", "admin"),
    ("GET", "/v1/collections/c/query", "admin"), ("POST", "/v1/collections/c/points/c/get", "admin"),
    # The Qdrant-compatible API (router/serving/qdrant/policy.py): reads read, point writes write, collections admin.
    ("GET", "/qdrant", None), ("GET", "/qdrant/", None), ("POST", "/qdrant", "admin"),
    ("GET", "/qdrant/collections", "read"), ("GET", "/qdrant/collections/c", "read"),
    ("GET", "/qdrant/collections/c/exists", "read"), ("PUT", "/qdrant/collections/c", "admin"),
    ("DELETE", "/qdrant/collections/c", "admin"), ("PATCH", "/qdrant/collections/c", "admin"),
    ("PUT", "/qdrant/collections/c/index", "write"), ("DELETE", "/qdrant/collections/c/index/f", "write"),
    ("PUT", "/qdrant/collections/c/points", "write"), ("POST", "/qdrant/collections/c/points", "read"),
    ("GET", "/qdrant/collections/c/points/7", "read"), ("POST", "/qdrant/collections/c/points/scroll", "read"),
    ("POST", "/qdrant/collections/c/points/count", "read"), ("POST", "/qdrant/collections/c/points/query", "read"),
    ("POST", "/qdrant/collections/c/points/query/batch", "read"),
    ("POST", "/qdrant/collections/c/points/delete", "write"), ("POST", "/qdrant/collections/c/points/payload", "write"),
    ("PUT", "/qdrant/collections/c/points/payload", "write"),
    ("POST", "/qdrant/collections/c/points/payload/delete", "write"),
    ("POST", "/qdrant/collections/c/points/payload/clear", "write"),
    ("PUT", "/qdrant/collections/c/points/vectors", "write"),
    ("GET", "/qdrant/aliases", "admin"), ("POST", "/qdrant/collections/c/points/query/bogus", "admin"),
    ("PUT", "/qdrant/collections/c/points/scroll", "admin"), ("DELETE", "/qdrant/collections/c/points", "admin"),
    ("POST", "/qdrant/collections/c/snapshots", "admin"), ("PUT", "/qdrant/collections/c/index/f/g", "admin"),
]


@pytest.mark.parametrize("method,path,role", ROUTES)
def test_route_policy(method, path, role):
    got, collection = route_access(method, path)
    assert got == role
    if path.startswith(("/v1/collections/c", "/qdrant/collections/c")):
        assert collection == "c"


@pytest.mark.parametrize("path", [
    "/v1/collections/../catalog/c/points/delete", "/v1/collections/../catalog/c", "/v1/collections/..",
    "/v1/collections//points/delete", "/v1/collections/a__b", "/v1/collections/" + "x" * 49,
    "/v1/collections/c\x00/query", "/v1/collections/.c/points", "/v1/collections/c.json",
])
def test_a_path_whose_collection_is_not_a_name_is_refused_before_any_key_is_looked_at(path):
    """C1: the name rule comes first: a 422 naming the field, for every key (and none), never a role or scope
    decision about something that is not a collection name."""
    kr, rr = new_key("read")
    ks, rs = new_key("admin", ["c"])
    g = guard_with(rr, rs)
    for key in (None, kr, ks, "prism_00000000_nope"):
        v = g.check("POST", path, [(b"x-api-key", key.encode())] if key else [], "1.2.3.4")
        assert isinstance(v, Refusal) and v.status == 422 and v.field == "name", (path, key, v)


def test_metrics_can_be_keyed():
    assert route_access("GET", "/metrics", metrics_open=False) == ("read", None)


def test_key_headers():
    assert presented_key([(b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"authorization", b"bearer  abc ")]) == "abc"
    assert presented_key([(b"x-api-key", b"k")]) == "k"
    assert presented_key([(b"api-key", b" q ")]) == "q"  # Qdrant's header (qdrant-client's api_key)
    assert presented_key([(b"authorization", b"Basic abc")]) is None
    assert presented_key([]) is None
    assert client_headers("k") == {"Authorization": "Bearer k"} and client_headers(None) == {}


def test_token_bucket_refills_with_the_clock():
    clock = FakeClock(0.0)
    b = TokenBuckets(rate=2.0, burst=3.0, clock=clock)
    assert [b.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take("k")
    assert wait == pytest.approx(0.5)
    assert b.take("other") == 0.0          # buckets are per key
    clock.advance(0.5)
    assert b.take("k") == 0.0 and b.take("k") == pytest.approx(0.5)
    clock.advance(100)
    assert [b.take("k") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills to the burst, no further


def test_token_buckets_forget_the_least_recently_used():
    b = TokenBuckets(rate=1.0, burst=1.0, clock=FakeClock(0.0), max_tracked=2)
    b.take("a"), b.take("b"), b.take("c")
    assert set(b._buckets) == {"b", "c"}


def guard_with(*records, clock=None, **kw):
    return Guard(KeySource(records, None, environ={}), clock=clock or FakeClock(0.0), **kw)


def test_guard_matrix():
    kr, rr = new_key("read")
    kw, rw = new_key("write")
    ka, ra = new_key("admin")
    ks, rs = new_key("admin", ["other"])
    g = guard_with(rr, rw, ra, rs)
    hdr = lambda k: [(b"authorization", f"Bearer {k}".encode())] if k else []  # noqa: E731
    cases = {None: 401, "prism_00000000_nope": 401, kr: "read", kw: "write", ka: "admin", ks: "scoped"}
    for method, path, role in ROUTES:
        for key, who in cases.items():
            v = g.check(method, path, hdr(key), "1.2.3.4")
            if role is None:
                assert v is None
            elif who == 401:
                assert isinstance(v, Refusal) and v.status == 401 and v.headers()[0][0] == b"www-authenticate"
            else:
                rank = {"read": 0, "write": 1, "admin": 2}
                in_scope = who != "scoped" or not path.startswith(("/v1/collections/c", "/qdrant/collections/c"))
                allowed = (rank["admin" if who == "scoped" else who] >= rank[role]) and in_scope
                assert (not isinstance(v, Refusal)) == allowed, (method, path, who, v)
                if not allowed:
                    assert v.status == 403 and "may not use" in v.message


def test_guard_without_keys_lets_everything_through_but_still_limits_by_address():
    clock = FakeClock(0.0)
    g = guard_with(clock=clock, read_per_s=1.0, write_per_s=1.0, burst_s=2.0)
    assert not g.auth_on
    assert g.check("POST", "/v1/collections/c/query", [], "a") is None
    assert g.check("POST", "/v1/collections/c/query", [], "a") is None
    v = g.check("POST", "/v1/collections/c/query", [], "a")
    assert v.status == 429 and dict(v.headers())[b"retry-after"] == b"1"
    assert g.check("POST", "/v1/collections/c/query", [], "b") is None       # another client address
    assert g.check("POST", "/v1/collections/c/points", [], "a") is None      # writes have their own bucket
    assert g.check("GET", "/health", [], "a") is None                        # open routes are never limited
    clock.advance(1.0)
    assert g.check("POST", "/v1/collections/c/query", [], "a") is None       # recovered after the window


def test_once_keys_are_required_an_empty_key_set_refuses_everything(tmp_path):
    """H2: keys at start make auth required; revoking every key then shuts the API (401), never opens it."""
    path = tmp_path / "keys.json"
    k, r = new_key("admin")
    write_keys_file(path, [r])
    clock = FakeClock(0.0)
    g = Guard(KeySource([], path, environ={}, clock=clock), clock=clock)
    hdr = [(b"x-api-key", k.encode())]
    assert g.auth_on and g.check("DELETE", "/v1/collections/c", hdr, "a") is not None
    write_keys_file(path, [])
    clock.advance(1.0)
    for headers in ([], hdr):
        v = g.check("DELETE", "/v1/collections/c", headers, "a")
        assert isinstance(v, Refusal) and v.status == 401, v
    assert g.auth_on
    # ... and a server started without keys (loopback or --insecure) that gets one keeps requiring one
    path2 = tmp_path / "later.json"
    g2 = Guard(KeySource([], path2, environ={}, clock=clock), clock=clock)
    assert not g2.auth_on and g2.check("DELETE", "/v1/collections/c", [], "a") is None
    write_keys_file(path2, [r])
    clock.advance(1.0)
    assert isinstance(g2.check("DELETE", "/v1/collections/c", [], "a"), Refusal)
    write_keys_file(path2, [])
    clock.advance(1.0)
    assert g2.check("DELETE", "/v1/collections/c", [], "a").status == 401


def test_a_public_bind_without_keys_requires_them_unless_insecure():
    """H2 for deployments `prism up` never checks (a Serve config on 0.0.0.0 with PRISM_API_KEYS='[]'): the
    guard itself decides at start that keys are required, and refuses every request until there is one."""
    from cluster.config import ClusterConfig
    from router.serving.access import build_guard

    g = build_guard(ClusterConfig(host="0.0.0.0", auth={"keys_file": "/nonexistent/keys.json"}))
    assert g.auth_on and g.check("GET", "/v1/collections", [], "a").status == 401
    g = build_guard(ClusterConfig(host="0.0.0.0", insecure=True, auth={"keys_file": "/nonexistent/keys.json"}))
    assert not g.auth_on and g.check("GET", "/v1/collections", [], "a") is None
    g = build_guard(ClusterConfig(host="127.0.0.1", auth={"keys_file": "/nonexistent/keys.json"}))
    assert not g.auth_on


def test_a_batch_costs_one_token_per_query():
    clock = FakeClock(0.0)
    k, r = new_key("read")
    g = guard_with(r, clock=clock, read_per_s=1.0, burst_s=10.0)
    hdr = [(b"x-api-key", k.encode())]
    assert g.check("POST", "/v1/collections/c/query/batch", hdr, None, cost=16) is not None  # admitted: 10 - 16
    v = g.check("POST", "/v1/collections/c/query", hdr, None)
    assert isinstance(v, Refusal) and v.status == 429 and v.retry_after_s == pytest.approx(7.0)
    clock.advance(7.0)
    assert not isinstance(g.check("POST", "/v1/collections/c/query", hdr, None), Refusal)


def test_the_configured_rate_is_shared_by_the_ingress_replicas():
    """build_guard divides by the configured ingress replicas (by the most it may scale to)."""
    from cluster.config import ClusterConfig
    from router.serving.access import build_guard

    k, r = new_key("read")
    hdr = [(b"x-api-key", k.encode())]
    for replicas, most, want in ((2, None, 5), (1, 4, 2)):
        cfg = ClusterConfig(ingress_replicas=replicas, ingress_max_replicas=most,
                            auth={"keys": [r.model_dump()], "rate_limits": {"read_per_s": 10.0, "burst_s": 1.0}})
        g = build_guard(cfg)
        g.buckets["read"].clock = FakeClock(0.0)
        ok = sum(not isinstance(g.check("POST", "/v1/collections/c/query", hdr, None), Refusal) for _ in range(20))
        assert ok == want, (replicas, most, ok)


def test_the_keys_file_is_never_readable_by_others_not_even_while_written(tmp_path, monkeypatch):
    """Low: the file (and its temporary twin) is created 0600; it is never chmod-ed after being written."""
    import os

    path = tmp_path / "keys.json"
    seen: list[tuple[str, int]] = []

    def snapshot(*_a, **_k):
        for f in tmp_path.iterdir():
            seen.append((f.name, f.stat().st_mode & 0o777))

    real_replace, real_chmod = os.replace, os.chmod
    monkeypatch.setattr(os, "replace", lambda *a, **k: (snapshot(), real_replace(*a, **k))[1])
    monkeypatch.setattr(os, "chmod", lambda *a, **k: (snapshot(), real_chmod(*a, **k))[1])
    old = os.umask(0o022)
    try:
        write_keys_file(path, [new_key("read")[1]])
        write_keys_file(path, [new_key("admin")[1]])
    finally:
        os.umask(old)
    assert seen and all(mode & 0o077 == 0 for _, mode in seen), seen
    assert path.stat().st_mode & 0o777 == 0o600 and [f.name for f in tmp_path.iterdir()] == ["keys.json"]


def test_rate_is_divided_across_ingress_replicas():
    clock = FakeClock(0.0)
    k, r = new_key("read")
    g = guard_with(r, clock=clock, read_per_s=10.0, burst_s=1.0, replicas=2)
    hdr = [(b"x-api-key", k.encode())]
    ok = sum(not isinstance(g.check("POST", "/v1/collections/c/query", hdr, None), Refusal) for _ in range(20))
    assert ok == 5


def test_a_keys_file_that_cannot_be_read_shuts_the_api_and_never_raises(tmp_path):
    """Found by the issue 33 review: a corrupt keys file made the next request a 500 (over gRPC an INTERNAL quoting
    the file's path and the parser's text) and every later one run on the keys read before it, revoked ones
    included. Now a file that cannot be read counts as holding no key: only keys from the config and the
    environment stay valid, nothing raises, and the answer names no path."""
    path = tmp_path / "api-keys.json"
    k_file, r_file = new_key("admin")
    write_keys_file(path, [r_file])
    k_env, _ = new_key("admin")
    clock = FakeClock(0.0)
    g = Guard(KeySource([], path, environ={"PRISM_ADMIN_KEY": k_env}, clock=clock), clock=clock)
    by_file, by_env = [(b"x-api-key", k_file.encode())], [(b"x-api-key", k_env.encode())]
    assert not isinstance(g.check("DELETE", "/v1/collections/c", by_file, "a"), Refusal)
    for broken in ("{not json", '{"keys": "x"}', "[]", '{"keys": [{"id": "zz"}]}'):
        path.write_text(broken)
        clock.advance(1.0)
        for _ in range(2):  # the first look and every later one
            v = g.check("DELETE", "/v1/collections/c", by_file, "a")
            assert isinstance(v, Refusal) and v.status == 401, (broken, v)
            assert str(tmp_path) not in v.message and "keys file" in v.message, v.message
            assert not isinstance(g.check("DELETE", "/v1/collections/c", by_env, "a"), Refusal)
        assert g.auth_on
    write_keys_file(path, [r_file])
    clock.advance(1.0)
    assert not isinstance(g.check("DELETE", "/v1/collections/c", by_file, "a"), Refusal)


def test_a_server_restarted_after_every_key_was_revoked_stays_shut(tmp_path):
    """Found by the issue 33 review: keys made on a loopback install, all revoked, then a restart: the API
    opened (auth was decided by the keys there were at start, none). A keys file, even an empty one, means keys
    were chosen: auth stays required until a key exists; deleting the file (or `insecure`) is the way back."""
    from cluster.config import ClusterConfig
    from router.serving.access import build_guard

    path = tmp_path / "api-keys.json"
    write_keys_file(path, [])
    cfg = ClusterConfig(host="127.0.0.1", auth={"keys_file": str(path)})
    g = build_guard(cfg)
    assert g.auth_on
    v = g.check("DELETE", "/v1/collections/c", [], "a")
    assert isinstance(v, Refusal) and v.status == 401
    assert exposure("127.0.0.1", 8000, 0, False, keys_file_exists=True).startswith("auth: on")
    assert not build_guard(cfg.model_copy(update={"insecure": True})).auth_on
    path.unlink()
    assert not build_guard(cfg).auth_on  # no file, loopback: the local default, auth off
