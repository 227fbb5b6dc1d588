"""Batched recommendation keeps input order and matches one-user beam search; metrics compare SIDs,
one per item (an index with shared SIDs is resolved when loaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recspec.data.datasets import Example, SplitData
from recspec.data.sids import SIDIndex, resolve_collisions
from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import beam_search
from recspec.evaluation.evaluate import (
    evaluate,
    evaluate_item_rankings,
    evaluate_popularity,
    length_batches,
    popularity_sids,
    recommend,
    target_sids,
)
from recspec.evaluation.metrics import ranking_metrics


def toy_index(num_items: int = 30, collide: tuple[int, ...] = ()) -> SIDIndex:
    """Two levels, item i = (i // 6, i % 6); `collide` = (a, b, ...) gives items b, ... the SID of item a
    (as an index file may hold them: unresolved)."""
    codes = np.stack([np.arange(num_items) // 6, np.arange(num_items) % 6], axis=1)
    if collide:
        codes[list(collide[1:])] = codes[collide[0]]
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


def test_items_that_shared_a_sid_are_separate_targets():
    index = resolve_collisions(toy_index(collide=(4, 5)))  # item 5 had item 4's SID
    trie = build_trie(index, Vocab.for_index(index))
    (sids,) = target_sids(trie, [Example("u", (0,), (4, 5))])
    assert sids == {int(trie.item_sid[4]), int(trie.item_sid[5])} and len(sids) == 2


def test_popularity_baseline_by_hand():
    index = resolve_collisions(toy_index(collide=(2, 3)))  # 2 and 3 had one SID: now two items again
    trie = build_trie(index, Vocab.for_index(index))
    train = [[3, 3, 2], [3, 1], [1, 0]]  # items by count: 3, 1, then 0 and 2 (tie: by id), ...
    ranked = popularity_sids(trie, train, index.num_items)
    s = trie.item_sid.tolist()
    assert ranked[:4] == [s[3], s[1], s[0], s[2]] and len(ranked) == index.num_items
    data = SplitData(name="toy", num_items=index.num_items, train=train, valid=[], test=[])
    examples = [Example("a", (0,), (2,)), Example("b", (0,), (0, 9))]  # a: rank 4; b: item 0 at rank 3
    m = evaluate_popularity(data, trie, examples, ks=(1, 3))
    assert m["recall@1"] == pytest.approx(0.0)
    assert m["recall@3"] == pytest.approx((0 + 0.5) / 2)
    assert m["ndcg@3"] == pytest.approx((0 + (1 / np.log2(4)) / (1 + 1 / np.log2(3))) / 2)
    assert m["users"] == 2


def test_an_index_with_shared_sids_gives_k_distinct_items_and_metrics_over_them(tmp_path, make_decoder):
    """An index file where items share SIDs is loaded: every list holds K distinct items, and Recall /
    NDCG count exactly those K items (a ground truth made of the items that shared a SID)."""
    shared = (4, 5, 6, 7, 8)
    path = tmp_path / "shared.index.json"
    toy_index(collide=shared).save(path)
    index = SIDIndex.load(path)
    vocab = Vocab.for_index(index)
    trie, model = build_trie(index, vocab), make_decoder(vocab, seed=3)
    K = 10
    items = trie.items(recommend(model, trie, vocab, index, HISTORIES, K=K).sids).tolist()  # (U, K)
    assert all(len(set(row)) == K and min(row) >= 0 for row in items)
    examples = [Example(str(u), tuple(h), shared) for u, h in enumerate(HISTORIES)]
    m = evaluate(model, trie, vocab, index, examples, K=K, ks=(K,))
    found = [[item in shared for item in row] for row in items]  # hits by item, not by SID
    assert any(any(f) for f in found)
    recall = np.mean([sum(f) / len(shared) for f in found])
    ideal = sum(1 / np.log2(j + 2) for j in range(min(len(shared), K)))
    ndcg = np.mean([sum(1 / np.log2(j + 2) for j, hit in enumerate(f) if hit) / ideal for f in found])
    assert m[f"recall@{K}"] == pytest.approx(recall) and m[f"ndcg@{K}"] == pytest.approx(ndcg)
    index.save(tmp_path / "saved.index.json")  # the resolved index round-trips
    again = SIDIndex.load(tmp_path / "saved.index.json")
    assert np.array_equal(again.codes, index.codes) and again.fingerprint() == index.fingerprint()


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


def test_item_rankings_are_scored_by_their_sids():
    index = resolve_collisions(toy_index(collide=(4, 5)))  # items 4 and 5 shared a SID, now told apart
    trie = build_trie(index, Vocab.for_index(index))
    examples = [Example("u0", (1,), (5,)), Example("u1", (2,), (7, 8))]
    ranked = [[4, 5, 0], [8, 1, 2]]  # u0: item 5 at rank 2 (item 4 is another item); u1: one of two at rank 1
    m = evaluate_item_rankings(trie, examples, ranked, ks=(1, 3))
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx((0 + 1 / 2) / 2)
    assert m["recall@3"] == pytest.approx((1 + 1 / 2) / 2)
