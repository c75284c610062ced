import math

import pytest

from router.ranking.fusion import dbsf, fuse, rrf
from cluster.errors import InvalidRequest
from shards.api import ScoredId as S


def ids(hits):
    return [h.id for h in hits]


def test_rrf_hand_computed_values():
    text = [S("a", 0.9), S("b", 0.8), S("c", 0.7)]
    image = [S("b", 0.95), S("d", 0.6)]
    out = rrf([text, image], k=60)
    expected = {
        "a": 1 / 61,
        "b": 1 / 62 + 1 / 61,
        "c": 1 / 63,
        "d": 1 / 62,
    }
    assert ids(out) == ["b", "a", "d", "c"]
    for h in out:
        assert h.score == pytest.approx(expected[h.id], abs=1e-12)


def test_rrf_k_changes_scores_not_inputs():
    lists = [[S("a", 1.0), S("b", 0.5)]]
    snapshot = [list(x) for x in lists]
    assert rrf(lists, k=1)[0].score == pytest.approx(1 / 2)
    assert rrf(lists, k=100)[1].score == pytest.approx(1 / 102)
    assert lists == snapshot
    with pytest.raises(InvalidRequest):
        rrf(lists, k=0)


def test_rrf_weights_and_zero_weight():
    a = [S("x", 1.0), S("y", 0.5)]
    b = [S("y", 1.0), S("z", 0.5)]
    out = {h.id: h.score for h in rrf([a, b], k=60, weights=[2.0, 1.0])}
    assert out["x"] == pytest.approx(2 / 61)
    assert out["y"] == pytest.approx(2 / 62 + 1 / 61)
    zero = rrf([a, b], weights=[1.0, 0.0])
    assert ids(zero) == ["x", "y"]  # z came only from the zero-weight list
    with pytest.raises(InvalidRequest):
        rrf([a, b], weights=[1.0])
    with pytest.raises(InvalidRequest):
        rrf([a, b], weights=[1.0, -1.0])


def test_rrf_empty_single_duplicates_ties_limit():
    assert rrf([]) == []
    assert rrf([[], []]) == []
    single = [S("a", 3.0), S("b", 2.0)]
    assert ids(rrf([single])) == ["a", "b"]
    dup = [S("a", 3.0), S("a", 1.0), S("b", 0.5)]
    out = {h.id: h.score for h in rrf([dup])}
    assert out["a"] == pytest.approx(1 / 61)  # only the first rank of a duplicate counts
    assert out["b"] == pytest.approx(1 / 63)
    tie = rrf([[S("q", 1.0)], [S("p", 1.0)]])
    assert ids(tie) == ["p", "q"]  # equal fused scores: ordered by id
    assert len(rrf([single], limit=1)) == 1


def test_dbsf_hand_computed():
    a = [S("x", 0.9), S("y", 0.6), S("z", 0.3)]
    mean = 0.6
    sd = math.sqrt(((0.3) ** 2 + 0 + (0.3) ** 2) / 2)
    norm = {k: (v - (mean - 3 * sd)) / (6 * sd) for k, v in {"x": 0.9, "y": 0.6, "z": 0.3}.items()}
    b = [S("y", 5.0)]  # a single element scores 0.5
    out = {h.id: h.score for h in dbsf([a, b])}
    assert out["x"] == pytest.approx(norm["x"])
    assert out["y"] == pytest.approx(norm["y"] + 0.5)
    assert out["z"] == pytest.approx(norm["z"])
    assert ids(dbsf([a, b])) == ["y", "x", "z"]


def test_dbsf_zero_spread_empty_weights():
    flat = [S("a", 1.0), S("b", 1.0)]
    assert {h.score for h in dbsf([flat])} == {0.5}
    assert dbsf([]) == [] and dbsf([[]]) == []
    a = [S("x", 1.0), S("y", 0.0)]
    b = [S("y", 1.0), S("x", 0.0)]
    weighted = dbsf([a, b], weights=[3.0, 1.0])
    assert ids(weighted) == ["x", "y"]
    assert ids(dbsf([a, b], weights=[0.0, 1.0])) == ["y", "x"]


def test_fuse_dispatch():
    a = [S("x", 0.2), S("y", 0.1)]
    assert fuse("none", [a]) == a
    assert fuse("none", [a], limit=1) == [S("x", 0.2)]
    with pytest.raises(InvalidRequest):
        fuse("none", [a, a])
    with pytest.raises(InvalidRequest):
        fuse("borda", [a])
    assert fuse("rrf", [a], k=10) == rrf([a], k=10)
    assert fuse("dbsf", [a]) == dbsf([a])


@pytest.mark.parametrize("method", ["rrf", "dbsf"])
def test_contributions_add_up_to_the_fused_scores_exactly(method):
    from router.ranking.fusion import contributions, fuse

    lists = [[S("a", 0.9), S("b", 0.8), S("a", 0.1), S("c", 0.5)],
             [S("c", 3.0), S("d", 1.0)], [S("b", 7.0)]]
    weights = [1.0, 0.0, 2.5]
    parts = contributions(method, lists, weights=weights)
    fused = fuse(method, lists, weights=weights)
    assert {h.id: h.score for h in fused} == {i: sum(p) for i, p in parts.items() if i in {h.id for h in fused}}
    assert "d" not in parts and "d" not in {h.id for h in fused}  # only in a list of weight 0
    single = contributions("none", [[S("x", 2.0), S("x", 1.0)]])
    assert single == {"x": [2.0]}
