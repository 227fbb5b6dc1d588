"""Batched recommendation keeps input order and matches one-user beam search; metrics compare SIDs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recspec.data.datasets import Example, SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import beam_search
from recspec.evaluation.evaluate import (
    evaluate,
    evaluate_popularity,
    length_batches,
    popularity_sids,
    recommend,
    target_sids,
)
from recspec.evaluation.metrics import ranking_metrics


def toy_index(num_items: int = 30, collide: tuple[int, int] | None = None) -> SIDIndex:
    """Two levels, item i = (i // 6, i % 6); `collide` = (a, b) gives item b the SID of item a."""
    codes = np.stack([np.arange(num_items) // 6, np.arange(num_items) % 6], axis=1)
    if collide:
        codes[collide[1]] = codes[collide[0]]
    return SIDIndex(codes=codes, level_sizes=(int(codes[:, 0].max()) + 1, 6), prefixes=("a", "b"))


@pytest.fixture
def toy(make_decoder):
    index = toy_index()
    vocab = Vocab.for_index(index)
    return index, vocab, build_trie(index, vocab), make_decoder(vocab, seed=3)


HISTORIES = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10], [11, 12], [13, 14, 15, 16], [17]]


def test_length_batches_group_similar_lengths():
    assert length_batches(HISTORIES, 2) == [[1, 5], [3, 2], [4, 0]]


def test_recommend_keeps_input_order_and_matches_one_user_search(toy):
    index, vocab, trie, model = toy
    res = recommend(model, trie, vocab, index, HISTORIES, K=5, batch_size=4)
    assert res.sids.shape == (len(HISTORIES), 5)
    for u, h in enumerate(HISTORIES):
        one = beam_search(model, trie, build_prompts(vocab, index, [h]), 5)
        assert torch.equal(res.sids[u], one.sids[0])
        assert torch.allclose(res.scores[u], one.scores[0], atol=1e-5)


def test_evaluate_scores_the_beam_search_output(toy):
    index, vocab, trie, model = toy
    examples = [Example(str(u), tuple(h), (h[-1] + 1, 29)) for u, h in enumerate(HISTORIES)]
    m = evaluate(model, trie, vocab, index, examples, K=5, batch_size=3, ks=(1, 5))
    ranked = recommend(model, trie, vocab, index, HISTORIES, K=5).sids.tolist()
    expect = ranking_metrics(ranked, target_sids(trie, examples), (1, 5))
    assert m == {**expect, "users": len(examples)}
    assert not model.training


def test_evaluate_refuses_k_above_beams(toy):
    index, vocab, trie, model = toy
    with pytest.raises(ValueError, match="K=5"):
        evaluate(model, trie, vocab, index, [Example("u", (1,), (2,))], K=5, ks=(10,))


def test_items_sharing_a_sid_are_one_target():
    index = toy_index(collide=(4, 5))  # item 5 has item 4's SID
    trie = build_trie(index, Vocab.for_index(index))
    (sids,) = target_sids(trie, [Example("u", (0,), (4, 5))])
    assert sids == {int(trie.item_sid[4])}


def test_popularity_baseline_by_hand():
    index = toy_index(collide=(2, 3))
    trie = build_trie(index, Vocab.for_index(index))
    train = [[3, 3, 2], [3, 1], [1, 0]]  # items by count: 3, 1, 2, 0, ...; 2 and 3 share a SID
    ranked = popularity_sids(trie, train, index.num_items)
    s = trie.item_sid.tolist()
    assert ranked[:3] == [s[3], s[1], s[0]]
    data = SplitData(name="toy", num_items=index.num_items, train=train, valid=[], test=[])
    examples = [Example("a", (0,), (2,)), Example("b", (0,), (0, 9))]  # a: rank 1 (via the shared SID)
    m = evaluate_popularity(data, trie, examples, ks=(1, 3))
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@3"] == pytest.approx((1 + 0.5 / (1 + 1 / np.log2(3))) / 2)
    assert m["users"] == 2


LONG = [list(range(0, 30, 2)) + [1, 3], [5, 11, 17, 23, 29, 0, 6, 12], list(range(25)), [7]]  # exclusions that bite


@pytest.mark.parametrize("eos", [False, True])
def test_recommend_with_eos_and_excluded_histories_matches_one_user_search(toy, eos):
    from recspec.data.exclusion import history_rows

    index, vocab, trie, model = toy
    res = recommend(model, trie, vocab, index, LONG, K=5, batch_size=3, eos=eos, exclude_history=True)
    plain = recommend(model, trie, vocab, index, LONG, K=5, batch_size=3, eos=eos)
    assert any(set(trie.item_sid[h].tolist()) & set(row) for h, row in zip(LONG, plain.sids.tolist()))
    for u, h in enumerate(LONG):
        one = beam_search(model, trie, build_prompts(vocab, index, [h]), 5, eos=eos, exclude=history_rows(trie, [h]))
        assert torch.equal(res.sids[u], one.sids[0]) and torch.allclose(res.scores[u], one.scores[0], atol=1e-5)
        assert (res.sids[u] >= 0).all() and not set(res.sids[u].tolist()) & set(trie.item_sid[h].tolist())


@pytest.mark.parametrize("eos", [False, True])
def test_hf_baseline_excludes_histories_like_ours(toy, eos):
    """The transformers baseline with per-user pruned prefixes returns our lists (a batch of users, left-padded)."""
    pytest.importorskip("transformers")
    from recspec.data.catalog import Catalog
    from recspec.data.exclusion import history_rows
    from recspec.evaluation.hf_baseline import hf_call, to_transformers

    index, vocab, trie, model = toy
    cat = Catalog(data=None, index=index, vocab=vocab, trie=trie, index_path=None)
    examples = [Example(str(u), tuple(h), (0,)) for u, h in enumerate(LONG)]
    users = list(range(len(LONG)))
    got, _, _ = hf_call(to_transformers(model), cat, examples, 5, "cpu", eos, exclude_history=True)(users)
    want = beam_search(model, trie, build_prompts(vocab, index, LONG), 5, eos=eos, exclude=history_rows(trie, LONG))
    plain, _, _ = hf_call(to_transformers(model), cat, examples, 5, "cpu", eos)(users)
    assert got == want.sids.tolist() and plain != got
