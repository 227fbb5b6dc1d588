"""Recall / NDCG on hand-computed cases, and the popularity ranking."""

from __future__ import annotations

import math

import pytest

from recspec.evaluation.metrics import (
    dedup,
    ndcg_at_k,
    per_user_metrics,
    popularity_ranking,
    ranking_metrics,
    recall_at_k,
)

LOG3 = math.log2(3)  # rank 2 discount is 1 / log2(3)


def test_two_users_by_hand():
    ranked = [[1, 2, 3, 4], [5, 6, 7, 8]]
    targets = [{2, 9}, {5}]  # user 0: one of two found at rank 2; user 1: found at rank 1
    assert recall_at_k(ranked, targets, 1) == pytest.approx((0 + 1) / 2)
    assert recall_at_k(ranked, targets, 3) == pytest.approx((1 / 2 + 1) / 2)
    assert ndcg_at_k(ranked, targets, 1) == pytest.approx((0 + 1) / 2)
    user0 = (1 / LOG3) / (1 + 1 / LOG3)  # DCG = 1/log2(3); IDCG over min(2, 3) = 2 ranks
    assert ndcg_at_k(ranked, targets, 3) == pytest.approx((user0 + 1) / 2)


def test_idcg_is_cut_at_k():
    # three relevant items, k = 2, both slots hit: NDCG 1 although recall is 2/3
    assert ndcg_at_k([[7, 8, 0]], [{7, 8, 9}], 2) == pytest.approx(1.0)
    assert recall_at_k([[7, 8, 0]], [{7, 8, 9}], 2) == pytest.approx(2 / 3)


def test_hit_at_rank_three():
    assert ndcg_at_k([[0, 1, 4]], [{4}], 3) == pytest.approx(1 / 2)  # 1/log2(4) / 1
    assert ndcg_at_k([[0, 1, 4]], [{4}], 2) == 0.0


def test_users_without_ground_truth_are_skipped():
    assert recall_at_k([[1, 2], [3, 4]], [set(), {3}], 2) == 1.0
    assert math.isnan(recall_at_k([[1, 2]], [set()], 2))


def test_repeats_and_missing_ids_never_count_twice():
    assert recall_at_k([[3, 3, -1]], [{3, 5}], 3) == pytest.approx(1 / 2)
    assert ndcg_at_k([[3, 3, -1]], [{3, 5}], 3) == pytest.approx(1 / (1 + 1 / LOG3))


def test_ranking_metrics_keys_and_values():
    m = ranking_metrics([[1, 2, 3, 4, 5]], [{5}], ks=(1, 5))
    assert set(m) == {"recall@1", "ndcg@1", "recall@5", "ndcg@5"}
    assert m["recall@1"] == 0.0 and m["recall@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(6))


def test_lists_shorter_than_k_are_refused():
    with pytest.raises(ValueError, match="fewer than k=3"):
        recall_at_k([[1, 2]], [{1}], 3)
    with pytest.raises(ValueError, match="target sets"):
        recall_at_k([[1, 2]], [{1}, {2}], 1)


def test_popularity_ranking():
    train = [[2, 2, 1], [1, 2, 4], [0]]  # counts: 2 -> 3, 1 -> 2, then 0 and 4 once
    assert popularity_ranking(train, 6, 4) == [2, 1, 0, 4]
    assert popularity_ranking(train, 6, 6) == [2, 1, 0, 4, 3, 5]  # unseen items last, by id


def test_dedup_keeps_first_occurrence():
    assert dedup([3, 1, 3, 2, 1]) == [3, 1, 2]


def test_per_user_metrics_skip_users_without_ground_truth_and_average_to_the_means():
    ranked = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    targets = [{2, 9}, set(), {7}]  # the middle user has no ground truth
    per = per_user_metrics(ranked, targets, 3)
    assert set(per) == {"recall@3", "ndcg@3"}
    assert per["recall@3"].tolist() == pytest.approx([1 / 2, 1.0])
    assert per["ndcg@3"].tolist() == pytest.approx([(1 / LOG3) / (1 + 1 / LOG3), 1.0])
    assert per["recall@3"].mean() == pytest.approx(recall_at_k(ranked, targets, 3))
    assert per["ndcg@3"].mean() == pytest.approx(ndcg_at_k(ranked, targets, 3))
