"""The quality gate of a knowledge text model: does it predict held-out items' descriptions better than
an n-gram model of the same old items does?

Terms, for scored items i = 1..N (new items with a description, data/knowledge.py) with output tokens
y_i1..y_in_i after their prompts x_i:
    NLL_i(m)  = - sum_t log p_m(y_it | x_i, y_i<t)            (nats; m = the LM or the n-gram model)
    ppl(m)    = exp( sum_i NLL_i(m) / sum_i n_i )              (per-token perplexity, all items pooled)
    diff      = (sum_i NLL_i(lm) - NLL_i(ngram)) / sum_i n_i  = log ppl(lm) - log ppl(ngram)
The gate passes when ppl(lm) < ppl(ngram) (diff < 0). Its interval: the percentile bootstrap over items
(evaluation/intervals.py): resample b draws N items with replacement, diff_b = mean_b(d) / mean_b(n)
with d_i = NLL_i(lm) - NLL_i(ngram); `bootstrap_means` draws the same indices for d and n given the same
seed and sizes, so each diff_b is the ratio over one resample.

Both models give every id of the vocabulary a probability (the LM's full softmax, the n-gram's
interpolation down to 1/V), so the two perplexities are over the same events. The n-gram model is fitted on
the old items' prompt + output tokens (`fit_ngram`), the same items and tokens the LM trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recspec.data.knowledge import KnowledgeItems
from recspec.data.vocab import PAD
from recspec.errors import DataError
from recspec.evaluation.intervals import bootstrap_means
from recspec.evaluation.ngram_lm import NGramLM
from recspec.models.decoder import Decoder


@dataclass(frozen=True)
class ItemNLL:
    """Each scored item's summed negative log-likelihood of its output tokens under one model."""

    ids: tuple[int, ...]  # N item ids
    nll: np.ndarray  # (N,) float64 nats, summed over the item's output tokens
    tokens: np.ndarray  # (N,) int64 output tokens of each item

    @property
    def ppl(self) -> float:
        """exp(total NLL / total tokens)."""
        return math.exp(float(self.nll.sum()) / float(self.tokens.sum()))


def scored_ids(items: KnowledgeItems, ids: Iterable[int] | None = None) -> tuple[int, ...]:
    """The items of `ids` (None: the new items) that have an output; refuses an empty result."""
    scored = items.scored(items.split.new if ids is None else ids)
    if not scored:
        raise DataError("no items with a description to score")
    return scored


def fit_ngram(items: KnowledgeItems, vocab_size: int, order: int = 3) -> NGramLM:
    """The n-gram baseline: `NGramLM.fit` on the old scored items' prompt + output tokens."""
    return NGramLM.fit([p + o for p, o in items.pairs(items.scored(items.split.old))], vocab_size, order)


def ngram_nll(ngram: NGramLM, items: KnowledgeItems, ids: Iterable[int] | None = None) -> ItemNLL:
    """NLL_i of the n-gram model on each item's output tokens given its prompt."""
    ids = scored_ids(items, ids)
    nll = [-ngram.log_probs(p + o, len(p)).sum() for p, o in items.pairs(ids)]
    return ItemNLL(ids=ids, nll=np.array(nll, dtype=np.float64), tokens=_lengths(items, ids))


@torch.no_grad()
def lm_nll(model: Decoder, items: KnowledgeItems, ids: Iterable[int] | None = None, batch_size: int = 32) -> ItemNLL:
    """NLL_i of a causal LM on each item's output tokens given its prompt; batches of similar lengths, eval mode."""
    ids = scored_ids(items, ids)
    pairs = items.pairs(ids)
    order = sorted(range(len(pairs)), key=lambda r: len(pairs[r][0]) + len(pairs[r][1]))
    nll = np.zeros(len(pairs), dtype=np.float64)
    was_training = model.training
    model.eval()
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        nll[rows] = _batch_nll(model, [pairs[r] for r in rows])
    model.train(was_training)
    return ItemNLL(ids=ids, nll=nll, tokens=_lengths(items, ids))


def _batch_nll(model: Decoder, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> np.ndarray:
    """b (prompt, output) pairs -> (b,) summed NLL of the outputs; one forward, right padding."""
    logits, target, row = scored_logits(model, pairs)  # (n, V), (n,), (n,)
    nll = F.cross_entropy(logits, target, reduction="none")  # (n,)
    per_item = torch.zeros(len(pairs), dtype=torch.float64, device=logits.device).index_add_(0, row, nll.double())
    return per_item.cpu().numpy()  # host sync: scoring only


@torch.no_grad()
def scored_logits(model: Decoder, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """b (prompt, output) pairs -> fp32 logits (n, V) at the n output tokens' positions, their targets (n,) and
    each one's pair (n,); one forward, right padding, the model's current mode."""
    device = next(model.parameters()).device
    T = max(len(p) + len(o) for p, o in pairs)
    tokens = torch.full((len(pairs), T), PAD, dtype=torch.int64)  # (b, T)
    target = torch.full((len(pairs), T), -1, dtype=torch.int64)  # (b, T) next token where scored, else -1
    for i, (p, o) in enumerate(pairs):
        tokens[i, :len(p) + len(o)] = torch.tensor(p + o)
        target[i, len(p) - 1:len(p) + len(o) - 1] = torch.tensor(o)
    tokens, target = tokens.to(device), target.to(device)
    pos = torch.arange(T, device=device).expand(len(pairs), T)  # (b, T)
    keep = target >= 0  # (b, T)
    logits = model.head(model.hidden(tokens, pos)[keep]).float()  # (n, V) the scored positions only
    row = torch.arange(len(pairs), device=device).unsqueeze(1).expand(-1, T)[keep]  # (n,) each token's item
    return logits, target[keep], row


def _lengths(items: KnowledgeItems, ids: tuple[int, ...]) -> np.ndarray:
    return np.array([len(o) for _, o in items.pairs(ids)], dtype=np.int64)


def perplexity(model: Decoder, items: KnowledgeItems, ids: Iterable[int] | None = None, batch_size: int = 32) -> float:
    """ppl of a causal LM on the output tokens of `ids` (None: the new items with a description)."""
    return lm_nll(model, items, ids, batch_size).ppl


@dataclass(frozen=True)
class GateResult:
    lm_ppl: float  # ppl(lm) on the scored items' output tokens
    ngram_ppl: float  # ppl(ngram) on the same tokens
    passed: bool  # lm_ppl < ngram_ppl
    items: int  # N scored items
    tokens: int  # output tokens scored, all items
    nll_diff: float  # log lm_ppl - log ngram_ppl, nats per token (< 0: the LM is better)
    lo: float  # bootstrap interval of nll_diff over items (module docstring)
    hi: float
    significant: bool  # hi < 0: the LM is better beyond the resampling noise of the items
    ngram_order: int  # n of the n-gram model


def knowledge_gate(model: Decoder, ngram: NGramLM, items: KnowledgeItems, ids: Iterable[int] | None = None,
                   batch_size: int = 32, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> GateResult:
    """The LM against the n-gram model on the output tokens of `ids` (None: the new items with a description)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lm, ng = lm_nll(model, items, ids, batch_size), ngram_nll(ngram, items, ids)
    d, n = lm.nll - ng.nll, lm.tokens.astype(np.float64)  # (N,) each
    diffs = bootstrap_means(d, n_boot, seed) / bootstrap_means(n, n_boot, seed)  # (n_boot,) same resamples
    lo, hi = np.quantile(diffs, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return GateResult(lm_ppl=lm.ppl, ngram_ppl=ng.ppl, passed=lm.ppl < ng.ppl, items=len(lm.ids),
                      tokens=int(lm.tokens.sum()), nll_diff=float(d.sum() / n.sum()), lo=float(lo), hi=float(hi),
                      significant=bool(hi < 0.0), ngram_order=ngram.order)
