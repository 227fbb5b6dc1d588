"""The SID trie against brute force over the index, and prompts built from a Vocab.

Lives here rather than in tests/data/ (which another suite owns)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recspec.data.sids import DEFAULT_PREFIXES, SIDIndex, resolve_collisions
from recspec.data.trie import build_trie
from recspec.data.vocab import BOS, EOS, PAD, SPECIALS, Vocab, build_prompts
from recspec.errors import DataError


@st.composite
def sid_indexes(draw) -> SIDIndex:
    """1-4 levels, codebooks of 1-8 codes (not every code used), 1-60 items, often with collisions:
    items draw their SIDs from a pool of at most as many distinct rows as there are items; colliding
    indexes are resolved as loading resolves them (one more level)."""
    L = draw(st.integers(1, 4))
    sizes = tuple(draw(st.lists(st.integers(1, 8), min_size=L, max_size=L)))
    num_items = draw(st.integers(1, 60))
    pool_size = draw(st.integers(1, num_items))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pool = np.stack([rng.integers(0, s, pool_size) for s in sizes], axis=1)  # (P, L)
    codes = pool[rng.integers(0, pool_size, num_items)]  # (I, L)
    return resolve_collisions(SIDIndex(codes=codes.astype(np.int64), level_sizes=sizes, prefixes=DEFAULT_PREFIXES[:L]))


def brute_force_next(index: SIDIndex, vocab: Vocab, prefix: np.ndarray) -> set[int]:
    """Token ids that extend `prefix` (d codes) toward some item; {<eos>} for a complete SID."""
    d = len(prefix)
    if d == index.num_levels:
        return {EOS}
    match = (index.codes[:, :d] == prefix).all(axis=1)
    return {vocab.level_offsets()[d] + int(c) for c in index.codes[match, d]}


def mask_set(mask: torch.Tensor) -> set[int]:
    return set(mask.nonzero().reshape(-1).tolist())


@settings(max_examples=60, deadline=None)
@given(sid_indexes())
def test_allowed_is_exactly_the_valid_next_tokens(index):
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab)
    L, V = index.num_levels, vocab.size
    tokens = torch.as_tensor(vocab.item_tokens(index.codes))  # (I, L)
    every_token = torch.arange(V)
    for item in range(index.num_items):
        for d in range(L + 1):
            state = trie.walk(tokens[item, :d])
            assert int(trie.depth[state]) == d
            allowed = trie.allowed(state)  # (V,)
            assert allowed.shape == (V,)
            want = brute_force_next(index, vocab, index.codes[item, :d])
            assert want and mask_set(allowed) == want
            assert bool(allowed[EOS]) == (d == L)  # <eos> only after a full SID
            # every token from here: inside the SID, allowed ones move to a live state one level
            # down and all others to the dead end state; at a leaf everything ends (<eos> included)
            nxt = trie.step(state.expand(V), every_token)  # (V,)
            live = nxt != trie.end_state
            assert torch.equal(live, allowed if d < L else torch.zeros(V, dtype=torch.bool))
            assert (trie.depth[nxt[live]] == d + 1).all()
        done = trie.walk(torch.cat([tokens[item], torch.tensor([EOS])]))
        assert int(done) == trie.end_state


@settings(max_examples=60, deadline=None)
@given(sid_indexes(), st.data())
def test_end_state_is_dead(index, data):
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab)
    end = torch.tensor(trie.end_state)
    assert not trie.allowed(end).any()
    junk = torch.tensor(data.draw(st.lists(st.integers(0, vocab.size - 1), min_size=1, max_size=6)))
    assert int(trie.walk(junk, state=end)) == trie.end_state  # once dead, always dead
    # a token of the wrong level at the root (e.g. <eos>, <pad>, a level-1 code) kills the beam
    for tok in [PAD, BOS, EOS] + ([vocab.level_offsets()[1]] if index.num_levels > 1 else []):
        assert int(trie.step(torch.tensor(trie.ROOT), torch.tensor(tok))) == trie.end_state


@settings(max_examples=60, deadline=None)
@given(sid_indexes())
def test_walk_reaches_the_item_leaf_and_every_item_has_its_own(index):
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab)
    tokens = torch.as_tensor(vocab.item_tokens(index.codes))  # (I, L)
    leaves = trie.walk(tokens)  # (I,) all items in one batched call
    sid_rows = trie.leaf_sid[leaves]  # (I,)
    assert (sid_rows >= 0).all()
    assert torch.equal(trie.sids[sid_rows], torch.as_tensor(index.codes))
    assert torch.equal(sid_rows, trie.item_sid)
    assert trie.num_sids == len(np.unique(index.codes, axis=0)) == index.num_items
    # sid_items: each SID row lists exactly the one item that has those codes, every item once
    assert sorted(i for group in trie.sid_items for i in group) == list(range(index.num_items))
    for row, group in enumerate(trie.sid_items):
        same = np.flatnonzero((index.codes == trie.sids[row].numpy()).all(axis=1))
        assert list(group) == same.tolist() and len(group) == 1
    # items(): SID rows back to items, -1 kept
    rows = torch.cat([sid_rows, torch.tensor([-1])])
    assert trie.items(rows).tolist() == list(range(index.num_items)) + [-1]
    # states off the leaves are not items
    assert int((trie.leaf_sid >= 0).sum()) == trie.num_sids


@settings(max_examples=30, deadline=None)
@given(sid_indexes(), st.data())
def test_allowed_and_step_are_batched(index, data):
    """Masks and steps over a (2, n) batch of states equal the one-by-one results."""
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab)
    S = trie.next_state.shape[0]
    states = torch.tensor(data.draw(st.lists(st.integers(0, S - 1), min_size=2, max_size=2 * 7)))
    states = states[: len(states) // 2 * 2].reshape(2, -1)
    tokens = torch.tensor(data.draw(st.lists(st.integers(0, vocab.size - 1), min_size=states.numel(),
                                             max_size=states.numel()))).reshape(states.shape)
    masks = trie.allowed(states)
    assert masks.shape == (*states.shape, vocab.size)
    nxt = trie.step(states, tokens)
    for i in range(states.shape[0]):
        for j in range(states.shape[1]):
            assert torch.equal(masks[i, j], trie.allowed(states[i, j]))
            assert torch.equal(nxt[i, j], trie.step(states[i, j], tokens[i, j]))


def test_trie_refuses_an_index_where_items_share_a_sid():
    index = SIDIndex(codes=np.array([[0, 1], [1, 0], [0, 1]]), level_sizes=(2, 2), prefixes=("a", "b"))
    with pytest.raises(DataError, match="1 items share their SID"):
        build_trie(index, Vocab.for_index(index))
    resolved = resolve_collisions(index)
    assert build_trie(resolved, Vocab.for_index(resolved)).num_sids == 3


def test_trie_refuses_a_vocab_of_another_index():
    index = SIDIndex(codes=np.array([[0, 1], [1, 0]]), level_sizes=(2, 2), prefixes=("a", "b"))
    with pytest.raises(ValueError, match="level sizes"):
        build_trie(index, Vocab(level_sizes=(2, 3), prefixes=("a", "b")))


# --- vocab and prompts ----------------------------------------------------------------------------
INDEX = SIDIndex(codes=np.array([[i % 3, i % 4] for i in range(30)]), level_sizes=(3, 4), prefixes=("a", "b"))
VOCAB = Vocab.for_index(INDEX)


def test_vocab_layout():
    assert VOCAB.size == len(SPECIALS) + 3 + 4 == len(VOCAB.token_strings())
    assert VOCAB.level_offsets() == (3, 6)
    assert VOCAB.token_strings()[3:7] == ["<a_0>", "<a_1>", "<a_2>", "<b_0>"]
    assert VOCAB.item_tokens(np.array([[2, 3]])).tolist() == [[5, 9]]
    assert Vocab.from_dict(VOCAB.to_dict()) == VOCAB


def item_block(item: int) -> list[int]:
    return VOCAB.item_tokens(INDEX.codes[item]).tolist() + [EOS]


def test_build_prompts_left_pads_and_keeps_last_20():
    histories = [[4], list(range(25)), [7, 8, 9]]
    p = build_prompts(VOCAB, INDEX, histories)
    L1 = INDEX.num_levels + 1
    assert p.tokens.shape == (3, 1 + 20 * L1)
    assert p.lengths.tolist() == [1 + L1, 1 + 20 * L1, 1 + 3 * L1]
    for row, hist, n in zip(p.tokens.tolist(), histories, p.lengths.tolist()):
        T = len(row)
        assert row[: T - n] == [PAD] * (T - n)  # padding on the left only
        kept = hist[-20:]
        assert row[T - n:] == [BOS] + [t for item in kept for t in item_block(item)]
        assert row[-1] == EOS
    assert PAD not in p.tokens[1].tolist()  # the longest row fills the width


def test_build_prompts_history_len():
    p = build_prompts(VOCAB, INDEX, [list(range(10))], history_len=2)
    assert p.tokens[0].tolist() == [BOS] + item_block(8) + item_block(9)


def test_build_prompts_empty_history():
    with pytest.raises(DataError, match=r"history 1: empty history"):
        build_prompts(VOCAB, INDEX, [[1, 2], []])


@pytest.mark.parametrize("bad", [30, -1, 1000])
def test_build_prompts_unknown_item(bad):
    with pytest.raises(DataError, match=rf"history 0: unknown item id {bad} \(catalogue has items 0..29\)"):
        build_prompts(VOCAB, INDEX, [[1, bad, 2]])


def test_build_prompts_names_the_source():
    with pytest.raises(DataError, match=r"valid user 0: empty history"):
        build_prompts(VOCAB, INDEX, [[]], where="valid user")
