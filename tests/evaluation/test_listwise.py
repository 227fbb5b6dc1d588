"""List-wise rows on hand-built lists: a greedy list is a ranking in generated order."""

from __future__ import annotations

import math

import pytest

from recspec.evaluation.listwise import interval_metrics, listwise_rows


def test_a_hit_at_position_two_of_three():
    """List [a, b, c] with test item b: Recall@3 = 1, NDCG@3 = 1 / log2(3); one user, so the interval is the point."""
    a, b, c = 7, 3, 11
    got = interval_metrics([[a, b, c]], [{b}], 3)
    assert got["recall@3"] == 1.0 and got["ndcg@3"] == pytest.approx(1 / math.log2(3), abs=1e-6)
    assert got["recall@3_ci"] == [1.0, 1.0] and got["ndcg@3_ci"] == [pytest.approx(1 / math.log2(3), abs=1e-6)] * 2


def test_rows_name_task_mode_and_M_with_keys_at_M():
    rows = listwise_rows([[2, 1]], [[1, 2]], [{1}], M=2, split="valid")
    labels = [(r["task"], r["mode"], r["M"], r["split"]) for r in rows]
    assert labels == [("listwise", "greedy-list", 2, "valid"), ("listwise", "beam", 2, "valid")]
    assert all({"recall@2", "ndcg@2", "recall@2_ci", "ndcg@2_ci"} <= set(r) for r in rows)


def test_the_greedy_row_holds_its_difference_from_beam():
    """Greedy [b, a] vs beam [a, b] for a user whose test item is a: NDCG@2 1 / log2(3) against 1."""
    greedy, _ = listwise_rows([[2, 1]], [[1, 2]], [{1}], M=2)
    assert greedy["ndcg@2_vs_beam"][0] == pytest.approx(1 / math.log2(3) - 1, abs=1e-6)
