"""Training windows: every item after a user's first is a target exactly once; labels are next tokens."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from recspec.data.sids import SIDIndex
from recspec.data.vocab import EOS, PAD, Vocab
from recspec.training.windows import IGNORE, bucketed_batches, build_windows, window_spans

L = 2


def toy_index(num_items: int = 40) -> SIDIndex:
    codes = np.stack([np.arange(num_items) // 8, np.arange(num_items) % 8], axis=1)  # unique rows
    return SIDIndex(codes=codes, level_sizes=(5, 8), prefixes=("a", "b"))


def test_window_spans_by_hand():
    assert window_spans(1, 4, 2) == []
    assert window_spans(3, 4, 2) == [(0, 3, 1)]
    assert window_spans(9, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 9, 8)]
    with pytest.raises(ValueError, match="window_stride"):
        window_spans(5, 4, 4)


def _targets(windows, vocab: Vocab) -> list[tuple[int, ...]]:
    """The items whose L codes + <eos> are labels, decoded back from the label rows."""
    out = []
    for tok, lab in zip(windows.tokens.tolist(), windows.labels.tolist()):
        labelled = [x for x in lab if x != IGNORE]
        assert len(labelled) % (L + 1) == 0
        for j in range(0, len(labelled), L + 1):
            item_toks, eos = labelled[j:j + L], labelled[j + L]
            assert eos == EOS
            codes = np.asarray(item_toks) - np.asarray(vocab.level_offsets())
            out.append(tuple(codes.tolist()))
    return out


@pytest.mark.parametrize("window_items,stride", [(4, 2), (5, 1), (3, 2), (21, 10)])
def test_every_item_but_the_first_is_a_target_once(window_items, stride):
    index = toy_index()
    vocab = Vocab.for_index(index)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 40, size=n).tolist() for n in (1, 2, 3, 7, 12, 30)]
    w = build_windows(seqs, vocab, index, window_items, stride)
    want = Counter(tuple(index.codes[i].tolist()) for s in seqs for i in s[1:])
    assert Counter(_targets(w, vocab)) == want
    assert int(w.lengths.max()) <= 1 + window_items * (L + 1)


def test_labels_are_the_next_tokens():
    index = toy_index()
    vocab = Vocab.for_index(index)
    w = build_windows([list(range(9)), [5, 6]], vocab, index, 4, 2)
    for tok, lab, n in zip(w.tokens, w.labels, w.lengths):
        keep = lab != IGNORE
        assert torch.equal(lab[:-1][keep[:-1]], tok[1:][keep[:-1]])
        assert not keep[n - 1:].any()  # nothing predicted from the last real token or the padding
        assert (tok[n:] == PAD).all()
    # first window: the first item is context only; items 1..3 (positions 1 + 3j ..) are targets
    first = w.labels[0, : int(w.lengths[0])]
    assert (first[:L + 1] == IGNORE).all() and (first[L + 1: -1] != IGNORE).all()


def test_bucketed_batches_cover_every_row_once_and_are_deterministic():
    lengths = torch.tensor(np.random.default_rng(1).integers(4, 60, size=103))
    a = bucketed_batches(lengths, 8, np.random.default_rng([0, 1]), bucket_batches=3)
    b = bucketed_batches(lengths, 8, np.random.default_rng([0, 1]), bucket_batches=3)
    assert len(a) == 13 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(103))
