"""Per-user exclusions against brute force over random SID indexes: a state is banned exactly when no
allowed SID lies below it, the trie then allows exactly the tokens that keep an allowed SID reachable,
and a history marks the SID rows of its items. (Beside test_trie.py, whose index strategy it uses.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trie import sid_indexes

from recspec.data.exclusion import banned_states, history_rows
from recspec.data.trie import build_trie
from recspec.data.vocab import EOS, Vocab
from recspec.errors import DataError


def draw_rows(data, U: int) -> torch.Tensor:
    """(3, U) bool excluded SID rows: user 0 none, user 1 all, user 2 drawn."""
    drawn = data.draw(st.lists(st.booleans(), min_size=U, max_size=U))
    return torch.tensor([[False] * U, [True] * U, drawn])


def prefix_states(trie, vocab: Vocab) -> dict[tuple[int, ...], int]:
    """{SID prefix (codes, lengths 0..L): its trie state}, by walking the tokens."""
    offsets = vocab.level_offsets()
    out = {}
    for row in trie.sids.tolist():
        for d in range(len(row) + 1):
            toks = torch.tensor([offsets[j] + c for j, c in enumerate(row[:d])], dtype=torch.long)
            out[tuple(row[:d])] = int(trie.walk(toks))
    return out


@settings(max_examples=60, deadline=None)
@given(index=sid_indexes(), data=st.data())
def test_banned_states_are_the_prefixes_with_no_allowed_sid(index, data):
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab)
    sids = trie.sids.tolist()
    rows = draw_rows(data, trie.num_sids)
    banned = banned_states(trie, rows)  # (3, S)
    assert banned.shape == (3, trie.next_state.shape[0]) and not banned[:, trie.end_state].any()
    for prefix, state in prefix_states(trie, vocab).items():
        for b in range(3):
            live = any(not rows[b, u] and tuple(s[:len(prefix)]) == prefix for u, s in enumerate(sids))
            assert bool(banned[b, state]) == (not live), (b, prefix)


@settings(max_examples=60, deadline=None)
@given(index=sid_indexes(), data=st.data())
def test_allowed_keeps_exactly_the_tokens_that_reach_an_allowed_sid(index, data):
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab)
    sids, offsets, L = trie.sids.tolist(), vocab.level_offsets(), trie.num_levels
    rows = draw_rows(data, trie.num_sids)
    banned = banned_states(trie, rows)
    states = prefix_states(trie, vocab)
    batch = torch.tensor(list(states.values())).expand(3, -1)  # (3, n): every prefix state, for every user
    got = trie.allowed(batch, banned)  # (3, n, V)
    plain = trie.allowed(batch)
    for j, prefix in enumerate(states):
        for b in range(3):
            d = len(prefix)
            if d == L:  # a leaf allows <eos> (the end state is never banned)
                want = {EOS}
            else:
                want = {offsets[d] + s[d] for u, s in enumerate(sids) if not rows[b, u] and tuple(s[:d]) == prefix}
            assert set(got[b, j].nonzero().reshape(-1).tolist()) == want, (b, prefix)
    assert not (got & ~plain).any()  # exclusions only remove tokens


def test_history_rows_mark_the_sid_of_every_item():
    import numpy as np

    from recspec.data.sids import SIDIndex, resolve_collisions

    index = resolve_collisions(SIDIndex(codes=np.array([[0, 0], [0, 1], [1, 0], [0, 0], [1, 1]]), level_sizes=(2, 2),
                                        prefixes=("a", "b")))  # items 0 and 3 shared a SID: told apart on load
    trie = build_trie(index, Vocab.for_index(index))
    rows = history_rows(trie, [[3, 4], [], [1, 1, 2]])
    assert rows.shape == (3, trie.num_sids) and rows.dtype == torch.bool
    for b, hist in enumerate([[3, 4], [], [1, 1, 2]]):
        assert set(rows[b].nonzero().reshape(-1).tolist()) == set(trie.item_sid[hist].tolist())
    assert not rows[0, trie.item_sid[0]]  # item 0 is no longer excluded with item 3: one item per SID
    with pytest.raises(DataError, match=r"history 1 holds item 5, outside the catalogue's 5 items"):
        history_rows(trie, [[0], [1, 5]])
