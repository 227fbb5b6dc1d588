"""Top-k ranking metrics with binary gains, and the popularity baseline. Pure functions.

Terms, for one user u with ranked list r_u = (r_1, r_2, ...) and ground-truth set G_u:
    hit_j   = 1 if r_j is in G_u and r_j does not occur earlier in r_u, else 0 (a repeat never counts twice)
    Recall@k = (sum_{j<=k} hit_j) / |G_u|
    DCG@k    = sum_{j<=k} hit_j / log2(j + 1)
    IDCG@k   = sum_{j<=min(|G_u|, k)} 1 / log2(j + 1)      (all of G_u ranked first)
    NDCG@k   = DCG@k / IDCG@k
Each metric is the mean over the users with a non-empty G_u (NaN when there are none).

Ids are opaque integers: the evaluation compares SID rows, one per item, and -1 (no item) never matches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20)


def hit_matrix(ranked: Sequence[Sequence[int]], targets: Sequence[Collection[int]],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """ranked (U, >=k) ids best first; targets U ground-truth id sets.

    Returns hits (U, k) float64 (hit_j above) and sizes (U,) int64 = |G_u|."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists but {len(targets)} target sets")
    hits = np.zeros((len(ranked), k), dtype=np.float64)
    sizes = np.zeros(len(ranked), dtype=np.int64)
    for u, (row, gt) in enumerate(zip(ranked, targets)):
        gt = set(int(t) for t in gt)
        sizes[u] = len(gt)
        row = [int(r) for r in row[:k]]
        if len(row) < k:
            raise ValueError(f"user {u}: ranked list has {len(row)} ids, fewer than k={k}")
        seen: set[int] = set()
        for j, r in enumerate(row):
            if r in gt and r not in seen:
                hits[u, j] = 1.0
            seen.add(r)
    return hits, sizes


def _discounts(k: int) -> np.ndarray:
    """(k,) 1 / log2(j + 1) for ranks j = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _mean_over_users(values: np.ndarray, sizes: np.ndarray) -> float:
    keep = sizes > 0
    return float(values[keep].mean()) if keep.any() else float("nan")


def _recall_per_user(hits: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """hits (U, >=k), sizes (U,) -> (U,) Recall@k per user (0 where |G_u| = 0)."""
    return hits[:, :k].sum(axis=1) / np.maximum(sizes, 1)


def _ndcg_per_user(hits: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """hits (U, >=k), sizes (U,) -> (U,) NDCG@k per user (0 where |G_u| = 0)."""
    disc = _discounts(k)  # (k,)
    dcg = hits[:, :k] @ disc  # (U,)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])  # (k + 1,) IDCG for 0..k relevant items
    idcg = ideal_cum[np.minimum(sizes, k)]  # (U,)
    return dcg / np.where(idcg > 0, idcg, 1.0)


def recall_from_hits(hits: np.ndarray, sizes: np.ndarray, k: int) -> float:
    """hits (U, >=k), sizes (U,) -> mean Recall@k over users with ground truth."""
    return _mean_over_users(_recall_per_user(hits, sizes, k), sizes)


def ndcg_from_hits(hits: np.ndarray, sizes: np.ndarray, k: int) -> float:
    """hits (U, >=k), sizes (U,) -> mean NDCG@k over users with ground truth."""
    return _mean_over_users(_ndcg_per_user(hits, sizes, k), sizes)


def recall_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[Collection[int]], k: int) -> float:
    """Mean Recall@k = |top-k hits| / |G_u| over users with a non-empty G_u."""
    hits, sizes = hit_matrix(ranked, targets, k)
    return recall_from_hits(hits, sizes, k)


def ndcg_at_k(ranked: Sequence[Sequence[int]], targets: Sequence[Collection[int]], k: int) -> float:
    """Mean NDCG@k = DCG@k / IDCG@k (binary gains, IDCG over min(|G_u|, k)) over users with a non-empty G_u."""
    hits, sizes = hit_matrix(ranked, targets, k)
    return ndcg_from_hits(hits, sizes, k)


def ranking_metrics(ranked: Sequence[Sequence[int]], targets: Sequence[Collection[int]],
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """{"recall@k": ..., "ndcg@k": ...} for every k in ks; the lists need max(ks) ids each."""
    hits, sizes = hit_matrix(ranked, targets, max(ks))
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_from_hits(hits, sizes, k)
        out[f"ndcg@{k}"] = ndcg_from_hits(hits, sizes, k)
    return out


def per_user_metrics(ranked: Sequence[Sequence[int]], targets: Sequence[Collection[int]],
                     k: int) -> dict[str, np.ndarray]:
    """{"recall@k": (U',), "ndcg@k": (U',)} per user, over the U' users with a non-empty G_u, in input
    order: the values whose means are `recall_at_k` / `ndcg_at_k` (for confidence intervals over users)."""
    hits, sizes = hit_matrix(ranked, targets, k)
    keep = sizes > 0  # (U,)
    return {f"recall@{k}": _recall_per_user(hits, sizes, k)[keep],
            f"ndcg@{k}": _ndcg_per_user(hits, sizes, k)[keep]}


def popularity_ranking(train: list[list[int]], num_items: int, k: int) -> list[int]:
    """The k items occurring most often in the training sequences (every occurrence counts), most
    frequent first; ties, and items never seen, in increasing item id."""
    counts = Counter(i for seq in train for i in seq)
    order = sorted(range(num_items), key=lambda i: (-counts[i], i))
    return order[:k]


def dedup(ids: Sequence[int]) -> list[int]:
    """ids with repeats removed, first occurrence kept, order kept."""
    return list(dict.fromkeys(int(i) for i in ids))
