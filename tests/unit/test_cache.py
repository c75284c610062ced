"""Cache policy: LRU by entries and bytes, TTL on a fake clock, canonical request keys."""
import pytest

from router.collection.cache import LRUCache, request_key
from tests.clock import FakeClock


def test_lru_evicts_the_least_recently_used_by_entries_and_by_bytes():
    c = LRUCache(max_entries=2, max_bytes=100)
    c.put("a", 1, 10)
    c.put("b", 2, 10)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3, 10)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3
    assert c.stats.evictions == 1
    c.put("big", 4, 95)  # over the byte bound with anything else: everything older goes
    assert len(c) == 1 and c.bytes == 95 and c.get("big") == 4
    assert c.put("huge", 5, 101) is False and c.get("huge") is None  # larger than the bound: never stored


def test_ttl_expires_on_the_injected_clock():
    clock = FakeClock(0.0)
    c = LRUCache(10, 1000, ttl_s=5.0, clock=clock)
    c.put("k", "v", 1)
    clock.advance(5.0)
    assert c.get("k") == "v"
    clock.advance(0.01)
    assert c.get("k") is None and c.stats.expired == 1 and len(c) == 0 and c.bytes == 0


def test_replacing_a_key_keeps_the_byte_count_right():
    c = LRUCache(10, 100)
    c.put("k", 1, 40)
    c.put("k", 2, 30)
    assert c.bytes == 30 and c.get("k") == 2 and len(c) == 1


def test_stats_count_hits_and_misses():
    c = LRUCache(10, 100)
    c.get("x")
    c.put("x", 1, 1)
    c.get("x")
    assert (c.stats.hits, c.stats.misses) == (1, 1)


def test_request_keys_are_canonical_and_carry_the_version():
    a = request_key("c", 3, {"limit": 5, "prefetch": [{"space": "t", "text": "x"}], "cache": True})
    b = request_key("c", 3, {"prefetch": [{"text": "x", "space": "t"}], "limit": 5, "debug": True})
    assert a == b  # key order, cache and debug flags do not change the answer
    assert a != request_key("c", 4, {"limit": 5, "prefetch": [{"space": "t", "text": "x"}]})
    assert a != request_key("d", 3, {"limit": 5, "prefetch": [{"space": "t", "text": "x"}]})


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        LRUCache(0, 10)
