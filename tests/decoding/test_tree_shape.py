"""Tree shapes: the auto shape of hand-built tries (wide root, narrow root, a budget below the root's
fan-out, K above the fan-outs) drafts whole levels where they fit and plans the fewest target calls;
coverage estimates and width splits agree with brute force; explicit shapes that cannot be honoured
are refused with the flag and its value; configs resolve to the auto shape unless they set one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spec_checks import covered, need, path

from recspec.config import CPU_TREE_BUDGET, GPU_TREE_BUDGET, DecodeConfig
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie, build_trie
from recspec.data.vocab import Vocab
from recspec.decoding.tree_shape import (CLASSIC, TreeShape, auto_shape, best_widths, check_budget, check_shape,
                                         cover_cdf, default_tree_budget, given_shape, plan_rounds, tree_shape)


def trie_of(codes: np.ndarray) -> SIDTrie:
    codes = np.asarray(codes, dtype=np.int64)
    index = SIDIndex(codes=codes, level_sizes=tuple(int(s) for s in codes.max(axis=0) + 1),
                     prefixes=tuple("abcdefgh"[: codes.shape[1]]))
    return build_trie(index, Vocab.for_index(index))


def tree_codes(fan: list[list[int]], seed: int = 0) -> np.ndarray:
    """Unique SIDs with fan[d][i % len(fan[d])] children under the i-th prefix of depth d."""
    prefixes = [()]
    for level in fan:
        prefixes = [p + (c,) for i, p in enumerate(prefixes) for c in range(level[i % len(level)])]
    return np.array(prefixes, dtype=np.int64)


def check_well_formed(shape: TreeShape, L: int, K: int, budget: int, eos: bool = True) -> None:
    assert shape.N >= K and len(shape.depths) == L and len(shape.widths) == L and shape.expand == 0.0
    assert all(1 <= w <= shape.N for w in shape.widths)
    for l, d in enumerate(shape.depths):
        assert 0 <= d <= (L - l if eos else L - l - 1), f"round from level {l} drafts past the end"
        assert sum(shape.widths[l:l + d]) <= budget, f"round from level {l} exceeds the budget {budget}"


# --- named tries --------------------------------------------------------------------------------------
WIDE_ROOT = tree_codes([[200], [30], [1], [1]])  # 200 level-1 codes, 30 children each, then 1 per prefix
WIDE_ROOT_NARROW_BELOW = tree_codes([[200], [1, 2], [1]])  # 200 level-1 codes, then 1.5 and 1 children per prefix
NARROW_ROOT = tree_codes([[4], [3], [2]])  # 4 + 12 + 24 prefixes: the whole trie fits one tree
BIG_ROOT = tree_codes([[300], [1, 2, 3], [1]])  # more level-1 codes than the budget below
FEW_CODES = tree_codes([[6], [40], [1]])  # fewer level-1 codes than K, many children each


def test_wide_root_drafts_level_one_whole_then_the_rest_in_one_round():
    K, budget = 10, GPU_TREE_BUDGET
    L = WIDE_ROOT.shape[1]
    shape = auto_shape(trie_of(WIDE_ROOT), K, budget, eos=True)
    check_well_formed(shape, L, K, budget, eos=True)
    assert path(shape, L, eos=True)[0] == (0, 1) and shape.widths[0] == len({c[0] for c in WIDE_ROOT.tolist()})
    assert len(path(shape, L, eos=True)) == 2 and covered(shape, WIDE_ROOT, K, eos=True)


def test_wide_root_above_narrow_levels_takes_level_one_from_the_target():
    """Two calls either way (level 1 whole, then the rest; or the target's level 1, then one tree for
    levels 2..L): the plan takes the one with fewer nodes."""
    K, budget = 10, GPU_TREE_BUDGET
    L = WIDE_ROOT_NARROW_BELOW.shape[1]
    shape = auto_shape(trie_of(WIDE_ROOT_NARROW_BELOW), K, budget, eos=True)
    check_well_formed(shape, L, K, budget, eos=True)
    assert path(shape, L, eos=True) == [(0, 0), (1, L - 1)] and covered(shape, WIDE_ROOT_NARROW_BELOW, K, eos=True)


def test_narrow_root_drafts_every_level_in_one_round():
    K, budget = 10, GPU_TREE_BUDGET
    L = NARROW_ROOT.shape[1]
    shape = auto_shape(trie_of(NARROW_ROOT), K, budget, eos=True)
    check_well_formed(shape, L, K, budget, eos=True)
    assert path(shape, L, eos=True) == [(0, L)]  # all L levels drafted, <eos> the bonus level: one target call
    assert shape.widths == tuple(need(NARROW_ROOT, K, 0, m) for m in range(1, L + 1))


def test_narrow_root_without_eos_ends_at_the_last_level():
    K, budget = 10, GPU_TREE_BUDGET
    L = NARROW_ROOT.shape[1]
    shape = auto_shape(trie_of(NARROW_ROOT), K, budget, eos=False)
    check_well_formed(shape, L, K, budget, eos=False)
    assert path(shape, L, eos=False) == [(0, L - 1)]  # level L is the target's bonus level


def test_budget_below_the_root_drafts_no_first_level():
    K, budget = 10, 128
    L = BIG_ROOT.shape[1]
    assert need(BIG_ROOT, K, 0, 1) > budget
    shape = auto_shape(trie_of(BIG_ROOT), K, budget, eos=True)
    check_well_formed(shape, L, K, budget, eos=True)
    assert shape.depths[0] == 0  # level 1 from the target alone, then the narrow levels below
    assert path(shape, L, eos=True) == [(0, 0), (1, L - 1)] and covered(shape, BIG_ROOT, K, eos=True)


def test_k_above_the_fan_out_drafts_every_code_and_keeps_n_at_k():
    K, budget = 20, GPU_TREE_BUDGET
    L = FEW_CODES.shape[1]
    codes1 = len({c[0] for c in FEW_CODES.tolist()})
    assert codes1 < K
    shape = auto_shape(trie_of(FEW_CODES), K, budget, eos=True)
    check_well_formed(shape, L, K, budget, eos=True)
    assert shape.widths[0] == codes1 and shape.N >= K
    assert len(path(shape, L, eos=True)) == 2 and covered(shape, FEW_CODES, K, eos=True)


@settings(max_examples=25, deadline=None)
@given(fan=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=2, max_size=4),
       K=st.integers(1, 12), budget=st.integers(0, 80), eos=st.booleans())
def test_any_trie_gets_a_well_formed_shape(fan, K, budget, eos):
    codes = tree_codes(fan)
    L = codes.shape[1]
    shape = auto_shape(trie_of(codes), K, budget, eos)
    check_well_formed(shape, L, K, budget, eos)
    drafted = L if eos else L - 1  # levels one round from the root can draft (the bonus level is the last)
    if sum(need(codes, K, 0, m) for m in range(1, drafted + 1)) <= budget:
        assert len(path(shape, L, eos)) == 1 and covered(shape, codes, K, eos)  # the whole trie fits: one call


# --- coverage estimates and width splits ------------------------------------------------------------------
def test_cover_is_exact_where_every_prefix_is_a_beam():
    counts = np.array([3, 1, 2])
    cdf = cover_cdf(counts, np.ones(3), K=5, cap=10)
    assert np.array_equal(cdf, (np.arange(11) >= counts.sum()).astype(float))


def test_cover_is_sure_from_the_k_largest_counts_up():
    counts, K = np.array([5, 1, 1, 1, 2, 1]), 2
    cdf = cover_cdf(counts, counts.astype(float), K, cap=20)
    top = int(np.sort(counts)[::-1][:K].sum())
    assert (cdf[top:] == 1.0).all() and (cdf[:top] < 1.0).all() and (np.diff(cdf) >= 0).all()


@pytest.mark.parametrize("K", [1, 2])
def test_cover_below_the_guarantee_is_the_law_of_weighted_draws(K):
    counts, weights = np.array([1, 1, 2, 3]), np.array([1.0, 1.0, 2.0, 4.0])
    cdf = cover_cdf(counts, weights, K, cap=8)
    share = weights / weights.sum()
    top = int(np.sort(counts)[::-1][:K].sum())
    for w in range(top):  # brute force over the K i.i.d. draws
        want = sum(np.prod(share[list(pick)]) for pick in itertools.product(range(len(counts)), repeat=K)
                   if counts[list(pick)].sum() <= w)
        assert cdf[w] == pytest.approx(want)


def test_best_widths_are_the_narrowest_covering_split_when_it_fits():
    steps = [np.arange(11) >= 3, np.arange(11) >= 5]
    assert best_widths([s.astype(float) for s in steps], 10) == (1.0, (3, 5))
    assert best_widths([s.astype(float) for s in steps], 7) == (0.0, ())  # no split covers both
    assert best_widths([s.astype(float) for s in steps], 1) == (0.0, ())  # fewer nodes than levels


def test_best_widths_maximise_the_product_within_the_budget():
    rng = np.random.default_rng(0)
    budget = 9
    cdfs = [np.concatenate([[0.0], np.sort(rng.random(budget))]) for _ in range(3)]
    splits = [w for w in itertools.product(range(1, budget + 1), repeat=3) if sum(w) <= budget]
    best = max(np.prod([c[x] for c, x in zip(cdfs, w)]) for w in splits)
    fewest = min(sum(w) for w in splits if np.prod([c[x] for c, x in zip(cdfs, w)]) >= best)
    p, widths = best_widths(cdfs, budget)
    assert p == pytest.approx(best) and sum(widths) == fewest
    assert np.prod([c[x] for c, x in zip(cdfs, widths)]) == pytest.approx(best)


def test_rounds_that_cannot_be_covered_leave_one_ar_step_per_level():
    L, levels, budget = 3, 4, 16
    rounds = plan_rounds(lambda l, m: np.zeros(budget + 1), L, levels, budget)
    assert [r.depth for r in rounds] == [0] * levels and rounds[0].calls == levels


# --- explicit shapes and configs ---------------------------------------------------------------------------
def test_no_shape_field_means_auto_and_any_one_an_explicit_shape():
    assert given_shape() is None
    assert given_shape(draft_beams=96) == TreeShape(96, CLASSIC.gamma, (), (), CLASSIC.expand)
    assert given_shape(widths=(8, 4), expand=0.0) == TreeShape(CLASSIC.N, CLASSIC.gamma, (), (8, 4), 0.0)


REFUSED = [  # (shape fields, K, the message)
    (dict(draft_beams=40, widths=(64, 24)), 10, "--widths 64,24: 64 is above --draft-beams 40"),
    (dict(draft_beams=40, widths=(4, 0)), 10, "--widths 4,0: 0 is below 1"),
    (dict(draft_beams=5), 10, "--draft-beams 5 is below --K 10"),
    (dict(depths=(1, -1)), 10, "--depths 1,-1: -1 is below 0"),
    (dict(gamma=-1), 10, "--gamma -1 is below 0"),
    (dict(expand=-0.5), 10, "--expand -0.5 is below 0"),
]


@pytest.mark.parametrize("fields,K,message", REFUSED, ids=[m.split(" ")[0] + str(i) for i, (_, _, m) in enumerate(REFUSED)])
def test_an_explicit_shape_that_cannot_be_honoured_is_refused(fields, K, message):
    with pytest.raises(ValueError) as e:
        check_shape(given_shape(**fields), K)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_budget_is_for_the_auto_shape_only():
    check_budget(64, explicit=False)
    with pytest.raises(ValueError, match="--tree-budget 64 sizes the auto shape"):
        check_budget(64, explicit=True)
    with pytest.raises(ValueError, match="--tree-budget -1 is below 0"):
        check_budget(-1, explicit=False)


def test_configs_resolve_to_the_auto_shape_unless_they_set_one():
    trie, K = trie_of(WIDE_ROOT), 10
    assert tree_shape(DecodeConfig(K=K), trie) == auto_shape(trie, K, CPU_TREE_BUDGET)  # the target on the CPU
    assert tree_shape(DecodeConfig(K=K), trie, device="cuda") == auto_shape(trie, K, GPU_TREE_BUDGET)
    assert tree_shape(DecodeConfig(K=K).replace(budget=64), trie) == auto_shape(trie, K, 64)
    assert tree_shape(DecodeConfig(K=K).replace(draft_beams=16, gamma=2), trie) == TreeShape(16, 2, (), (), CLASSIC.expand)
    with pytest.raises(ValueError, match="--widths 17: 17 is above --draft-beams 16"):
        tree_shape(DecodeConfig(K=K).replace(draft_beams=16, widths=(17,)), trie)


def test_the_default_budget_is_the_device_s():
    assert default_tree_budget("cpu") == CPU_TREE_BUDGET < GPU_TREE_BUDGET == default_tree_budget("cuda")
