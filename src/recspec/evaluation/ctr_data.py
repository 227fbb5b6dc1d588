"""CTR examples from interaction sequences: leave-one-out positives and sampled negatives. Pure numpy.

For a user u with items s_1..s_n in time order (0-based item ids below I, no repeats needed):
    test positive    s_n         history s_1..s_{n-1}
    valid positive   s_{n-1}     history s_1..s_{n-2}
    train positives  s_t, t = 2..n-2, history s_1..s_{t-1}
A history keeps its last `history_len` items. A user with fewer than 3 items has no room for a valid and
a test positive: its s_2..s_n are train positives and it gives no evaluation example.

Every positive is followed by `k` negatives: items drawn uniformly from the items u never interacted with
(over the whole sequence, so a negative is never one of u's positives in any split), with replacement
across the k draws, each negative sharing its positive's user and history. Labels: 1 positive, 0 negative.
The negatives of the three splits come from three independent streams spawned from the seed
(`np.random.SeedSequence(seed).spawn(3)`), so one seed gives the same examples to every arm of a
comparison, and changing the train negatives' count leaves the valid and test negatives as they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recspec.errors import DataError

PAD = -1  # history padding (left), never an item id
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class CTRExamples:
    """N (user, history, candidate item, label) rows: each positive followed by its k negatives."""

    users: np.ndarray  # (N,) int64 row of the user in the interactions' order
    history: np.ndarray  # (N, L) int64 preceding items, most recent last, left-padded with PAD
    items: np.ndarray  # (N,) int64 candidate item
    labels: np.ndarray  # (N,) float32 1.0 positive, 0.0 sampled negative

    def __len__(self) -> int:
        return int(self.items.shape[0])


@dataclass(frozen=True)
class Positives:
    """The positives of one split, before negatives: P (user, history, item) rows."""

    users: np.ndarray  # (P,) int64
    history: np.ndarray  # (P, L) int64, PAD on the left
    items: np.ndarray  # (P,) int64


def _positions(n: int) -> dict[str, range]:
    """0-based positions of a length-n sequence's positives in each split (see the module docstring)."""
    if n < 3:
        return {"train": range(1, n), "valid": range(0), "test": range(0)}
    return {"train": range(1, n - 2), "valid": range(n - 2, n - 1), "test": range(n - 1, n)}


def split_positives(seqs: Sequence[Sequence[int]], history_len: int) -> dict[str, Positives]:
    """Per-user item sequences (time order) -> {"train" | "valid" | "test": Positives}."""
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    rows: dict[str, list[tuple[int, list[int], int]]] = {s: [] for s in SPLITS}
    for u, seq in enumerate(seqs):
        seq = [int(i) for i in seq]
        for split, positions in _positions(len(seq)).items():
            rows[split] += [(u, seq[max(0, t - history_len):t], seq[t]) for t in positions]
    out = {}
    for split, r in rows.items():
        hist = np.full((len(r), history_len), PAD, dtype=np.int64)  # (P, L)
        for j, (_, h, _) in enumerate(r):
            hist[j, history_len - len(h):] = h
        out[split] = Positives(users=np.array([x[0] for x in r], dtype=np.int64), history=hist,
                               items=np.array([x[2] for x in r], dtype=np.int64))
    return out


def seen_keys(seqs: Sequence[Sequence[int]], num_items: int) -> np.ndarray:
    """Sorted (S,) int64 keys u * I + i of every (user, item) interaction: the membership table."""
    keys = [u * num_items + int(i) for u, seq in enumerate(seqs) for i in seq]
    return np.unique(np.array(keys, dtype=np.int64))


def sample_negatives(users: np.ndarray, seen: np.ndarray, num_items: int, k: int,
                     rng: np.random.Generator) -> np.ndarray:
    """users (P,) -> (P, k) int64 items each user never interacted with (`seen`: `seen_keys`), uniform,
    by rejection: draws that hit a seen item are drawn again until none does."""
    neg = rng.integers(0, num_items, size=(users.shape[0], k))  # (P, k)
    bad = np.ones_like(neg, dtype=bool)
    while bad.any():
        keys = users[:, None] * num_items + neg  # (P, k)
        pos = np.searchsorted(seen, keys).clip(max=max(seen.size - 1, 0))
        bad = seen[pos] == keys if seen.size else np.zeros_like(keys, dtype=bool)
        neg[bad] = rng.integers(0, num_items, size=int(bad.sum()))
    return neg


def with_negatives(pos: Positives, seen: np.ndarray, num_items: int, k: int,
                   rng: np.random.Generator) -> CTRExamples:
    """Positives (P rows) -> CTRExamples of P * (1 + k) rows: each positive, then its k negatives."""
    neg = sample_negatives(pos.users, seen, num_items, k, rng)  # (P, k)
    items = np.concatenate([pos.items[:, None], neg], axis=1).reshape(-1)  # (P * (1 + k),)
    labels = np.zeros((pos.items.shape[0], 1 + k), dtype=np.float32)
    labels[:, 0] = 1.0
    return CTRExamples(users=np.repeat(pos.users, 1 + k), history=np.repeat(pos.history, 1 + k, axis=0),
                       items=items, labels=labels.reshape(-1))


def check_sequences(interactions: Mapping[str, Sequence[int]], num_items: int) -> list[list[int]]:
    """{user: items} -> the sequences in the mapping's order; DataError on an id outside 0..I-1 or a user
    who has interacted with every item (no negative to draw)."""
    seqs = [list(map(int, s)) for s in interactions.values()]
    for user, seq in zip(interactions, seqs):
        bad = [i for i in seq if not 0 <= i < num_items]
        if bad:
            raise DataError(f"user {user!r}: item id {bad[0]} is outside 0..{num_items - 1}")
        if len(set(seq)) >= num_items:
            raise DataError(f"user {user!r} interacted with all {num_items} items: no negative to sample")
    return seqs


def build_ctr_examples(interactions: Mapping[str, Sequence[int]], num_items: int, history_len: int,
                       negatives: dict[str, int], seed: int) -> dict[str, CTRExamples]:
    """{user: items in time order} -> {"train" | "valid" | "test": CTRExamples}; negatives: split -> k."""
    seqs = check_sequences(interactions, num_items)
    positives = split_positives(seqs, history_len)
    seen = seen_keys(seqs, num_items)
    streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
    return {s: with_negatives(positives[s], seen, num_items, negatives[s], np.random.default_rng(ss))
            for s, ss in zip(SPLITS, streams)}
