"""SID index io, collision resolution (the disambiguating level), and the statistics `data inspect` prints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recspec.data.sids import (DISAMBIGUATION_PREFIX, SIDIndex, collision_stats, level_stats, rank_in_group,
                               resolve_collisions)
from recspec.errors import DataError


def _index() -> SIDIndex:
    codes = np.array([[0, 2, 1], [1, 0, 0], [0, 2, 0]], dtype=np.int64)  # (I=3, L=3)
    return SIDIndex(codes=codes, level_sizes=(2, 3, 2), prefixes=("a", "b", "c"))


def test_save_load_round_trip(tmp_path):
    index = _index()
    path = tmp_path / "sub" / "toy.index.json"
    index.save(path)
    loaded = SIDIndex.load(path)
    np.testing.assert_array_equal(loaded.codes, index.codes)
    assert loaded.level_sizes == index.level_sizes
    assert loaded.prefixes == index.prefixes
    assert loaded.fingerprint() == index.fingerprint()
    assert loaded.tokens(0) == ["<a_0>", "<b_2>", "<c_1>"]


def test_load_rejects_bad_token(tmp_path):
    path = tmp_path / "bad.index.json"
    path.write_text('{"0": ["<a_1>", "b_2"]}')
    with pytest.raises(DataError, match="item 0"):
        SIDIndex.load(path)



# --- collisions ----------------------------------------------------------------------------------------
def _colliding() -> SIDIndex:
    """6 items over 2 levels: items 1, 3, 4 share (0, 1), items 2, 5 share (1, 0), item 0 is alone."""
    codes = np.array([[0, 0], [0, 1], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=np.int64)
    return SIDIndex(codes=codes, level_sizes=(2, 2), prefixes=("a", "b"))


def test_resolve_appends_rank_within_each_group():
    raw = _colliding()
    index = resolve_collisions(raw)
    assert index.num_levels == raw.num_levels + 1 and index.disambiguated
    assert index.prefixes == (*raw.prefixes, DISAMBIGUATION_PREFIX)
    np.testing.assert_array_equal(index.codes[:, :-1], raw.codes)  # earlier levels untouched
    assert index.codes[:, -1].tolist() == [0, 0, 0, 1, 2, 1]  # rank by item id inside each group
    assert index.level_sizes == (*raw.level_sizes, 3)  # the largest group
    assert index.collisions() == 0 and len(np.unique(index.codes, axis=0)) == index.num_items


def test_resolve_leaves_an_index_without_collisions_unchanged():
    index = _index()
    assert resolve_collisions(index) is index and not index.disambiguated


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_resolve_gives_unique_sids_and_ranks_by_item_id(levels, num_items, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, (num_items, levels))  # (I, L), few codes: collisions are common
    raw = SIDIndex(codes=codes, level_sizes=(3,) * levels, prefixes=("a", "b", "c")[:levels])
    index = resolve_collisions(raw)
    assert len(np.unique(index.codes, axis=0)) == num_items
    if raw.collisions() == 0:
        assert index is raw
        return
    last = index.codes[:, -1]
    for row in np.unique(codes, axis=0):
        members = np.flatnonzero((codes == row).all(axis=1))  # increasing item ids
        assert last[members].tolist() == list(range(len(members)))
    assert int((last > 0).sum()) == raw.collisions()


def test_load_resolves_collisions_and_the_saved_index_round_trips(tmp_path):
    raw = _colliding()
    path = tmp_path / "shared.index.json"
    path.write_text(json.dumps(raw.to_tokens()))  # an index file where items share SIDs
    loaded = SIDIndex.load(path)
    np.testing.assert_array_equal(loaded.codes, resolve_collisions(raw).codes)
    assert loaded.tokens(4) == ["<a_0>", "<b_1>", f"<{DISAMBIGUATION_PREFIX}_2>"]
    loaded.save(tmp_path / "saved.index.json")
    again = SIDIndex.load(tmp_path / "saved.index.json")
    np.testing.assert_array_equal(again.codes, loaded.codes)
    assert again.level_sizes == loaded.level_sizes and again.prefixes == loaded.prefixes
    assert again.fingerprint() == loaded.fingerprint() and again.disambiguated


def test_load_refuses_a_disambiguating_level_that_does_not_disambiguate(tmp_path):
    path = tmp_path / "bad.index.json"
    path.write_text(json.dumps({"0": ["<a_1>", "<dup_0>"], "1": ["<a_1>", "<dup_0>"]}))
    with pytest.raises(DataError, match=r"bad\.index\.json: 1 items share a SID"):
        SIDIndex.load(path)


def test_rank_in_group_by_hand():
    codes = np.array([[1, 1], [0, 0], [1, 1], [0, 0], [1, 1]])
    assert rank_in_group(codes).tolist() == [0, 0, 1, 1, 2]


# --- statistics ----------------------------------------------------------------------------------------
def test_level_stats_match_brute_force():
    index = resolve_collisions(_colliding())
    stats = level_stats(index)
    assert [s.prefix for s in stats] == list(index.prefixes)
    for level, s in enumerate(stats):
        codes = index.codes.tolist()
        assert s.tokens == index.level_sizes[level]
        assert s.codes_used == len({c[level] for c in codes})
        parents = {tuple(c[:level]) for c in codes}
        fanout = [len({c[level] for c in codes if tuple(c[:level]) == p}) for p in parents]
        assert s.fanout_max == max(fanout)
        assert s.fanout_mean == pytest.approx(np.mean(fanout), abs=1e-3)


def test_collision_stats_report_the_groups_and_the_disambiguated_share():
    raw = _colliding()
    groups = [len(np.flatnonzero((raw.codes == row).all(axis=1))) for row in np.unique(raw.codes, axis=0)]
    shared = [g for g in groups if g > 1]
    for index in (resolve_collisions(raw), raw):  # resolved, and as a hand-made index holds it
        stats = collision_stats(index)
        assert stats.shared_sids == len(shared) and stats.items_on_shared_sids == sum(shared)
        assert stats.largest_group == max(groups)
        assert stats.disambiguated_items == raw.collisions() == sum(g - 1 for g in shared)
        assert stats.disambiguated_share == pytest.approx(raw.collisions() / raw.num_items, abs=1e-6)
    assert DISAMBIGUATION_PREFIX in collision_stats(resolve_collisions(raw)).action
    assert collision_stats(raw).action.startswith("not resolved")
    clean = collision_stats(_index())
    assert (clean.shared_sids, clean.largest_group, clean.disambiguated_items) == (0, 1, 0)
    assert clean.action.startswith("none")
