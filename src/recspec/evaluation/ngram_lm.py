"""An interpolated modified Kneser-Ney n-gram language model over token ids: the count-based baseline a
trained text LM has to beat (evaluation/text_gate.py). Pure python + numpy.

Terms. Order n (default 3), vocabulary V (every id in [0, V)). Each training sequence is padded on the
left with n - 2 extra <bos> (it starts with one), so every token after the first has a full context of
n - 1 tokens; every token after the first is counted as predicted. h is a context, hw the n-gram h then w.

Counts per order k = 1..n:
    c_n(hw)  = how often hw occurs (raw counts, highest order)
    c_k(hw)  = N1+(. hw) = number of distinct tokens seen right before hw (continuation counts, k < n)
    c_k(h)   = sum_w c_k(hw);  N_j(h) = number of w with c_k(hw) = j (j = 1, 2) or >= 3 (j = 3)

Probability, built from the bottom (Chen & Goodman 1999, interpolated modified KN):
    P_0(w)      = 1 / V
    P_k(w | h)  = (c_k(hw) - D_k(c_k(hw))) / c_k(h) + gamma_k(h) * P_{k-1}(w | h')    if c_k(h) > 0
                = P_{k-1}(w | h')                                                    if c_k(h) = 0 (unseen)
    gamma_k(h)  = (D_k1 N_1(h) + D_k2 N_2(h) + D_k3 N_3(h)) / c_k(h)
where h' is h without its first token and D_k(0) = 0, D_k(1) = D_k1, D_k(2) = D_k2, D_k(c >= 3) = D_k3.
Each P_k(. | h) sums to 1 over the V ids: the discounted mass gamma_k(h) is handed down exactly.

Discounts per order from its counts-of-counts n_r (how many n-grams of order k have c_k = r):
    Y = n1 / (n1 + 2 n2),  D1 = 1 - 2 Y n2 / n1,  D2 = 2 - 3 Y n3 / n2,  D3 = 3 - 4 Y n4 / n3
Where those are undefined or outside (0, j] (tiny corpora), one discount D = n1 / (n1 + 2 n2) for all
three (Ney's), or DEFAULT_DISCOUNT where the order has no singletons. No tuning on held-out data, so
nothing but the training sequences decides the model.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recspec.data.vocab import BOS

DEFAULT_DISCOUNT = 0.75  # Kneser & Ney's customary value, where an order's counts give no estimate
Discounts = tuple[float, float, float]  # D1, D2, D3+


def kn_discounts(count_of_counts: Counter) -> Discounts:
    """{r: n_r} of one order -> (D1, D2, D3+) of modified KN, with the fallbacks of the module docstring."""
    n1, n2, n3, n4 = (count_of_counts.get(r, 0) for r in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) > 0:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(0 < dj <= j for j, dj in enumerate(d, start=1)):
            return d
    single = n1 / (n1 + 2 * n2) if n1 > 0 else DEFAULT_DISCOUNT
    return (single, single, single)


@dataclass(frozen=True)
class _Context:
    """One context h of one order: its followers and what the interpolation needs."""

    followers: dict[int, int]  # w -> c_k(hw) > 0
    total: int  # c_k(h)
    gamma: float  # gamma_k(h)


@dataclass(frozen=True)
class NGramLM:
    """Interpolated modified Kneser-Ney (module docstring). `tables[k - 1]` holds order k's contexts."""

    order: int  # n
    vocab_size: int  # V
    tables: tuple[dict[tuple[int, ...], _Context], ...]  # n dicts: context (k - 1 ids) -> its counts
    discounts: tuple[Discounts, ...]  # n triples (D1, D2, D3+), lowest order first

    @staticmethod
    def fit(sequences: Sequence[Sequence[int]], vocab_size: int, order: int = 3) -> "NGramLM":
        """Count every token after the first of each sequence (ids in [0, vocab_size))."""
        if order < 1 or vocab_size < 1:
            raise ValueError(f"order and vocab_size must be >= 1, got {order} and {vocab_size}")
        counts: list[Counter] = [Counter() for _ in range(order)]  # counts[k - 1]: k-gram -> c_k
        for s in sequences:
            padded = _padded(s, order, vocab_size)
            counts[-1].update(tuple(padded[t - order + 1:t + 1]) for t in range(order - 1, len(padded)))
        for k in range(order - 1, 0, -1):  # c_k(g) = distinct (k + 1)-gram types ending in g
            counts[k - 1].update(g[1:] for g in counts[k])
        discounts = tuple(kn_discounts(Counter(c.values())) for c in counts)
        tables = tuple(_contexts(c, d) for c, d in zip(counts, discounts))
        return NGramLM(order=order, vocab_size=vocab_size, tables=tables, discounts=discounts)

    def _orders(self, context: Sequence[int]):
        """(order k, its context's counts, None where unseen) for k = 1..n. The context is the last n - 1 ids
        before the token, <bos> repeated on the left where there are fewer (as in training)."""
        n = self.order
        last = [int(t) for t in context[max(len(context) - n + 1, 0):]]  # at most n - 1 ids
        ctx = tuple(([BOS] * (n - 1) + last)[len(last):])  # (n - 1,) ids
        for k in range(1, n + 1):
            yield k, self.tables[k - 1].get(ctx[n - k:])

    def prob(self, context: Sequence[int], token: int) -> float:
        """P_n(token | context): context is the sequence before the token, <bos> first (module docstring)."""
        p = 1.0 / self.vocab_size
        for k, h in self._orders(context):
            if h is not None:
                c = h.followers.get(token, 0)
                p = max(c - _discount(self.discounts[k - 1], c), 0.0) / h.total + h.gamma * p
        return p

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """(V,) float64 P_n(w | context) for every id w; sums to 1."""
        p = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for k, h in self._orders(context):
            if h is not None:
                ws = np.fromiter(h.followers, dtype=np.int64, count=len(h.followers))  # (m,) seen followers
                cs = np.fromiter(h.followers.values(), dtype=np.float64, count=len(h.followers))  # (m,)
                d = np.array(self.discounts[k - 1])[np.minimum(cs, 3).astype(np.int64) - 1]  # (m,)
                p = h.gamma * p
                p[ws] += (cs - d).clip(min=0.0) / h.total
        return p

    def log_probs(self, sequence: Sequence[int], start: int) -> np.ndarray:
        """(len - start,) natural-log P_n(sequence[t] | sequence[:t]) for t = start .. len - 1 (start >= 1)."""
        if not 1 <= start <= len(sequence):
            raise ValueError(f"start must be in [1, {len(sequence)}], got {start}")
        seq, n = _padded(sequence, 1, self.vocab_size), self.order  # ids checked, no padding
        return np.array([math.log(self.prob(seq[max(t - n + 1, 0):t], seq[t])) for t in range(start, len(seq))],
                        dtype=np.float64)


def _discount(d: Discounts, c: int) -> float:
    return 0.0 if c == 0 else d[min(c, 3) - 1]


def _padded(sequence: Sequence[int], order: int, vocab_size: int) -> list[int]:
    """[<bos>] * (order - 2) + sequence (as ints, each checked to be in [0, vocab_size))."""
    seq = [int(t) for t in sequence]
    bad = [t for t in seq if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return [BOS] * max(order - 2, 0) + seq


def _contexts(counts: Counter, d: Discounts) -> dict[tuple[int, ...], _Context]:
    """k-gram -> c_k for one order -> context -> (followers, c_k(h), gamma_k(h))."""
    followers: dict[tuple[int, ...], dict[int, int]] = defaultdict(dict)
    for g, c in counts.items():
        followers[g[:-1]][g[-1]] = c
    out = {}
    for h, f in followers.items():
        total = sum(f.values())
        mass = sum(d[min(c, 3) - 1] for c in f.values())  # D1 N1(h) + D2 N2(h) + D3 N3+(h)
        out[h] = _Context(followers=f, total=total, gamma=mass / total)
    return out
