"""The interpolated modified Kneser-Ney model (evaluation/ngram_lm.py) on hand-built corpora: values computed
by hand, distributions that sum to 1, back-off on unseen contexts, the discount formula and its fallbacks."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from recspec.data.vocab import BOS, EOS
from recspec.evaluation.ngram_lm import DEFAULT_DISCOUNT, NGramLM, kn_discounts

V = 6
CORPUS = [[BOS, 3, 4, EOS], [BOS, 3, 5, EOS]]  # BOS = 1, EOS = 2


def test_bigram_values_by_hand():
    m = NGramLM.fit(CORPUS, V, order=2)
    # bigrams (raw): (1,3):2, (3,4):1, (4,2):1, (3,5):1, (5,2):1 -> n1 = 4, n2 = 1: D = 4 / 6
    # unigrams (continuation): 3:1 ({1}), 4:1 ({3}), 5:1 ({3}), 2:2 ({4, 5}) -> n1 = 3, n2 = 1: D = 3 / 5
    assert m.discounts == ((0.6,) * 3, (4 / 6,) * 3)
    # P_1(w) = (c(w) - 0.6) / 5 + gamma / 6 with gamma = 0.6 * 4 / 5 = 0.48
    p1 = {2: 1.4 / 5 + 0.08, 3: 0.4 / 5 + 0.08, 4: 0.16, 5: 0.16, 0: 0.08, 1: 0.08}
    assert sum(p1.values()) == pytest.approx(1.0)
    for w, p in p1.items():
        assert m.prob([0], w) == pytest.approx(p)  # context (0,) never seen: the unigram level alone
    # h = (3,): c(h) = 2, followers 4 and 5 once each, gamma = (2/3) * 2 / 2
    assert m.prob([BOS, 3], 4) == pytest.approx((1 - 2 / 3) / 2 + 2 / 3 * 0.16)
    assert m.prob([BOS, 3], EOS) == pytest.approx(2 / 3 * p1[2])
    # h = (1,): c = 2 (one follower seen twice), D2 = 2/3, gamma = (2/3) / 2
    assert m.prob([BOS], 3) == pytest.approx((2 - 2 / 3) / 2 + 1 / 3 * p1[3])
    assert m.prob([], 3) == m.prob([BOS], 3)  # an empty context is <bos> padding


def test_trigram_pads_with_bos_and_uses_continuation_counts_below():
    m = NGramLM.fit([[BOS, 3, 3, 3]], V, order=3)
    # padded: 1 1 3 3 3 -> trigrams (1,1,3), (1,3,3), (3,3,3) once each: n1 = 3, n2 = 0 -> D = 1
    assert m.discounts[2] == (1.0, 1.0, 1.0)
    # bigram continuation: (1,3) after {1}, (3,3) after {1, 3} -> c = 1, 2; n1 = n2 = 1 -> D = 1/3
    assert m.discounts[1] == pytest.approx((1 / 3,) * 3)
    # unigram continuation: 3 after {1, 3} -> c = 2; n1 = 0 -> DEFAULT_DISCOUNT
    assert m.discounts[0] == (DEFAULT_DISCOUNT,) * 3
    p1 = (2 - 0.75) / 2 + (0.75 / 2) / V  # P_1(3)
    p2 = (2 - 1 / 3) / 2 + (1 / 3) / 2 * p1  # P_2(3 | 3): c(3,3) = 2 of c(3 .) = 2
    p3 = (1 - 1) / 1 + 1.0 * p2  # P_3(3 | 3 3): D = 1 hands all its mass down
    assert m.prob([BOS, 3, 3], 3) == pytest.approx(p3)
    assert m.prob([BOS], 3) == pytest.approx((1 - 1) + 1.0 * ((1 - 1 / 3) / 1 + (1 / 3) * p1))  # context (1, 1)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one_and_match_prob(order):
    rng = np.random.default_rng(order)
    corpus = [[BOS] + rng.integers(2, 12, size=rng.integers(1, 15)).tolist() + [EOS] for _ in range(30)]
    m = NGramLM.fit(corpus, 12, order)
    contexts = [[], [BOS], corpus[0][:3], corpus[1], [0, 0, 0], [BOS, 11, 11, 11, 11], rng.integers(0, 12, 6).tolist()]
    for ctx in contexts:
        d = m.distribution(ctx)
        assert d.shape == (12,) and (d > 0).all() and d.sum() == pytest.approx(1.0, abs=1e-12)
        assert [m.prob(ctx, w) for w in range(12)] == pytest.approx(d.tolist(), rel=1e-12)


def test_unseen_context_backs_off_to_the_lower_order():
    m3, m2 = NGramLM.fit(CORPUS, V, order=3), NGramLM.fit(CORPUS, V, order=2)
    # (5, 4) never occurs, so order 3 is the bigram level of the same counts (continuation counts there)
    assert m3.tables[2].get((5, 4)) is None
    for w in range(V):
        assert m3.prob([BOS, 5, 4], w) == pytest.approx(_lower(m3, 4, w))


def _lower(m: NGramLM, prev: int, w: int) -> float:
    """P_2(w | prev) of a trigram model, from its tables by the formula."""
    p1 = 1.0 / m.vocab_size
    u = m.tables[0][()]
    c = u.followers.get(w, 0)
    p1 = max(c - (m.discounts[0][min(c, 3) - 1] if c else 0), 0) / u.total + u.gamma * p1
    h = m.tables[1].get((prev,))
    if h is None:
        return p1
    c = h.followers.get(w, 0)
    return max(c - (m.discounts[1][min(c, 3) - 1] if c else 0), 0) / h.total + h.gamma * p1


def test_log_probs_score_from_start_with_the_whole_prefix_as_context():
    m = NGramLM.fit(CORPUS, V, order=3)
    seq = [BOS, 3, 4, EOS]
    lp = m.log_probs(seq, 2)
    assert lp.shape == (2,)
    assert lp.tolist() == pytest.approx([math.log(m.prob([BOS, 3], 4)), math.log(m.prob([BOS, 3, 4], EOS))])
    with pytest.raises(ValueError, match="start"):
        m.log_probs(seq, 0)
    with pytest.raises(ValueError, match="token id 9 is outside the vocabulary"):
        m.log_probs([BOS, 9], 1)
    with pytest.raises(ValueError, match="token id 7"):
        NGramLM.fit([[BOS, 7]], V)


def test_modified_discounts_by_hand_and_fallbacks():
    d = kn_discounts(Counter({1: 10, 2: 5, 3: 3, 4: 2}))  # Y = 10 / 20 = 0.5
    assert d == pytest.approx((1 - 2 * 0.5 * 5 / 10, 2 - 3 * 0.5 * 3 / 5, 3 - 4 * 0.5 * 2 / 3))
    assert kn_discounts(Counter({1: 4, 2: 1})) == (4 / 6,) * 3  # n3 = 0: Ney's single discount
    assert kn_discounts(Counter({1: 1, 2: 1, 3: 100, 4: 1})) == (1 / 3,) * 3  # D2 < 0: single
    assert kn_discounts(Counter({5: 3})) == (DEFAULT_DISCOUNT,) * 3  # no singletons


def test_more_context_helps_on_repetitive_text():
    corpus = [[BOS] + [3, 4, 5, 4, 6] * 5 + [EOS] for _ in range(3)]  # after 4: 5 or 6, decided by the token before
    seq = corpus[0]
    nll = [-NGramLM.fit(corpus, 8, n).log_probs(seq, 1).sum() for n in (1, 2, 3)]
    assert nll[0] > nll[1] > nll[2]
