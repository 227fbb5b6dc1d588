"""Popularity and transition baselines on hand-built sequences whose counts and rankings are known."""

from __future__ import annotations

import pytest

from recspec.evaluation.baselines import fit_transitions, transition_pairs
from recspec.evaluation.metrics import popularity_ranking

# window 1 counts: 0->1: 2, 0->2: 1, 3->4: 1, 4->4: 2
# popularity (occurrences): 0: 3, 4: 3, 1: 2, 2: 1, 3: 1, 5: 0 -> order 0, 4, 1, 2, 3, 5
TOY = [[0, 1], [0, 1], [0, 2], [3, 4, 4, 4]]
NUM_ITEMS = 6


def test_pairs_within_the_window_and_never_across_sequences():
    a, b = transition_pairs([[0, 1, 2], [3, 4]], window=2)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 1), (0, 2), (1, 2), (3, 4)]
    a, b = transition_pairs([[0, 1, 2], [3, 4]], window=1)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 1), (1, 2), (3, 4)]


def test_counts_as_csr_rows():
    tr = fit_transitions(TOY, NUM_ITEMS, window=1)
    assert tr.num_items == NUM_ITEMS
    rows = {a: dict(zip(*(x.tolist() for x in tr.row(a)))) for a in range(NUM_ITEMS)}
    assert rows == {0: {1: 2.0, 2: 1.0}, 1: {}, 2: {}, 3: {4: 1.0}, 4: {4: 2.0}, 5: {}}
    assert tr.popularity.tolist() == [0, 4, 1, 2, 3, 5]


def test_rank_by_counts_then_popularity():
    tr = fit_transitions(TOY, NUM_ITEMS, window=1)
    # from 0: 1 (2) before 2 (1); the rest by popularity without repeats
    assert tr.rank([[0]], k=4, last=1) == [[1, 2, 0, 4]]
    # last 2 of (3, 0): 1 scores 2; 4 (from 3) and 2 (from 0) tie at 1, and 4 is more popular
    assert tr.rank([[3, 0]], k=4, last=2) == [[1, 4, 2, 0]]
    # last 1 of (3, 0): only 0 counts
    assert tr.rank([[3, 0]], k=4, last=1) == [[1, 2, 0, 4]]


def test_plain_sum_counts_a_repeated_recent_item_twice():
    tr = fit_transitions(TOY, NUM_ITEMS, window=1)
    # last 3 of (0, 3, 3): 4 scores 1 + 1 = 2, ties with 1 (2) and wins on popularity
    assert tr.rank([[0, 3, 3]], k=3, last=3) == [[4, 1, 2]]


def test_history_items_may_be_recommended_and_unknown_histories_get_popularity():
    tr = fit_transitions(TOY, NUM_ITEMS, window=1)
    assert tr.rank([[4]], k=3) == [[4, 0, 1]]  # 4 -> 4 was seen: the history's own item comes first
    assert tr.rank([[5], []], k=6) == [[0, 4, 1, 2, 3, 5]] * 2  # 5 was never followed by anything


def test_every_list_has_k_distinct_items():
    tr = fit_transitions(TOY, NUM_ITEMS, window=3)
    for ranked in tr.rank([[0], [3], [0, 3, 4], [5]], k=NUM_ITEMS):
        assert sorted(ranked) == list(range(NUM_ITEMS))


def test_wider_window_counts_further_items():
    tr = fit_transitions([[0, 1, 2]], 3, window=2)
    assert dict(zip(*(x.tolist() for x in tr.row(0)))) == {1: 1.0, 2: 1.0}


def test_popularity_baseline_ranks_by_frequency_then_id():
    assert popularity_ranking(TOY, NUM_ITEMS, 3) == [0, 4, 1]


def test_bad_arguments_are_refused():
    tr = fit_transitions(TOY, NUM_ITEMS)
    with pytest.raises(ValueError, match="k must be"):
        tr.rank([[0]], k=NUM_ITEMS + 1)
    with pytest.raises(ValueError, match="last"):
        tr.rank([[0]], k=2, last=0)
    with pytest.raises(ValueError, match="window"):
        fit_transitions(TOY, NUM_ITEMS, window=0)
    with pytest.raises(ValueError, match="item ids"):
        fit_transitions([[0, 9]], NUM_ITEMS)
