"""Training windows: users' sequences cut into fixed-size, overlapping token sequences with a loss mask.

A user's items x_0 .. x_{n-1} are cut into windows of up to W = `window_items` items starting at
items 0, S, 2S, ... (S = `window_stride`, 1 <= S < W) until a window reaches the end. Each window is
written as `<bos> x_s <eos> x_{s+1} <eos> ...` (L code tokens per item). Item x_j (j >= 1) is a
target exactly once: in the earliest window that holds it with at least one item before it, where
its L codes and its `<eos>` carry the loss. So every item after the first is predicted once, from
up to W - 1 items of history (at least W - S items once past the first window), like an
evaluation prompt of the last HISTORY_LEN items.

Labels are aligned with the inputs: labels[t] = tokens[t + 1] where that token is a target, else
IGNORE; logits[:, t] are scored against labels[:, t].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recspec.data.sids import SIDIndex
from recspec.data.vocab import PAD, Vocab, sequence_tokens

IGNORE = -100  # label of positions without loss (cross_entropy's ignore_index)


@dataclass(frozen=True)
class Windows:
    tokens: torch.Tensor  # (N, Tmax) int64 right-padded with PAD
    labels: torch.Tensor  # (N, Tmax) int64 next-token ids, IGNORE where no loss
    lengths: torch.Tensor  # (N,) int64 real tokens per window

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (b,) -> tokens, labels (b, T) cut to the longest window among them."""
        T = int(self.lengths[rows].max())  # host sync: batch shape
        return self.tokens[rows, :T], self.labels[rows, :T]


def window_spans(n: int, window_items: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows of an n-item sequence as (start, end, first target) item indices: the window holds
    items [start, end) and is the target window of items [first target, end). Windows without a
    target are left out."""
    if not 1 <= stride < window_items:
        raise ValueError(f"window_stride must be in [1, window_items); got {stride} with window_items {window_items}")
    spans, covered = [], 1  # items [1, covered) are targets already
    start = 0
    while covered < n:
        end = min(start + window_items, n)
        first = max(covered, start + 1)
        if first < end:
            spans.append((start, end, first))
            covered = end
        start += stride
    return spans


def window_labels(tokens: list[int], first_target: int, num_levels: int) -> list[int]:
    """Labels of one window's tokens whose items from window position `first_target` on are targets."""
    per_item = num_levels + 1  # L codes + <eos>
    labels = [IGNORE] * len(tokens)
    for t in range(first_target * per_item, len(tokens) - 1):  # token t + 1 is a target's code or <eos>
        labels[t] = tokens[t + 1]
    return labels


def build_windows(sequences: list[list[int]], vocab: Vocab, index: SIDIndex,
                  window_items: int, window_stride: int) -> Windows:
    """Every user's training windows, padded to the longest: (N, Tmax) tokens and labels."""
    rows: list[tuple[list[int], list[int]]] = []
    for u, seq in enumerate(sequences):
        for start, end, first in window_spans(len(seq), window_items, window_stride):
            toks = sequence_tokens(vocab, index, seq[start:end], where=f"training sequence {u}")
            rows.append((toks, window_labels(toks, first - start, vocab.num_levels)))
    T = max((len(t) for t, _ in rows), default=0)
    tokens = np.full((len(rows), T), PAD, dtype=np.int64)
    labels = np.full((len(rows), T), IGNORE, dtype=np.int64)
    for i, (t, lab) in enumerate(rows):
        tokens[i, :len(t)] = t
        labels[i, :len(lab)] = lab
    lengths = torch.tensor([len(t) for t, _ in rows], dtype=torch.int64)
    return Windows(tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels), lengths=lengths)


def bucketed_batches(lengths: torch.Tensor, batch_size: int, rng: np.random.Generator,
                     bucket_batches: int = 50) -> list[torch.Tensor]:
    """One epoch's batches of window rows: a random permutation cut into buckets of `bucket_batches`
    batches, each bucket sorted by length and cut into batches (little padding), then all batches
    shuffled. Deterministic given `rng`. -> list of (b,) int64 row tensors, b <= batch_size."""
    perm = rng.permutation(len(lengths))
    lens = lengths.numpy()
    chunk = batch_size * bucket_batches
    batches = []
    for s in range(0, len(perm), chunk):
        bucket = perm[s:s + chunk]
        bucket = bucket[np.argsort(lens[bucket], kind="stable")]
        batches += [bucket[b:b + batch_size] for b in range(0, len(bucket), batch_size)]
    order = rng.permutation(len(batches))
    return [torch.from_numpy(np.ascontiguousarray(batches[i])) for i in order]
