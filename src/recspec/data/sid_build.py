"""Building semantic IDs for a catalogue without an index: residual k-means (RQ-KMeans) over item
vectors factorised from the co-occurrence of items in the training sequences.

The codebooks are sized from the catalogue (`codebook_for`): c codes per level with c^L at least
CODEBOOK_HEADROOM times the items. Level-by-level k-means still crowds popular regions, so the last
level is assigned capacity-aware: the items sharing their first L-1 codes take distinct last codes
where the codebook has room (the closest item-code pairs first). Items that still share a SID are
told apart by the disambiguating level of `resolve_collisions`; `collision_stats` reports the share.
"""

from __future__ import annotations

import numpy as np

from recspec.data.sids import DEFAULT_PREFIXES, SIDIndex, resolve_collisions
from recspec.errors import DataError

# c^levels >= CODEBOOK_HEADROOM * items. Measured with 3 levels (item vectors from co-occurrence,
# seed 0): headroom 4 leaves 4.9% (ML-100K) / 4.1% (Office) of the items on a disambiguating code,
# headroom 8 leaves 1.6% / 1.6%, so the default stays well under 5% on catalogues of this kind.
CODEBOOK_HEADROOM = 8


# --- k-means -----------------------------------------------------------------------------------------
def _kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding. x: (N, D) -> centroids (k, D)."""
    centroids = np.empty((k, x.shape[1]), dtype=x.dtype)
    centroids[0] = x[rng.integers(len(x))]
    d2 = ((x - centroids[0]) ** 2).sum(axis=1)  # (N,) squared distance to the nearest centroid
    for j in range(1, k):
        total = d2.sum()
        # all points already sit on centroids (duplicates): any point will do
        pick = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=d2 / total)
        centroids[j] = x[pick]
        d2 = np.minimum(d2, ((x - centroids[j]) ** 2).sum(axis=1))
    return centroids


def _sq_dist(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared distances. x: (N, D), centroids: (k, D) -> (N, k)."""
    return (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid. x: (N, D), centroids: (k, D) -> labels (N,) int64, squared distances (N,)."""
    d2 = _sq_dist(x, centroids)  # (N, k)
    labels = d2.argmin(axis=1)
    return labels, np.maximum(d2[np.arange(len(x)), labels], 0.0)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding, deterministic given `seed`.

    x: (N, D) float. Returns centroids (k', D) and labels (N,) int64, k' = min(k, N). An empty cluster
    is re-seeded with the point farthest from its centroid."""
    x = np.asarray(x, dtype=np.float64)
    k = min(k, len(x))
    rng = np.random.default_rng(seed)
    centroids = _kmeans_pp_init(x, k, rng)
    labels, d2 = _assign(x, centroids)
    for _ in range(iters):
        counts = np.bincount(labels, minlength=k)  # (k,)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        for j in np.flatnonzero(~filled):
            far = int(d2.argmax())  # host-side loop over the (rare) empty clusters
            centroids[j], d2[far] = x[far], 0.0
        new_labels, d2 = _assign(x, centroids)
        if np.array_equal(new_labels, labels) and filled.all():
            break
        labels = new_labels
    return centroids, labels



# --- residual k-means SIDs ---------------------------------------------------------------------------
def codebook_for(num_items: int, levels: int) -> int:
    """Codes per level for a catalogue: the smallest c >= 2 with c**levels >= CODEBOOK_HEADROOM * num_items."""
    if num_items < 1 or levels < 1:
        raise DataError(f"need at least one item and one level, got {num_items} items and {levels} levels")
    want = CODEBOOK_HEADROOM * num_items
    c = max(2, int(round(want ** (1.0 / levels))))
    while c**levels < want:
        c += 1
    while c > 2 and (c - 1) ** levels >= want:
        c -= 1
    return c


def _distinct_codes(d2: np.ndarray) -> np.ndarray:
    """Last-level codes of one group of items that share their earlier codes: min(g, c) items take
    distinct codes, the closest (item, code) pairs first; any others take their nearest code.
    d2: (g, c) squared distances to the level's centroids -> (g,) int64."""
    g, c = d2.shape
    codes = np.full(g, -1, dtype=np.int64)
    used = np.zeros(c, dtype=bool)
    left = min(g, c)
    for flat in np.argsort(d2, axis=None, kind="stable").tolist():  # host loop, at most g * c pairs
        item, code = divmod(flat, c)
        if codes[item] < 0 and not used[code]:
            codes[item], used[code] = code, True
            left -= 1
            if left == 0:
                break
    rest = codes < 0
    codes[rest] = d2[rest].argmin(axis=1)
    return codes


def _capacity_aware_codes(residual: np.ndarray, centroids: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Last-level codes, distinct within each group of items with the same earlier codes.
    residual: (I, D), centroids: (c, D), prefix: (I, L-1) codes of the levels before -> (I,) int64."""
    d2 = _sq_dist(residual, centroids)  # (I, c)
    keys = prefix if prefix.shape[1] else np.zeros((len(prefix), 1), np.int64)  # one level: one group
    _, group = np.unique(keys, axis=0, return_inverse=True)
    order = np.argsort(group.reshape(-1), kind="stable")  # items grouped, by id inside a group
    bounds = np.flatnonzero(np.diff(group.reshape(-1)[order])) + 1
    codes = np.empty(len(residual), dtype=np.int64)
    for members in np.split(order, bounds):
        codes[members] = _distinct_codes(d2[members])
    return codes


def build_sids(
    item_vectors: np.ndarray, levels: int = 3, codebook_size: int = 0, seed: int = 0, iters: int = 20
) -> SIDIndex:
    """Semantic IDs by residual k-means: level 0 clusters the vectors, level l the residuals left by
    the centroids of levels < l; the last level is capacity-aware (see the module docstring).
    item_vectors: (I, D) float; codebook_size 0: `codebook_for(I, levels)`.

    Items that still share all `levels` codes get the disambiguating level (`resolve_collisions`);
    otherwise the SID keeps `levels` codes. level_sizes are max code + 1 per level, as `SIDIndex.load`
    computes them, so a built index and its saved copy have the same fingerprint."""
    x = np.asarray(item_vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"item vectors must be a non-empty (items, dim) array, got shape {x.shape}")
    if not 1 <= levels < len(DEFAULT_PREFIXES) or codebook_size < 0:
        raise DataError(f"need 1 <= levels < {len(DEFAULT_PREFIXES)} and codebook_size >= 0 (0: from the catalogue)")
    c = codebook_size or codebook_for(len(x), levels)
    residual = x.copy()  # (I, D)
    codes = np.zeros((len(x), levels), dtype=np.int64)  # (I, L)
    for level in range(levels):
        centroids, labels = kmeans(residual, c, seed=seed + level, iters=iters)
        if level == levels - 1:
            labels = _capacity_aware_codes(residual, centroids, codes[:, :level])
        codes[:, level] = labels
        residual -= centroids[labels]
    sizes = tuple(int(s) for s in codes.max(axis=0) + 1)
    return resolve_collisions(SIDIndex(codes=codes, level_sizes=sizes, prefixes=DEFAULT_PREFIXES[:levels]))


# --- item vectors from co-occurrence ------------------------------------------------------------------
def _cooccurrence(train: list[list[int]], num_items: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric item-item counts of pairs at most `window - 1` apart in a sequence, weighted 1/gap.

    Returns COO (rows (E,), cols (E,), counts (E,)) with unique (row, col) pairs."""
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in train]) if train else np.zeros(0, np.int64)
    seq = np.repeat(np.arange(len(train)), [len(s) for s in train])  # (N,) sequence of each position
    rows, cols, vals = [], [], []
    for gap in range(1, window):
        same = seq[gap:] == seq[:-gap]  # pairs inside one sequence
        a, b = items[:-gap][same], items[gap:][same]
        rows += [a, b]
        cols += [b, a]
        vals += [np.full(2 * len(a), 1.0 / gap)]
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    key = np.concatenate(rows) * num_items + np.concatenate(cols)  # (E',)
    uniq, inv = np.unique(key, return_inverse=True)
    counts = np.bincount(inv.reshape(-1), weights=np.concatenate(vals))
    return uniq // num_items, uniq % num_items, counts


def _ppmi(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, num_items: int) -> np.ndarray:
    """Positive PMI of each COO entry, context counts smoothed by ^0.75 (as in word2vec). -> (E,)"""
    row_sum = np.bincount(rows, weights=counts, minlength=num_items)  # (I,)
    ctx = row_sum**0.75
    pmi = np.log(counts * ctx.sum() / (row_sum[rows] * ctx[cols]))
    return np.maximum(pmi, 0.0)


def _spmm(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sparse (I, I) COO matrix times dense x (I, k) -> (I, k), one bincount per column."""
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        out[:, j] = np.bincount(rows, weights=vals * x[cols, j], minlength=len(x))
    return out


def _top_eigvecs(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, rank: int, seed: int) -> np.ndarray:
    """Randomized eigen-factorisation of a symmetric sparse (n, n) matrix M (Halko et al. 2011):
    range finder with 4 power iterations, then the top eigenvectors scaled by sqrt(max(lambda, 0)),
    i.e. the best positive semi-definite rank-`rank` fit, so dot products approximate M. -> (n, rank)"""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(_spmm(rows, cols, vals, rng.standard_normal((n, min(n, rank + 10)))))
    for _ in range(4):
        q, _ = np.linalg.qr(_spmm(rows, cols, vals, q))  # (n, rank + 10)
    small = q.T @ _spmm(rows, cols, vals, q)  # (rank + 10, rank + 10), symmetric
    lam, vec = np.linalg.eigh((small + small.T) / 2)
    top = np.argsort(-lam, kind="stable")[:rank]
    return (q @ vec[:, top]) * np.sqrt(np.maximum(lam[top], 0.0))


def item_vectors_from_interactions(
    train: list[list[int]],
    num_items: int,
    dim: int = 32,
    seed: int = 0,
    side_features: np.ndarray | None = None,
    window: int = 5,
    side_weight: float = 0.5,
) -> np.ndarray:
    """Item vectors for `build_sids` from training sequences: a rank-`dim` factorisation of the PPMI
    matrix of item pairs co-occurring within `window` consecutive items, rows L2-normalised.

    Items with no co-occurrence get a random unit vector (so cold items spread over the codes).
    side_features: (I, F) e.g. multi-hot genres; rows L2-normalised, scaled by `side_weight`, and
    concatenated. Returns (I, dim) or (I, dim + F) float32."""
    rows, cols, counts = _cooccurrence(train, num_items, window)
    vecs = np.zeros((num_items, dim))  # (I, dim)
    if len(rows):
        rank = min(dim, num_items)
        vecs[:, :rank] = _top_eigvecs(rows, cols, _ppmi(rows, cols, counts, num_items), num_items, rank, seed)
    norms = np.linalg.norm(vecs, axis=1)
    cold = norms < 1e-12
    vecs[cold] = np.random.default_rng(seed + 1).standard_normal((int(cold.sum()), dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    if side_features is not None:
        side = np.asarray(side_features, dtype=np.float64)
        if side.ndim != 2 or len(side) != num_items:
            raise DataError(f"side features must be ({num_items}, F), got shape {side.shape}")
        side = side / np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-12)
        vecs = np.concatenate([vecs, side_weight * side], axis=1)
    return vecs.astype(np.float32)
