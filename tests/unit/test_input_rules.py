"""Issue 33's pure rules: one name rule and one id rule, the JSON body checks (a linear depth scan, no NaN or
Infinity, no lone surrogates), the Host allow-list, query vectors within float32, URIs redacted from errors."""
from __future__ import annotations

import json
import random
import re

import pytest

from cluster.errors import BackendError, InvalidRequest, PrismError
from cluster.names import check_id, check_name, id_problem, name_problem
from router.schema.bodies import MAX_JSON_DEPTH, json_too_deep, parse_json


@pytest.mark.parametrize("name", ["products", "P", "a_b", "a1", "x" * 48, "Products"])
def test_valid_names(name):
    assert name_problem(name) is None and check_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../catalog/x", "/etc/passwd", "a/b", "a.json", "a b", " a", "a\x00",
                                  "a\n", "1a", "_a", "a__b", "a__", "x" * 49, "é", "a-b", None, 3])
def test_names_that_are_not_names(name):
    assert name_problem(name)
    with pytest.raises(InvalidRequest) as e:
        check_name(name, field="collection")
    assert e.value.field == "collection" and e.value.status == 422


def test_space_names_follow_the_rule_too():
    from pydantic import ValidationError

    from cluster.collection_spec import CollectionConfig

    with pytest.raises(ValidationError, match="__"):
        CollectionConfig(name="ok", spaces={"x__y": {"dim": 2}})
    with pytest.raises(ValidationError, match="__"):
        CollectionConfig(name="a__b", spaces={"x": {"dim": 2}})


@pytest.mark.parametrize("value", ["a", "a b", "ümlaut", "emoji \U0001f600", "x" * 256, "a/b", "a\"b", "1"])
def test_valid_ids(value):
    assert id_problem(value) is None and check_id(value) == value


@pytest.mark.parametrize("value", ["", "a\x01b", "a\x00", "tab\t", "nl\n", "cr\r", "del\x7f", "c1\x85",
                                   "lone\ud800", "lone\udfff", "x" * 257, 5])
def test_ids_with_control_characters_or_surrogates_are_refused(value):
    assert id_problem(value)


def test_every_id_entry_uses_the_rule():
    from pydantic import ValidationError

    from router.schema.points import DeleteRequest, Point, RetrieveRequest, VectorUpdate

    for make in (lambda i: Point(id=i), lambda i: VectorUpdate(id=i, vectors={"v": [1.0]}),
                 lambda i: DeleteRequest(ids=["ok", i]), lambda i: RetrieveRequest(ids=[i])):
        with pytest.raises(ValidationError, match="control character"):
            make("a\x01b")
    from router.collection.cursor import decode_cursor, encode_cursor

    with pytest.raises(InvalidRequest) as e:
        decode_cursor(encode_cursor("a\x01"))
    assert e.value.field == "cursor"


def reference_depth(raw: bytes) -> int:
    """The deepest nesting, by parsing (the oracle for well-formed JSON)."""
    def depth(v):
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0
    return depth(json.loads(raw))


def random_json(rng: random.Random, d: int = 0):
    kind = rng.random()
    if d > 70 or kind < 0.3:
        return rng.choice([1, 2.5, None, True, "s", '"[{', "\\\"]}", "}\\", "[" * rng.randint(0, 3)])
    if kind < 0.65:
        return [random_json(rng, d + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "[", "}\"", "\\"]) + str(i): random_json(rng, d + 1) for i in range(rng.randint(0, 3))}


def test_the_depth_scan_agrees_with_parsing():
    rng = random.Random(7)
    for _ in range(400):
        raw = json.dumps(random_json(rng)).encode()
        for limit in (1, 3, 8, MAX_JSON_DEPTH):
            assert json_too_deep(raw, limit) == (reference_depth(raw) > limit), raw[:200]


@pytest.mark.parametrize("raw", [
    b"{" * 65 + b'"' + b'\\"' * 50_000,           # the issue's body: quadratic before, refused at once now
    b"[" * 65 + b'"' + b"\\" * 100_001,
    b'"' * 100_000 + b"[" * 65,
    b"[]" * 500_000 + b"[" * 65,
])
def test_adversarial_bodies_are_judged_too_deep(raw):
    assert json_too_deep(raw)


def test_a_body_with_nan_infinity_or_a_lone_surrogate_is_a_422():
    for raw in (b'{"w": NaN}', b'{"w": [Infinity]}', b'{"w": -Infinity}',
                b'{"s": "\\ud800"}', b'{"\\udc00": 1}', b'["a\\ud83d"]',
                b'"' * 100_001 + b"[" * 65):  # an unterminated string hides its brackets: malformed, not deep
        with pytest.raises(InvalidRequest):
            parse_json(raw)
    assert parse_json(b'{"s": "\\ud83d\\ude00", "x": 1e300}') == {"s": "\U0001f600", "x": 1e300}
    assert parse_json(b"") is None


def test_query_vectors_stay_within_float32():
    from pydantic import ValidationError

    from router.schema.query import Prefetch

    Prefetch(space="v", vector=[3.4e38, -3.4e38])
    for bad in ([1e39], [-1e39, 0.0], [float("inf")], [float("nan")]):
        with pytest.raises(ValidationError):
            Prefetch(space="v", vector=bad)


def test_non_finite_numbers_in_typed_request_fields_are_refused():
    from pydantic import ValidationError

    from router.schema.query import QueryRequest

    base = {"prefetch": [{"space": "a", "vector": [1.0]}, {"space": "b", "vector": [1.0]}]}
    for bad in ({"fusion": {"weights": [float("nan"), 1.0]}}, {"fusion": {"weights": [float("inf"), 1.0]}},
                {"min_coverage": float("nan")},
                {"prefetch": [{"space": "a", "vector": [1.0], "params": {"ef": float("inf")}}]}):
        with pytest.raises(ValidationError):
            QueryRequest.model_validate({**base, **bad})


def test_a_filter_with_a_non_finite_number_is_refused():
    from cluster.config import StrictLimits
    from router.collection.limits import check_filter

    with pytest.raises(InvalidRequest, match="finite"):
        check_filter({"range": {"p": {"gte": float("-inf")}}}, StrictLimits(), "filter")


@pytest.mark.parametrize("host, allowed, ok", [
    ("127.0.0.1:8000", None, True), ("localhost", None, True), ("[::1]:8000", None, True), (None, None, True),
    ("evil.example", None, False), ("127.0.0.1.nip.io:8000", None, False), ("LOCALHOST:1", None, True),
    ("prism.example.com", ["prism.example.com"], True), ("x.internal:80", ["*.internal"], True),
    ("internal", ["*.internal"], False), ("anything", ["*"], True), ("localhost", ["prism.example.com"], False),
])
def test_the_host_allow_list(host, allowed, ok):
    from router.schema.bodies import host_allowed, allowed_hosts

    assert host_allowed(host, allowed_hosts("127.0.0.1", allowed)) is ok


def test_a_public_bind_allows_any_host_unless_told_otherwise():
    from router.schema.bodies import allowed_hosts, host_allowed

    assert host_allowed("prism.svc.cluster.local", allowed_hosts("0.0.0.0", None))
    assert not host_allowed("evil", allowed_hosts("0.0.0.0", ["prism.svc.cluster.local"]))


def test_error_messages_never_carry_credentials_of_a_uri():
    for text in ("Elasticsearch at https://elastic:s3cret@es:9200 failed", "uri http://root:Milvus@m:19530/x down",
                 "see https://user:pa%40ss@host/"):
        for exc in (PrismError(text), BackendError(text)):
            assert not re.search(r"s3cret|Milvus@|pa%40ss", exc.message + str(exc) + json.dumps(exc.to_dict())), exc
            assert "***@" in exc.message


def test_an_unreachable_elasticsearch_with_credentials_in_its_url_is_reported_without_them():
    from cluster.errors import MetadataUnavailable
    from cluster.services import free_port
    from router.metadata.store import MetadataStore

    store = MetadataStore(f"http://elastic:hunter2@127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(MetadataUnavailable) as e:
        store.count("c", {"match_all": {}})
    assert "hunter2" not in e.value.message and "127.0.0.1" in e.value.message


def test_an_id_is_bounded_in_utf8_bytes_as_elasticsearch_bounds_its_ids():
    """Found by the issue 33 review: 200 emoji (800 UTF-8 bytes) passed the 256-character rule, then Elasticsearch
    refused the document (`_id` holds at most 512 bytes): a 502 over HTTP, UNAVAILABLE over gRPC."""
    from pydantic import ValidationError

    from router.schema.points import DeleteRequest, Point

    assert id_problem("\U0001f600" * 128) is None  # 512 bytes
    for value in ("\U0001f600" * 129, "\u4e2d" * 200, "é" * 257):
        assert "bytes" in (id_problem(value) or ""), value
        with pytest.raises(ValidationError, match="bytes"):
            Point(id=value)
        with pytest.raises(ValidationError, match="bytes"):
            DeleteRequest(ids=[value])


@pytest.mark.parametrize("payload", [{"n": 2 ** 63}, {"n": -(2 ** 63) - 1}, {"fresh": 10 ** 400},
                                     {"o": {"x": 10 ** 30}}, {"l": [1, 2, 10 ** 20]}])
def test_payload_integers_beyond_64_bits_are_refused(payload):
    """Found by the issue 33 review: 10**400 in a new payload field was a 500 (OverflowError in the mapping check),
    10**30 in a nested object a 502 (Elasticsearch could not parse it), 2**63 was stored (a long holds at most
    2**63-1: a real Elasticsearch refuses it)."""
    from pydantic import ValidationError

    from router.schema.points import Point

    with pytest.raises(ValidationError, match="64-bit"):
        Point(id="p", payload=payload)
    Point(id="p", payload={"n": 2 ** 63 - 1, "m": -(2 ** 63), "f": 1e300})


def test_an_integer_field_takes_only_what_a_long_holds():
    """1e300 (a double over gRPC, or JSON `1e300`) is integral, so the integer check let it through to Elasticsearch,
    which refused it (502 / UNAVAILABLE)."""
    from router.filters.dsl import normalise_meta

    for v in (1e300, 2.0 ** 63, -(2.0 ** 64)):
        with pytest.raises(InvalidRequest) as e:
            normalise_meta({"n": v}, {"n": "integer"})
        assert e.value.field == "payload.n"
    assert normalise_meta({"n": 2.0 ** 62}, {"n": "integer"}) == {"n": 2.0 ** 62}


@pytest.mark.parametrize("dsl", [{"term": {"n": 2 ** 63}}, {"range": {"n": {"lt": 1e19}}}, {"terms": {"n": [1, -(2 ** 64)]}},
                                 {"range": {"n": {"gte": "99999999999999999999"}}}])
def test_a_filter_on_an_integer_field_takes_only_what_a_long_holds(dsl):
    """The same 64-bit rule for filter values: Elasticsearch refuses a long query value out of range and Milvus an
    INT64 literal past it, which answered 502 or counted against a replica; now a FilterError (422) naming the path."""
    from cluster.errors import FilterError
    from router.filters.dsl import parse_filter

    with pytest.raises(FilterError, match="64-bit") as e:
        parse_filter(dsl, {"n": "integer"})
    assert e.value.field.startswith("filter.")
    parse_filter({"range": {"n": {"gte": -(2 ** 63), "lte": 2 ** 63 - 1}}}, {"n": "integer"})
    parse_filter({"range": {"f": {"lt": 1e300}}}, {"f": "float"})
