"""Groupings for customized pools: category groups, k-means groups, the random control, routing of
members without a group, the quality summary, and the collaborative embeddings they are built on.
Synthetic data is planted so each claim holds by construction; one test reads the shared Office data
where it is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recspec.errors import DataError
from recspec.retrieval.embeddings import has_embedding, item_embeddings, user_embeddings
from recspec.retrieval.groups import (Grouping, category_groups, category_key, global_group, kmeans_groups,
                                      make_grouping, random_groups, read_item_meta, summarize,
                                      within_group_cosine)

OFFICE = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "office"


def planted_vectors(k: int = 4, per: int = 30, dim: int = 8, noise: float = 0.15, seed: int = 0):
    """Unit vectors around k random unit directions: (k * per, dim) and the planted cluster of each row."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    x = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), per, axis=0)
    x = x + noise * rng.standard_normal(x.shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(k), per)


def planted_sequences(k: int = 3, per: int = 20, users: int = 120, length: int = 12, seed: int = 0):
    """Users who each buy only from one of k item blocks of `per` items: (sequences, block of each item)."""
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(k) * per + rng.choice(per, length, replace=False)).tolist() for _ in range(users)]
    return seqs, np.repeat(np.arange(k), per)


# --- Grouping and routing ----------------------------------------------------------------------------
def test_groups_are_numbered_largest_first_with_members_and_sizes():
    g = make_grouping("kmeans", np.array([10, 11, 12, 13, 14]), np.array([5, 2, 2, 5, 2]))
    assert g.sizes == (3, 2) and g.groups_by_size == (0, 1)
    assert g.members(0) == (11, 12, 14) and g.members(1) == (10, 13)
    assert g.num_groups == 2 and g.centroids is None


def test_grouping_rejects_gaps_and_mismatched_centroids():
    with pytest.raises(DataError):
        Grouping("kmeans", {0: 0, 1: 2}, None)
    with pytest.raises(DataError):
        Grouping("kmeans", {0: 0, 1: 1}, np.zeros((3, 2)))


def test_route_known_member_keeps_its_group_unknown_goes_to_nearest_centroid():
    centroids = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # (G, d)
    g = Grouping("kmeans", {0: 0, 1: 0, 2: 1, 3: 2}, centroids)
    assert g.route(2, np.array([1.0, 0.0])) == 1  # its own group, whatever its embedding says
    assert g.route(99, np.array([-0.9, 0.1])) == 2
    assert g.route(99, np.array([0.1, 0.8])) == 1
    assert g.nearest(np.array([[0.9, 0.0], [0.0, -1.0], [-0.2, 0.9]])).tolist() == [0, 0, 1]


def test_route_without_an_embedding_goes_to_the_largest_group():
    g = Grouping("kmeans", {0: 1, 1: 0, 2: 0}, np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert g.route(99) == 0
    assert g.route(99, np.zeros(2)) == 0  # a zero row is no embedding
    assert Grouping("random", {0: 0, 1: 0, 2: 1}, None).route(99, np.array([0.0, 1.0])) == 0


def test_groups_without_a_centroid_are_never_routed_to():
    g = Grouping("category", {0: 0, 1: 1}, np.array([[np.nan, np.nan], [0.0, 1.0]]))
    assert g.route(99, np.array([1.0, 0.0])) == 1


# --- category groups -----------------------------------------------------------------------------------
def test_category_key_takes_two_stripped_levels_and_keeps_one_level_strings():
    key = category_key({"categories": "Office & School Supplies , Paper,  Copy Paper"})
    assert key == "Office & School Supplies, Paper"
    assert category_key({"categories": "Pop"}) == "Pop"
    assert category_key({"categories": "A, B"}, levels=1) == "A"


def test_category_groups_with_centroids_from_item_embeddings():
    meta = {0: {"categories": "A, x, 1"}, 1: {"categories": "A, x, 2"}, 2: {"categories": "A, y"},
            3: {"categories": "Pop"}, 4: {"categories": "A, x"}}
    emb = np.array([[1.0, 0], [0, 1.0], [1.0, 0], [0, 0], [1.0, 0]])  # item 3 has no embedding
    g = category_groups(meta, emb)
    assert g.name == "category" and g.sizes == (3, 1, 1)
    assert g.labels == ("A, x", "A, y", "Pop") and g.members(0) == (0, 1, 4)
    assert np.allclose(g.centroids[0], [2 / 3, 1 / 3]) and np.isnan(g.centroids[2]).all()
    assert g.route(7, np.array([1.0, 0.0])) == 1  # A, y's centroid sits on (1, 0)


@pytest.mark.skipif(not OFFICE.is_dir(), reason="shared Office data not present")
def test_office_has_43_category_groups():
    from recspec.data.datasets import read_lcrec

    data = read_lcrec(OFFICE)
    emb = item_embeddings(data.train, data.num_items, dim=32, seed=0)
    g = category_groups(read_item_meta(OFFICE / "Office.item.json"), emb)
    assert g.num_groups == 43 and sum(g.sizes) == data.num_items == 2420
    assert "Pop" in g.labels and "Office & School Supplies, Paper" in g.labels
    assert within_group_cosine(g, emb) > within_group_cosine(random_groups(g, seed=0), emb)


# --- k-means and random groups -------------------------------------------------------------------------
def test_kmeans_groups_is_deterministic_and_recovers_planted_clusters():
    x, planted = planted_vectors()
    a, b = kmeans_groups(x, 4, seed=3), kmeans_groups(x, 4, seed=3)
    assert a.of == b.of and np.array_equal(a.centroids, b.centroids)
    for c in range(4):
        assert len({a.of[m] for m in np.flatnonzero(planted == c).tolist()}) == 1
    assert a.sizes == (30, 30, 30, 30)


def test_kmeans_beats_random_groups_on_within_group_similarity():
    x, _ = planted_vectors(k=5, per=20, noise=0.4, seed=1)
    km = kmeans_groups(x, 5, seed=0)
    rnd = random_groups(km, seed=0, emb=x)
    assert within_group_cosine(km, x) > within_group_cosine(rnd, x) + 0.3

    def sse(g):  # sum of squared distances to the own group's centroid
        return np.sum((x - g.centroids[[g.of[m] for m in range(len(x))]]) ** 2)
    assert sse(km) < sse(rnd)


def test_kmeans_groups_puts_rows_without_embedding_in_the_largest_group():
    x, _ = planted_vectors(k=2, per=10)
    x = np.concatenate([x[:4], x[10:], np.zeros((2, x.shape[1]))])  # 4 + 10 embedded, 2 cold
    g = kmeans_groups(x, 2, seed=0)
    assert g.sizes == (12, 4) and g.of[14] == g.of[15] == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=60), st.integers(0, 2**16))
def test_random_groups_keep_members_and_sizes(raw, seed):
    g = make_grouping("kmeans", np.arange(100, 100 + len(raw)), np.array(raw))
    r = random_groups(g, seed)
    assert r.name == "random" and r.sizes == g.sizes and set(r.of) == set(g.of)
    assert random_groups(g, seed).of == r.of


def test_random_groups_shuffle_members():
    g = make_grouping("kmeans", np.arange(200), np.arange(200) // 50)
    assert random_groups(g, 0).of != g.of and random_groups(g, 0).of != random_groups(g, 1).of


# --- quality summary -------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(2, 30), st.integers(1, 4), st.integers(0, 2**16))
def test_within_group_cosine_matches_the_mean_over_pairs(n, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = make_grouping("kmeans", np.arange(n), rng.integers(k, size=n))
    weighted, total = 0.0, 0
    for grp in range(g.num_groups):
        ms = list(g.members(grp))
        if len(ms) >= 2:
            sims = x[ms] @ x[ms].T
            weighted += len(ms) * (sims.sum() - len(ms)) / (len(ms) * (len(ms) - 1))
            total += len(ms)
    want = weighted / total if total else float("nan")
    assert np.isclose(within_group_cosine(g, x), want, equal_nan=True)


def test_summary_of_equal_groups():
    x, _ = planted_vectors(k=3, per=10)
    s = summarize(kmeans_groups(x, 3, seed=0), x, seed=0)
    assert (s.num_groups, s.members, s.smallest, s.largest) == (3, 30, 10, 10)
    assert np.isclose(s.effective_groups, 3.0) and s.within_cosine > s.random_cosine
    assert np.isclose(s.global_cosine, within_group_cosine(global_group(range(30)), x))
    assert "kmeans" in s.line()


# --- embeddings ------------------------------------------------------------------------------------------
def test_item_embeddings_are_deterministic_unit_rows_and_zero_for_cold_items():
    seqs, _ = planted_sequences()
    seqs = seqs + [[60]]  # item 60: alone in its sequence; item 61: never seen
    a, b = item_embeddings(seqs, 62, dim=8, seed=0), item_embeddings(seqs, 62, dim=8, seed=0)
    assert a.shape == (62, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a[:60], axis=1), 1.0, atol=1e-5)
    assert not has_embedding(a[60:]).any()
    with pytest.raises(DataError):
        item_embeddings([[0, 62]], 62)


def test_planted_item_blocks_give_item_groups_and_user_groups():
    seqs, block = planted_sequences()
    emb = item_embeddings(seqs, 60, dim=8, seed=0)
    items = kmeans_groups(emb, 3, seed=0)
    assert sorted(items.sizes) == [20, 20, 20]
    assert all(len({items.of[i] for i in np.flatnonzero(block == c).tolist()}) == 1 for c in range(3))
    users = kmeans_groups(user_embeddings(seqs, emb), 3, seed=0)
    user_block = [s[0] // 20 for s in seqs]
    assert len({(users.of[u], user_block[u]) for u in range(len(seqs))}) == 3  # clusters = blocks
    new_user = user_embeddings([[41, 45]], emb)[0]  # a history from block 2
    assert users.route(-1, new_user) == users.of[user_block.index(2)]


def test_user_embeddings_are_normalised_means_of_item_embeddings():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # item 2: no embedding
    u = user_embeddings([[0, 1], [0, 0, 2], [2], []], emb)
    assert np.allclose(u, [[2**-0.5, 2**-0.5], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(DataError):
        user_embeddings([[3]], emb)
