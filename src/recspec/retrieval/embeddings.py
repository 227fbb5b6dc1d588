"""Collaborative embeddings of items and users from interactions alone, for grouping and routing.

Items: the rank-d factorisation of the PPMI matrix of item pairs that co-occur within `window`
consecutive items of a training sequence (`recspec.data.sid_build.item_vectors_from_interactions`,
the vectors SIDs are built from):

    C[i, j] = sum over sequences, pairs (i at t, j at t + g), 1 <= g < window, of 1 / g   (symmetric)
    PPMI[i, j] = max(0, log(C[i, j] * sum_j c_j / (C_i * c_j))),   C_i = sum_j C[i, j],  c_j = C_j ** 0.75
    E = top-d eigenvectors of PPMI scaled by sqrt(eigenvalue)  (randomized, seeded),  e_i = E_i / ||E_i||

An item that co-occurs with nothing in training (never in a sequence of two or more items) has no
evidence: its row is zero, not random, so grouping and routing can tell it is cold (`has_embedding`).

Users: u = normalise(sum over the user's items with an embedding of e_i), i.e. the direction of the
mean of their items' embeddings; zero for a user none of whose items has one. The same function
embeds a test or new user from their history, so they route like the users the groups were fitted on.

Only training interactions go in: a split's `train` sequences (Beauty: the train period; Office: each
user's items but the last two, leave-one-out).
"""

from __future__ import annotations

import numpy as np

from recspec.data.sid_build import item_vectors_from_interactions
from recspec.errors import DataError

NORM_EPS = 1e-12  # rows with a smaller norm count as zero (no embedding)
WINDOW = 5  # co-occurrence window in items, as for the vectors SIDs are built from (sid_build)


def has_embedding(emb: np.ndarray) -> np.ndarray:
    """(N, d) -> (N,) bool: rows that are not zero."""
    return np.linalg.norm(np.asarray(emb, dtype=np.float64), axis=1) > NORM_EPS


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """(N, d) -> (N, d) float64, rows scaled to unit L2 norm; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return np.where(norms > NORM_EPS, x / np.maximum(norms, NORM_EPS), 0.0)


def _items_with_context(sequences: list[list[int]], num_items: int) -> np.ndarray:
    """(I,) bool: items in at least one sequence of two or more items (so with some co-occurrence)."""
    seen = np.zeros(num_items, dtype=bool)
    for seq in sequences:
        if len(seq) >= 2:
            seen[np.asarray(seq, dtype=np.int64)] = True
    return seen


def item_embeddings(
    sequences: list[list[int]], num_items: int, dim: int = 32, seed: int = 0, window: int = WINDOW
) -> np.ndarray:
    """Item embeddings from training sequences (module docstring): (I, dim) float32, unit rows,
    zero rows for items with no co-occurrence. Deterministic given `seed`."""
    if num_items < 1 or dim < 1 or window < 2:
        raise DataError(f"need num_items >= 1, dim >= 1, window >= 2; got {num_items}, {dim}, {window}")
    bad = [i for s in sequences for i in s if not 0 <= i < num_items]
    if bad:
        raise DataError(f"item id {bad[0]} is not in 0..{num_items - 1}")
    emb = np.asarray(item_vectors_from_interactions(sequences, num_items, dim=dim, seed=seed, window=window),
                     dtype=np.float64)  # (I, dim), unit rows (random ones for cold items)
    emb[~_items_with_context(sequences, num_items)] = 0.0
    return normalise_rows(emb).astype(np.float32)


def user_embeddings(sequences: list[list[int]], item_emb: np.ndarray) -> np.ndarray:
    """One row per sequence: the normalised sum of its items' embeddings (module docstring).
    sequences: U histories of item ids; item_emb: (I, d) -> (U, d) float32 (zero rows where no item
    of the history has an embedding, or the history is empty)."""
    item_emb = np.asarray(item_emb, dtype=np.float64)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)  # (U,)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences] + [np.zeros(0, np.int64)])  # (N,)
    if flat.size and (flat.min() < 0 or flat.max() >= len(item_emb)):
        raise DataError(f"item ids must be in 0..{len(item_emb) - 1}")
    owner = np.repeat(np.arange(len(sequences)), lengths)  # (N,) the sequence of each position
    sums = np.zeros((len(sequences), item_emb.shape[1]))  # (U, d)
    np.add.at(sums, owner, item_emb[flat])
    return normalise_rows(sums).astype(np.float32)
