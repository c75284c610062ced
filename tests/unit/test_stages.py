"""Post-fusion stages, pure: decay functions, formula boosts, MMR, group_by."""
import math

import pytest

from router.filters.values import distance, number
from router.ranking.stages import Boost, decay, formula, group_by, mmr
from shards.api import ScoredId


@pytest.mark.parametrize("kind", ["gauss", "exp", "linear"])
def test_decays_are_one_at_origin_and_decay_at_scale(kind):
    assert decay(kind, 50, 50, 100) == pytest.approx(1.0)
    assert decay(kind, 150, 50, 100) == pytest.approx(0.5)        # `at` (0.5) at origin + scale
    assert decay(kind, -50, 50, 100) == pytest.approx(0.5)         # symmetric
    assert decay(kind, 60, 50, 100, offset=10) == pytest.approx(1.0)
    assert decay(kind, 160, 50, 100, offset=10) == pytest.approx(0.5)
    assert decay(kind, 150, 50, 100, at=0.25) == pytest.approx(0.25)


def test_linear_reaches_zero_and_gauss_matches_elasticsearch():
    assert decay("linear", 250, 50, 100) == 0.0                    # s = scale / (1 - at) = 200
    sigma2 = -(100 ** 2) / (2 * math.log(0.5))
    assert decay("gauss", 120, 50, 100) == pytest.approx(math.exp(-(70 ** 2) / (2 * sigma2)))


def test_numbers_dates_and_durations():
    assert number(3) == 3.0 and number(True) is None and number("x") is None
    assert number("2024-01-02") - number("2024-01-01") == pytest.approx(86400e3)
    assert distance("7d") == 7 * 86400e3 and distance("1.5h") == 1.5 * 3600e3 and distance(5) == 5.0
    assert distance("soon") is None


def test_formula_boosts_in_order_and_reranks_with_ties_by_id():
    hits = [ScoredId("a", 1.0, {"tag": ["x", "y"], "p": 50}), ScoredId("b", 1.0, {"tag": "z", "p": 150}),
            ScoredId("c", 0.9, {})]
    out = formula(hits, [Boost("tag", equals="y", add=0.5), Boost("p", decay="linear", origin=50, scale=100,
                                                                     multiply=True)])
    assert [(h.id, h.score) for h in out] == [("a", 1.5), ("c", 0.9), ("b", 0.5)]  # missing field: untouched
    assert [h.id for h in hits] == ["a", "b", "c"] and hits[0].score == 1.0     # inputs not mutated
    tie = formula([ScoredId("b", 1.0, {}), ScoredId("a", 1.0, {})], [Boost("q", equals=1, add=1)])
    assert [h.id for h in tie] == ["a", "b"]


def test_mmr_lambda_one_keeps_relevance_order_lambda_zero_spreads_out():
    hits = [ScoredId("a", 3.0), ScoredId("a2", 2.9), ScoredId("b", 1.0), ScoredId("nov", 0.5)]
    vecs = {"a": [1, 0], "a2": [0.99, 0.01], "b": [0, 1]}
    assert [h.id for h in mmr(hits, vecs, 1.0)] == ["a", "a2", "b", "nov"]  # no vector: kept, after the rest
    assert [h.id for h in mmr(hits, vecs, 0.3)] == ["a", "b", "a2", "nov"]
    assert mmr([], {}, 0.5) == []


def test_group_by_orders_groups_by_best_hit_and_bounds_them():
    hits = [ScoredId(str(i), 10 - i, {"brand": b}) for i, b in enumerate(["x", "y", "x", "x", ["y", "z"], None])]
    groups = group_by(hits, "brand", size=2, groups=2)
    assert [(g.value, [h.id for h in g.hits]) for g in groups] == [("x", ["0", "2"]), ("y", ["1", "4"])]
    assert [g.value for g in group_by(hits, "brand", size=1, groups=5)] == ["x", "y", "z"]
