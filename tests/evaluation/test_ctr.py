"""The CTR check: AUC / LogLoss on hand-built cases, the leave-one-out split and its negatives, the model's
determinism per seed and its pairing across arms, and that it learns clustered data built to be learnable."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from recspec.errors import DataError
from recspec.evaluation.ctr import CTRConfig, auc, build_model, grouped_auc, logloss, run_ctr, tie_groups
from recspec.evaluation.ctr_data import PAD, build_ctr_examples, split_positives

TINY = CTRConfig(history_len=5, dim=8, hidden=16, epochs=4, batch_size=64, lr=1e-2)


# --- AUC and LogLoss ------------------------------------------------------------------------------
@pytest.mark.parametrize("scores, labels, expected", [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),  # every positive above every negative
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),  # every positive below
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied: each pair counts half
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # 0.35 beats 0.1 only, 0.8 beats both: 3 of 4 pairs
    ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], 0.875),  # 0.5 ties 0.5 (1/2) and beats 0.2; 0.9 beats both
    ([3.0, -1.0, 7.0], [1, 0, 0], 0.5),  # raw scores, one positive between the two negatives
])
def test_auc_hand_cases(scores, labels, expected):
    assert auc(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_auc_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, 60).astype(float)  # few distinct values: many ties
    y = rng.integers(0, 2, 60)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(s[y == 1], s[y == 0])]
    assert auc(s, y) == pytest.approx(np.mean(pairs))


def test_weighted_auc_equals_auc_of_repeated_rows():
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=30).round(1), rng.integers(0, 2, 30)
    w = rng.integers(0, 4, 30)
    group, n = tie_groups(s)
    assert grouped_auc(group, n, y, w) == pytest.approx(auc(np.repeat(s, w), np.repeat(y, w)))


def test_auc_needs_both_classes():
    with pytest.raises(ValueError):
        auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_logloss_hand_case():
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    assert logloss(np.array([0.8, 0.4]), np.array([1, 0])) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert np.isfinite(logloss(np.array([0.0, 1.0]), np.array([1, 0])))  # clipped, not inf


# --- split and negatives --------------------------------------------------------------------------
def test_leave_one_out_positions_and_histories():
    pos = split_positives([[10, 11, 12, 13, 14], [20, 21]], history_len=2)
    train, valid, test = pos["train"], pos["valid"], pos["test"]
    # user 0: train s_2, s_3; valid s_4; test s_5. user 1 (2 items): s_2 trains, no evaluation example
    assert train.items.tolist() == [11, 12, 21] and train.users.tolist() == [0, 0, 1]
    assert train.history.tolist() == [[PAD, 10], [10, 11], [PAD, 20]]
    assert valid.items.tolist() == [13] and valid.history.tolist() == [[11, 12]]  # last 2 of 10, 11, 12
    assert test.items.tolist() == [14] and test.history.tolist() == [[12, 13]] and test.users.tolist() == [0]


def test_examples_are_each_positive_then_its_negatives():
    ex = build_ctr_examples({"a": [0, 1, 2, 3, 4], "b": [5, 6, 7]}, 20, 3, {"train": 2, "valid": 3, "test": 4}, 0)
    test = ex["test"]
    assert test.labels.tolist() == [1, 0, 0, 0, 0] * 2
    assert test.items[[0, 5]].tolist() == [4, 7] and test.users.tolist() == [0] * 5 + [1] * 5
    assert (test.history[:5] == test.history[0]).all()  # negatives share their positive's history


def test_negatives_are_never_items_the_user_touched():
    rng = np.random.default_rng(2)
    inter = {f"u{u}": rng.permutation(12)[:rng.integers(3, 12)].tolist() for u in range(40)}
    ex = build_ctr_examples(inter, 12, 4, {"train": 5, "valid": 5, "test": 5}, seed=3)
    seqs = list(inter.values())
    for split in ex.values():
        neg = split.labels == 0
        assert neg.any()
        assert not any(i in seqs[u] for u, i in zip(split.users[neg], split.items[neg]))


def test_a_user_with_one_untouched_item_gets_only_that_negative():
    ex = build_ctr_examples({"u": [0, 1, 2, 3, 4]}, 6, 3, {"train": 4, "valid": 4, "test": 4}, 0)
    assert all((s.items[s.labels == 0] == 5).all() for s in ex.values())


def test_bad_interactions_are_refused():
    with pytest.raises(DataError):
        build_ctr_examples({"u": [0, 1, 2]}, 3, 3, {"train": 1, "valid": 1, "test": 1}, 0)  # no negative left
    with pytest.raises(DataError):
        build_ctr_examples({"u": [0, 1, 9]}, 5, 3, {"train": 1, "valid": 1, "test": 1}, 0)  # id out of range


def test_negatives_depend_on_the_seed_only():
    inter = {f"u{u}": list(range(u, u + 6)) for u in range(10)}
    k = {"train": 3, "valid": 3, "test": 3}
    a, b, c = (build_ctr_examples(inter, 30, 4, k, s) for s in (0, 0, 1))
    assert (a["test"].items == b["test"].items).all() and (a["test"].items != c["test"].items).any()
    more = build_ctr_examples(inter, 30, 4, {**k, "train": 5}, 0)  # test negatives: their own stream
    assert (more["test"].items == a["test"].items).all()


# --- the model ------------------------------------------------------------------------------------
def clustered(n_clusters=4, per_cluster=10, users=120, length=8, seed=0):
    """Users who only ever pick items of their own cluster; text = the cluster's one-hot plus noise."""
    rng = np.random.default_rng(seed)
    inter = {}
    for u in range(users):
        c = u % n_clusters
        inter[f"u{u}"] = (c * per_cluster + rng.permutation(per_cluster)[:length]).tolist()
    I = n_clusters * per_cluster
    text = np.eye(n_clusters)[np.arange(I) // per_cluster] + 0.1 * rng.normal(size=(I, n_clusters))
    return inter, (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)


def test_run_ctr_is_deterministic_per_seed():
    inter, text = clustered()
    r1, r2, r3 = (run_ctr(inter, text, TINY, s) for s in (0, 0, 1))
    assert np.array_equal(r1.scores, r2.scores) and r1.auc == r2.auc and r1.logloss == r2.logloss
    assert not np.array_equal(r1.scores, r3.scores)


def test_arms_of_one_seed_share_examples_and_initial_weights():
    inter, text = clustered()
    with_text, without = run_ctr(inter, text, TINY, 0), run_ctr(inter, None, TINY, 0, num_items=text.shape[0])
    assert np.array_equal(with_text.labels, without.labels) and np.array_equal(with_text.users, without.users)
    m_text, m_none = build_model(40, text, TINY, 0), build_model(40, None, TINY, 0)
    shared = dict(m_none.named_parameters())
    assert set(shared) < set(dict(m_text.named_parameters()))  # text adds the projection only
    assert all(torch.equal(p, shared[n]) for n, p in m_text.named_parameters() if n in shared)


def test_model_learns_clustered_data():
    inter, text = clustered()
    with_text = run_ctr(inter, text, TINY, 0)
    without = run_ctr(inter, None, TINY, 0, num_items=text.shape[0])
    assert with_text.auc > 0.9  # the cluster is in the text, and the history's text names it
    assert without.auc > 0.9  # ids alone: 40 items, each seen by ~30 users of its cluster
