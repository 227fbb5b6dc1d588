"""Non-neural baselines: rankings of internal item ids from training sequences, no model.

- popularity: every user gets the most frequent training items (`metrics.popularity_ranking`).
- transitions: item-to-item counts within a short window. For every training sequence s and positions
  i < j with 1 <= j - i <= window, count[s_i][s_j] += 1 (a sequence a b c with window 2 counts a->b,
  a->c, b->c). A user with history h_1..h_n is scored, for every candidate b, by
      score(b) = sum_{t = max(1, n - last + 1)}^{n} count[h_t][b]
  a plain sum, not weighted by recency (an item twice among the last `last` counts twice). Candidates
  are ranked by score, ties by popularity; slots no candidate with a positive score fills take the
  remaining items in popularity order, so every list has k distinct items.
  Items of the user's history may be recommended: the ground truth of a period may repeat an earlier
  item, and the generative target does not exclude them by default either (`without_history` drops them,
  as `--exclude-history` does for the target).

The SASRec baseline is in `recspec.training.sasrec`; `recspec.training.fit_baselines` fits all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recspec.evaluation.metrics import popularity_ranking


@dataclass(frozen=True)
class Transitions:
    """Windowed item -> item counts as CSR (row a: the items that followed a), plus the popularity order."""

    indptr: np.ndarray  # (I + 1,) int64: row a's entries are indptr[a]:indptr[a + 1]
    indices: np.ndarray  # (nnz,) int64 following item b, increasing within a row
    counts: np.ndarray  # (nnz,) float64 count[a][b] > 0
    popularity: np.ndarray  # (I,) int64 items, most frequent in the fitted sequences first (ties: lower id)

    @property
    def num_items(self) -> int:
        return len(self.indptr) - 1

    def row(self, a: int) -> tuple[np.ndarray, np.ndarray]:
        """The items that followed item a (nnz_a,) and their counts (nnz_a,)."""
        s, e = self.indptr[a], self.indptr[a + 1]
        return self.indices[s:e], self.counts[s:e]

    def rank(self, histories: Sequence[Sequence[int]], k: int, last: int = 3) -> list[list[int]]:
        """Top-k items per history (see the module docstring): score = summed counts from the last `last`
        history items; ties and empty slots by popularity. -> U lists of k distinct item ids."""
        if not 1 <= k <= self.num_items:
            raise ValueError(f"k must be between 1 and the {self.num_items} items, got {k}")
        if last < 1:
            raise ValueError(f"last must be >= 1, got {last}")
        pop_pos = np.empty(self.num_items, dtype=np.int64)  # (I,) item -> its place in the popularity order
        pop_pos[self.popularity] = np.arange(self.num_items)
        return [self._rank_one(list(h)[-last:], k, pop_pos) for h in histories]

    def _rank_one(self, recent: list[int], k: int, pop_pos: np.ndarray) -> list[int]:
        rows = [self.row(a) for a in recent]
        cand = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64)  # (n,) with repeats
        vals = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
        items, inv = np.unique(cand, return_inverse=True)  # (m,) distinct candidates
        score = np.bincount(inv, weights=vals, minlength=len(items))  # (m,) summed counts
        top = items[np.lexsort((pop_pos[items], -score))][:k].tolist()  # score desc, then popularity
        return top + fill_by_popularity(self.popularity, set(top), k - len(top))


def fill_by_popularity(popularity: np.ndarray, taken: set[int], n: int) -> list[int]:
    """The first n items of the popularity order (I,) that are not in `taken`."""
    out: list[int] = []
    for item in popularity.tolist():
        if len(out) == n:
            break
        if item not in taken:
            out.append(item)
    return out


def transition_pairs(sequences: list[list[int]], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b) with a at position i and b at position j of one sequence, 1 <= j - i <= window.
    -> a (P,), b (P,) int64, one entry per occurrence."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64)  # (N,) all items, concatenated
    owner = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])  # (N,) sequence of each item
    firsts, seconds = [], []
    for d in range(1, window + 1):
        same = owner[:-d] == owner[d:]  # (N - d,) both ends in one sequence
        firsts.append(flat[:-d][same])
        seconds.append(flat[d:][same])
    return np.concatenate(firsts), np.concatenate(seconds)


def fit_transitions(sequences: list[list[int]], num_items: int, window: int = 3) -> Transitions:
    """Count windowed transitions (module docstring) into CSR; popularity from the same sequences."""
    a, b = transition_pairs(sequences, window)
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= num_items):
        raise ValueError(f"item ids must be in 0..{num_items - 1}")
    keys, counts = np.unique(a * num_items + b, return_counts=True)  # sorted by (a, b)
    rows = keys // num_items
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_items))]).astype(np.int64)
    popularity = np.asarray(popularity_ranking(sequences, num_items, num_items), dtype=np.int64)
    return Transitions(indptr=indptr, indices=(keys % num_items).astype(np.int64),
                       counts=counts.astype(np.float64), popularity=popularity)


def without_history(ranked: Sequence[Sequence[int]], histories: Sequence[Sequence[int]], k: int) -> list[list[int]]:
    """Each user's ranking with the items of their history dropped, cut to k. The rankings must be long
    enough: k + the number of distinct history items each (`history_margin`)."""
    out = []
    for u, (row, hist) in enumerate(zip(ranked, histories)):
        seen = set(hist)
        kept = [i for i in row if i not in seen][:k]
        if len(kept) < k:
            raise ValueError(f"user {u}: {len(kept)} items left after dropping the history, fewer than k={k}")
        out.append(kept)
    return out


def history_margin(histories: Sequence[Sequence[int]]) -> int:
    """The most distinct history items of any user: how much longer a ranking must be before `without_history`."""
    return max((len(set(h)) for h in histories), default=0)
