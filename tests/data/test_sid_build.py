"""Building SIDs: k-means, codebooks sized from the catalogue, the capacity-aware last level, and item
vectors from co-occurrence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recspec.data.sid_build import (CODEBOOK_HEADROOM, build_sids, codebook_for, item_vectors_from_interactions,
                                    kmeans)
from recspec.data.sids import SIDIndex, collision_stats
from recspec.errors import DataError


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((20, 2)) for c in centres])  # (60, 2)
    _, labels = kmeans(x, 3, seed=1)
    groups = labels.reshape(3, 20)
    assert all(len(set(g)) == 1 for g in groups)
    assert len({g[0] for g in groups}) == 3


def test_build_sids_without_collisions_keeps_levels():
    x = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])  # (4, 2), 4 clear clusters
    index = build_sids(x, levels=2, codebook_size=4, seed=0)
    assert index.num_levels == 2
    assert index.collisions() == 0
    assert index.prefixes == ("a", "b")


def test_build_sids_appends_the_disambiguating_level_for_duplicates():
    """One level of 2 codes: item 0 takes the code of the three identical items 0, 1, 3, item 2 the
    other (distinct codes first, closest pairs first); items 1 and 3 can only join item 0's code."""
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # items 0, 1, 3 identical
    index = build_sids(x, levels=1, codebook_size=2, seed=0)
    assert index.num_levels == 2 and index.disambiguated
    assert len({index.codes[i, 0] for i in (0, 1, 3)}) == 1 and index.codes[2, 0] != index.codes[0, 0]
    assert index.codes[[0, 1, 3], 1].tolist() == [0, 1, 2]  # rank in item-id order
    assert index.codes[2, 1] == 0
    assert index.level_sizes[1] == 3
    assert index.collisions() == 0


def test_codebook_for_is_the_smallest_size_with_headroom():
    for num_items in (1, 7, 1682, 2420, 12035):
        for levels in (1, 2, 3, 4):
            c = codebook_for(num_items, levels)
            want = CODEBOOK_HEADROOM * num_items
            assert c**levels >= want and (c == 2 or (c - 1) ** levels < want), (num_items, levels, c)
    with pytest.raises(DataError):
        codebook_for(0, 3)


@settings(max_examples=60, deadline=None)
@given(x=st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).standard_normal((60, 3))),
       levels=st.integers(1, 3), codebook=st.integers(1, 6), seed=st.integers(0, 9))
def test_last_level_gives_distinct_codes_where_the_codebook_has_room(x, levels, codebook, seed):
    """Items sharing their first L-1 codes collide only past the codebook: a group of g items leaves
    max(0, g - c) of them on a disambiguating code."""
    index = build_sids(x, levels=levels, codebook_size=codebook, seed=seed, iters=5)
    _, groups = np.unique(index.codes[:, : levels - 1], axis=0, return_counts=True) if levels > 1 else (None, [len(x)])
    overflow = sum(max(0, int(g) - codebook) for g in groups)
    assert collision_stats(index).disambiguated_items == overflow


def test_build_sids_is_deterministic_and_round_trips(tmp_path):
    x = np.random.default_rng(3).standard_normal((200, 8))
    a, b = build_sids(x, levels=3, codebook_size=8, seed=5), build_sids(x, levels=3, codebook_size=8, seed=5)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.level_sizes[:3] == (8, 8, 8)
    a.save(tmp_path / "x.index.json")
    assert SIDIndex.load(tmp_path / "x.index.json").fingerprint() == a.fingerprint()


@st.composite
def _vectors_with_duplicates(draw) -> np.ndarray:
    """(I, D) vectors drawn from a small pool, so exact duplicates are common."""
    dim = draw(st.integers(1, 4))
    pool = draw(st.integers(1, 12))
    base = draw(st.lists(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=dim, max_size=dim),
                         min_size=pool, max_size=pool))
    picks = draw(st.lists(st.integers(0, pool - 1), min_size=1, max_size=40))
    return np.asarray(base, dtype=np.float64)[picks]


@settings(max_examples=100, deadline=None)
@given(x=_vectors_with_duplicates(), levels=st.integers(1, 3), codebook=st.integers(1, 6), seed=st.integers(0, 9))
def test_build_sids_gives_every_item_a_unique_sid(x, levels, codebook, seed):
    index = build_sids(x, levels=levels, codebook_size=codebook, seed=seed, iters=5)
    assert index.num_items == len(x)
    assert len(np.unique(index.codes, axis=0)) == len(x)
    assert index.num_levels in (levels, levels + 1)
    assert (index.codes < np.array(index.level_sizes)).all()


def test_build_sids_rejects_bad_input():
    with pytest.raises(DataError):
        build_sids(np.zeros((0, 3)))
    with pytest.raises(DataError):
        build_sids(np.zeros(5))


def test_item_vectors_follow_cooccurrence():
    # items 0-2 always appear together, items 3-5 together; item 6 never appears (cold)
    train = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [3, 4, 5], [5, 3, 4], [4, 5, 3]] * 3
    vecs = item_vectors_from_interactions(train, num_items=7, dim=4, seed=0)  # (7, 4)
    assert vecs.shape == (7, 4) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    same, other = vecs[0] @ vecs[1], vecs[0] @ vecs[4]
    assert same > other + 0.5
    again = item_vectors_from_interactions(train, num_items=7, dim=4, seed=0)
    np.testing.assert_array_equal(vecs, again)


def test_item_vectors_with_side_features():
    side = np.eye(5, 3, dtype=np.float32)  # (5, 3) one-hot, last two rows empty
    vecs = item_vectors_from_interactions([[0, 1, 2, 3, 4]], num_items=5, dim=2, side_features=side)
    assert vecs.shape == (5, 5)
    np.testing.assert_allclose(vecs[0, 2:], [0.5, 0.0, 0.0])
    with pytest.raises(DataError, match="side features"):
        item_vectors_from_interactions([[0, 1]], num_items=5, dim=2, side_features=np.ones((4, 2)))
