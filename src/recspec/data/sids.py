"""Semantic IDs: every item is L codes, one per level, each level its own codebook.

The on-disk format is the LC-Rec / AtSpeed json index:
    {"0": ["<a_47>", "<b_103>", "<c_234>", "<d_99>"], "1": [...], ...}
keys are 0-based item ids, values the item's code tokens, level l written `<{prefix_l}_{code}>`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from recspec.errors import DataError

_TOKEN = re.compile(r"^<([A-Za-z]+)_(\d+)>$")
DEFAULT_PREFIXES = tuple("abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, eq=False)
class SIDIndex:
    """Item id -> codes. Items are 0..num_items-1."""

    codes: np.ndarray  # (I, L) int64, codes[i, l] in [0, level_sizes[l])
    level_sizes: tuple[int, ...]  # codebook size per level (max code + 1, at least)
    prefixes: tuple[str, ...]  # token prefix per level, e.g. ("a", "b", "c", "d")

    def __post_init__(self) -> None:
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.level_sizes):
            raise DataError(f"SID codes must be (items, {len(self.level_sizes)}), got {self.codes.shape}")
        if len(self.prefixes) != len(self.level_sizes):
            raise DataError("one token prefix per SID level is needed")

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_levels(self) -> int:
        return int(self.codes.shape[1])

    def tokens(self, item: int) -> list[str]:
        """The item's SID as strings, e.g. ['<a_47>', '<b_103>', ...]."""
        return [f"<{p}_{int(c)}>" for p, c in zip(self.prefixes, self.codes[item])]

    def sid_string(self, item: int) -> str:
        return "".join(self.tokens(item))

    def collisions(self) -> int:
        """Number of items whose SID another item (with a smaller id) already has."""
        return self.num_items - len(np.unique(self.codes, axis=0))

    def fingerprint(self) -> str:
        """A short stable hash of the codes, stored with checkpoints to catch a mismatched index."""
        import hashlib

        h = hashlib.sha256(np.ascontiguousarray(self.codes, dtype=np.int64).tobytes())
        h.update(repr((self.level_sizes, self.prefixes)).encode())
        return h.hexdigest()[:16]

    # --- io -------------------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike) -> "SIDIndex":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: SID index file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: not valid json ({e.msg})") from None
        if not isinstance(raw, dict) or not raw:
            raise DataError(f"{path}: expected a non-empty json object {{item: [tokens...]}}")
        return SIDIndex.from_tokens(raw, source=path)

    @staticmethod
    def from_tokens(raw: dict, source: str = "<index>") -> "SIDIndex":
        try:
            ids = sorted(int(k) for k in raw)
        except ValueError:
            bad = next(k for k in raw if not str(k).lstrip("-").isdigit())
            raise DataError(f"{source}: item key {bad!r} is not an integer id") from None
        if ids[0] != 0 or ids[-1] != len(ids) - 1:
            raise DataError(f"{source}: item ids must be 0..{len(ids) - 1} without gaps")
        first = raw[str(ids[0])] if str(ids[0]) in raw else raw[ids[0]]
        num_levels = len(first)
        codes = np.zeros((len(ids), num_levels), dtype=np.int64)
        prefixes: list[str] | None = None
        for key, toks in raw.items():
            item = int(key)
            if not isinstance(toks, list) or len(toks) != num_levels:
                raise DataError(f"{source}: item {key}: expected {num_levels} SID tokens, got {toks!r}")
            pre = []
            for level, tok in enumerate(toks):
                m = _TOKEN.match(str(tok))
                if not m:
                    raise DataError(f"{source}: item {key}: token {tok!r} is not of the form <x_N>")
                pre.append(m.group(1))
                codes[item, level] = int(m.group(2))
            if prefixes is None:
                prefixes = pre
            elif pre != prefixes:
                raise DataError(f"{source}: item {key}: level prefixes {pre} differ from {prefixes}")
        level_sizes = tuple(int(s) for s in codes.max(axis=0) + 1)
        return SIDIndex(codes=codes, level_sizes=level_sizes, prefixes=tuple(prefixes or ()))

    def to_tokens(self) -> dict[str, list[str]]:
        return {str(i): self.tokens(i) for i in range(self.num_items)}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half an index."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_tokens(), f)
        os.replace(tmp, path)


# --- building SIDs: residual k-means (RQ-KMeans) ----------------------------------------------------
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


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid. x: (N, D), centroids: (k, D) -> labels (N,) int64, squared distances (N,)."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]  # (N, k)
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


def _dedup_level(codes: np.ndarray) -> np.ndarray:
    """TIGER-style extra code: each item's rank among the items sharing its codes (0 for the first,
    by item id). codes: (I, L) -> (I,) int64."""
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)  # (I,) group id per item
    order = np.argsort(group, kind="stable")  # items grouped, by id inside a group
    starts = np.searchsorted(group[order], group[order], side="left")  # (I,) first slot of the group
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - starts
    return rank


def build_sids(
    item_vectors: np.ndarray, levels: int = 3, codebook_size: int = 64, seed: int = 0, iters: int = 20
) -> SIDIndex:
    """Semantic IDs by residual k-means: level 0 clusters the vectors, level l the residuals left by
    the centroids of levels < l. item_vectors: (I, D) float.

    Items sharing all `levels` codes get one extra level (their rank in the group, TIGER-style), so
    every SID is unique; without collisions the SID keeps `levels` codes. level_sizes are max code + 1
    per level (the codebook size where every cluster is used), as `SIDIndex.load` computes them, so
    a built index and its saved copy have the same fingerprint."""
    x = np.asarray(item_vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"item vectors must be a non-empty (items, dim) array, got shape {x.shape}")
    if not 1 <= levels < len(DEFAULT_PREFIXES) or codebook_size < 1:
        raise DataError(f"need 1 <= levels < {len(DEFAULT_PREFIXES)} and codebook_size >= 1")
    residual = x.copy()  # (I, D)
    codes = np.zeros((len(x), levels), dtype=np.int64)  # (I, L)
    for level in range(levels):
        centroids, labels = kmeans(residual, codebook_size, seed=seed + level, iters=iters)
        codes[:, level] = labels
        residual -= centroids[labels]
    rank = _dedup_level(codes)
    if rank.max() > 0:
        codes = np.concatenate([codes, rank[:, None]], axis=1)  # (I, L + 1)
    sizes = tuple(int(s) for s in codes.max(axis=0) + 1)
    return SIDIndex(codes=codes, level_sizes=sizes, prefixes=DEFAULT_PREFIXES[: codes.shape[1]])


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
