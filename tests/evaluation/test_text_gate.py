"""The knowledge gate (evaluation/text_gate.py): LM scoring equals a direct forward however it is batched, the
n-gram scoring equals its log-probabilities, and on hand-built items an oracle LM passes and a flat LM fails,
by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from recspec.data.knowledge import KnowledgeItems
from recspec.data.text import ItemSplit
from recspec.data.vocab import BOS
from recspec.errors import DataError
from recspec.evaluation.ngram_lm import NGramLM
from recspec.evaluation.text_gate import fit_ngram, knowledge_gate, lm_nll, ngram_nll, perplexity

V = 12


def _items(n_old: int = 6, n_new: int = 4) -> KnowledgeItems:
    """Items whose output counts up from the prompt's token: 3 + s, 4 + s, ... (mod 9, past the specials), 5 tokens
    cut without <eos>. Old items start at 0..2, new items at 5..8: the new items' transitions never occur in the
    old ones. The last item (old) has an empty output."""
    ids = tuple(range(n_old + n_new + 1))
    starts = [k % 3 for k in range(n_old)] + [5 + k % 4 for k in range(n_new)] + [0]
    prompts = tuple((BOS, 3 + s) for s in starts)
    outputs = tuple(tuple(3 + (s + j) % 9 for j in range(1, 6)) for s in starts[:-1]) + ((),)
    split = ItemSplit(old=ids[:n_old] + (ids[-1],), new=ids[n_old:-1])
    return KnowledgeItems(ids=ids, prompts=prompts, outputs=outputs, categories=("c",) * len(ids), split=split)


class Oracle(nn.Module):
    """A 'decoder' that knows the rule: after token t comes t + 1 (mod 9 past the specials), with prob ~1 - 1e-3;
    flat: every id equally likely."""

    def __init__(self, flat: bool = False):
        super().__init__()
        w = torch.zeros(V, V)
        if not flat:
            for t in range(3, 12):
                w[t, 3 + (t - 3 + 1) % 9] = 10.0
        self.w = nn.Parameter(w)

    def hidden(self, tokens, positions):
        return nn.functional.one_hot(tokens, V).float()  # (B, T, V)

    def head(self, h):
        return h @ self.w  # (B, T, V)


def test_items_with_empty_outputs_are_left_out():
    items = _items()
    ng = fit_ngram(items, V, 2)
    assert ngram_nll(ng, items).ids == items.split.new  # all new items have outputs
    assert ngram_nll(ng, items, items.split.old).ids == items.split.old[:-1]
    with pytest.raises(DataError, match="no items with a description"):
        ngram_nll(ng, items, [items.ids[-1]])


def test_lm_nll_is_a_direct_forward_whatever_the_batching(make_decoder):
    items = _items()
    model = make_decoder(V, seed=3)
    one, many = lm_nll(model, items, batch_size=1), lm_nll(model, items, batch_size=3)
    expected = []
    for p, o in items.pairs(items.split.new):
        with torch.no_grad():
                logp = torch.log_softmax(model.forward_train(torch.tensor([p + o])), -1)[0]  # (T, V)
        expected.append(-sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(o)))
    assert one.nll == pytest.approx(expected, rel=1e-5) and many.nll == pytest.approx(expected, rel=1e-5)
    assert one.tokens.tolist() == [5] * 4
    assert perplexity(model, items) == pytest.approx(math.exp(sum(expected) / 20), rel=1e-5)


def test_ngram_nll_sums_its_log_probs():
    items = _items()
    ng = fit_ngram(items, V, 3)
    expected = NGramLM.fit([p + o for p, o in items.pairs(items.split.old[:-1])], V, 3)
    res = ngram_nll(ng, items)
    for (p, o), nll in zip(items.pairs(items.split.new), res.nll):
        assert nll == pytest.approx(-expected.log_probs(p + o, len(p)).sum())


def test_oracle_passes_and_flat_lm_fails():
    items = _items()
    ng = fit_ngram(items, V, 3)
    good = knowledge_gate(Oracle(), ng, items, n_boot=200)
    assert good.passed and good.significant and good.lm_ppl < 1.01 < good.ngram_ppl
    assert good.nll_diff == pytest.approx(math.log(good.lm_ppl) - math.log(good.ngram_ppl))
    assert good.lo <= good.nll_diff <= good.hi < 0 and (good.items, good.tokens, good.ngram_order) == (4, 20, 3)
    flat = knowledge_gate(Oracle(flat=True), ng, items, n_boot=200)
    assert flat.lm_ppl == pytest.approx(V) and not flat.passed and flat.lo > 0
    # on the old items the n-gram model has seen every transition, the flat LM none
    assert knowledge_gate(Oracle(flat=True), ng, items, items.split.old, n_boot=50).ngram_ppl < 3
    assert knowledge_gate(Oracle(), ng, items, n_boot=200, seed=0) == good  # deterministic given the seed


def test_bootstrap_interval_is_the_ratio_over_resampled_items():
    items = _items()
    ng = fit_ngram(items, V, 2)
    g = knowledge_gate(Oracle(flat=True), ng, items, n_boot=500, level=0.9, seed=7)
    d = lm_nll(Oracle(flat=True), items).nll - ngram_nll(ng, items).nll
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 4, size=(500, 4))
    ratios = d[idx].sum(1) / 20.0  # every item has 5 output tokens
    assert (g.lo, g.hi) == pytest.approx(tuple(np.quantile(ratios, [0.05, 0.95])))
    with pytest.raises(ValueError, match="level"):
        knowledge_gate(Oracle(), ng, items, level=1.0)
