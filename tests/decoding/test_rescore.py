"""Re-scoring a decoded list gives back the scores beam search assigned to it (with <eos> or without)."""

from __future__ import annotations

import pytest
import torch

from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import beam_search
from recspec.decoding.rescore import sid_scores


@pytest.fixture(scope="module")
def setup(beauty_index, make_decoder):
    vocab = Vocab.for_index(beauty_index)
    trie = build_trie(beauty_index, vocab)
    histories = [[(7 * u + 3 * i) % beauty_index.num_items for i in range(1 + u % 20)] for u in range(12)]
    prompts = build_prompts(vocab, beauty_index, histories)
    return make_decoder(vocab, seed=4), trie, prompts


@pytest.mark.parametrize("eos", [False, True])
def test_rescored_beams_equal_beam_search_scores(setup, eos):
    """Without eos an item's score is the sum of its L code log-probs; with eos, plus <eos>'s."""
    model, trie, prompts = setup
    res = beam_search(model, trie, prompts, 10, eos=eos)
    got = sid_scores(model, trie, prompts, res.sids, eos=eos)
    torch.testing.assert_close(got, res.scores, atol=1e-4, rtol=0)
    other = sid_scores(model, trie, prompts, res.sids, eos=not eos)  # the <eos> step's log-prob is no zero
    assert ((other - got).abs() > 1e-3).all()


def test_missing_entries_score_minus_infinity(setup):
    model, trie, prompts = setup
    res = beam_search(model, trie, prompts, 3)
    sids = res.sids.clone()
    sids[:, -1] = -1
    got = sid_scores(model, trie, prompts, sids)
    assert torch.isneginf(got[:, -1]).all()
    torch.testing.assert_close(got[:, :-1], res.scores[:, :-1], atol=1e-4, rtol=0)


def test_audit_tells_a_swap_from_rounding_noise(setup, beauty_index):
    from recspec.data.catalog import Catalog
    from recspec.data.datasets import Example
    from recspec.data.vocab import Vocab
    from recspec.evaluation.bench import ModeRun, audit_ties

    model, trie, prompts = setup
    vocab = Vocab.for_index(beauty_index)
    histories = [[(7 * u + 3 * i) % beauty_index.num_items for i in range(1 + u % 20)] for u in range(12)]
    examples = [Example(user=str(u), history=h, targets=(0,)) for u, h in enumerate(histories)]
    cat = Catalog(data=None, index=beauty_index, vocab=vocab, trie=trie, index_path=None)
    res = beam_search(model, trie, prompts, 5)
    ar = ModeRun(sids=res.sids.tolist(), scores=res.scores.tolist())
    order = [0, 2, 1, 3, 4]
    gaps = (res.scores[:, 1] - res.scores[:, 2]).abs()
    assert (gaps > 1e-3).all()  # clear margins between ranks 2 and 3
    gap = float(gaps.max())
    swapped = ModeRun(sids=res.sids[:, order].tolist(), scores=res.scores[:, order].tolist())
    ties, max_gap, noise = audit_ties(model, cat, examples, ar, swapped, "cpu")
    assert ties == 0 and abs(max_gap - gap) < 1e-4 and noise < 1e-4  # exact scores: a real disagreement
    noisy = ModeRun(sids=swapped.sids, scores=(res.scores[:, order] + gap + 0.01).tolist())  # error > gaps
    ties, _, noise = audit_ties(model, cat, examples, ar, noisy, "cpu")
    assert ties == res.sids.shape[0] and noise >= gap - 1e-4
