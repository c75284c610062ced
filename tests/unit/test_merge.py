from router.ranking.merge import merge_topk
from router.schema.query import ScoredId as S


def test_global_topk_across_shards():
    a = [S("a1", 0.9), S("a2", 0.5)]
    b = [S("b1", 0.8), S("b2", 0.7), S("b3", 0.1)]
    assert merge_topk([a, b], 3) == [S("a1", 0.9), S("b1", 0.8), S("b2", 0.7)]


def test_empty_inputs_and_k():
    assert merge_topk([], 5) == []
    assert merge_topk([[], []], 5) == []
    assert merge_topk([[S("x", 1.0)]], 0) == []
    assert merge_topk([[S("x", 1.0)]], 5) == [S("x", 1.0)]


def test_ties_broken_by_id_whatever_the_order():
    a = [S("c", 0.5), S("a", 0.5)]
    b = [S("b", 0.5)]
    assert [h.id for h in merge_topk([a, b], 3)] == ["a", "b", "c"]
    assert merge_topk([b, a], 3) == merge_topk([a, b], 3)


def test_duplicate_id_keeps_its_best_score():
    a = [S("x", 0.4), S("y", 0.3)]
    b = [S("x", 0.9)]
    assert merge_topk([a, b], 5) == [S("x", 0.9), S("y", 0.3)]


def test_unsorted_shard_lists_and_inputs_untouched():
    a = [S("low", 0.1), S("high", 0.9)]
    snapshot = list(a)
    assert [h.id for h in merge_topk([a], 2)] == ["high", "low"]
    assert a == snapshot


def test_negative_scores_l2():
    # L2 distances arrive negated: the nearest point has the highest (least negative) score.
    a = [S("near", -0.1), S("far", -3.0)]
    b = [S("mid", -1.0)]
    assert [h.id for h in merge_topk([a, b], 3)] == ["near", "mid", "far"]


def test_payloads_returned_with_the_search_survive_the_merge():
    a = [S("x", 0.9, {"n": 1}), S("y", 0.5, {"n": 2})]
    b = [S("z", 0.7, {"n": 3})]
    assert [(h.id, h.payload) for h in merge_topk([a, b], 2)] == [("x", {"n": 1}), ("z", {"n": 3})]


def test_inline_payload_while_the_candidates_stay_small():
    from router.filters.plan import INLINE_PAYLOAD_MAX, inline_payload

    assert inline_payload([10], shards=4)                       # 40 candidates
    assert inline_payload([20, 20], shards=2, max_candidates=80)
    assert not inline_payload([100, 100], shards=4)             # 800 > 256: hydrate the page instead
    assert not inline_payload([10], shards=1, max_candidates=0)  # 0: always hydrate
    assert inline_payload([INLINE_PAYLOAD_MAX], shards=1) and not inline_payload([INLINE_PAYLOAD_MAX + 1], shards=1)
