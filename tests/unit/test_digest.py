"""Replica digests (shards.digest): equal replicas compare equal in one exchange of bucket digests; k differing
ids show in at most k buckets and are found exactly; an empty replica differs by every id the other holds."""
from __future__ import annotations

import random

from shards.digest import BUCKETS, ReplicaDigest, bucket_of, differing_buckets, row_hash


def differing_ids(a: dict[str, int], b: dict[str, int]) -> list[str]:
    """Ids held by one side only, or held by both with different contents, sorted."""
    return sorted(i for i in set(a) | set(b) if a.get(i) != b.get(i))


def fill(d: ReplicaDigest, ids, tag="x"):
    for i in ids:
        d.put("v", i, row_hash("v", i, [0.5, float(len(i))], {"tag": tag, "n": 1.0}, {"tag": tag}))


def compare(a: ReplicaDigest, b: ReplicaDigest) -> list[str]:
    buckets = differing_buckets(a.buckets, b.buckets)
    return differing_ids(a.in_buckets(buckets), b.in_buckets(buckets)) if buckets else []


def test_equal_replicas_have_equal_buckets_whatever_the_write_order():
    ids = [f"p{i}" for i in range(2000)]
    a, b = ReplicaDigest(), ReplicaDigest()
    fill(a, ids)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    fill(b, shuffled, tag="old")
    fill(b, shuffled)                                      # rewritten: the old hashes go out
    assert a.buckets == b.buckets and differing_buckets(a.buckets, b.buckets) == []
    assert compare(a, b) == []


def test_k_differing_ids_are_found_exactly_in_at_most_k_buckets():
    ids = [f"p{i}" for i in range(5000)]
    a, b = ReplicaDigest(), ReplicaDigest()
    fill(a, ids)
    fill(b, ids)
    b.put("v", "p7", row_hash("v", "p7", [0.5, 2.0], {"tag": "changed"}, {}))  # contents differ
    b.remove("v", "p11")                                                       # missing on b
    fill(b, ["extra"])                                                         # only on b
    b.put("w", "p13", row_hash("w", "p13", [1.0], {}, {}))                      # an extra space's row
    buckets = differing_buckets(a.buckets, b.buckets)
    assert 1 <= len(buckets) <= 4
    assert compare(a, b) == ["extra", "p11", "p13", "p7"]
    b.remove("w", "p13")                                                       # repaired one by one
    fill(b, ["p11"])
    b.put("v", "p7", a.rows[("v", "p7")])
    b.remove("v", "extra")
    assert b.buckets == a.buckets and compare(a, b) == []


def test_an_empty_replica_differs_by_every_id_the_other_holds():
    a, empty = ReplicaDigest(), ReplicaDigest()
    ids = [f"p{i}" for i in range(300)]
    fill(a, ids)
    assert empty.buckets == [0] * BUCKETS
    assert compare(a, empty) == sorted(ids)
    assert compare(empty, ReplicaDigest()) == []


def test_row_hashes_read_stored_values_alike():
    """What a replica hashes from a write and from a later scan of Milvus must agree: float32 vector bytes, JSON
    numbers as read back (1.0 == 1), key order."""
    assert row_hash("v", "a", [0.1, 0.2], {"n": 1.0, "b": [1, 2.0]}, {}) == \
        row_hash("v", "a", [float(__import__("numpy").float32(0.1)), 0.2], {"b": [1, 2], "n": 1}, {})
    assert row_hash("v", "a", [0.1], {"n": 1}, {}) != row_hash("v", "a", [0.1], {"n": 2}, {})
    assert row_hash("v", "a", [0.1], {}, {}) != row_hash("w", "a", [0.1], {}, {})
    assert 0 <= bucket_of("anything") < BUCKETS
