"""Groupings for customized retrieval pools (spec: retrieval-drafting.md section 3): items grouped by
their category, items or users grouped by k-means over collaborative embeddings
(`recspec.retrieval.embeddings`), random groups of the same sizes (the control) and one global group.

A `Grouping` maps member ids (item ids, or user rows) to groups 0..G-1, numbered largest first.
Routing: a member with a group gets it; a member without one (cold start) goes to the group whose
centroid is nearest (Euclidean, the distance k-means assigns by) to its embedding; a member with no
embedding either (or a grouping without centroids) goes to the largest group, the pool most likely
to hold what an unknown request needs.

Embedding arrays are indexed by member id: row m of `emb` (M, d) is member m's; zero rows mean "no
embedding" (`embeddings.has_embedding`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from recspec.data.datasets import load_json
from recspec.data.sid_build import kmeans
from recspec.errors import DataError
from recspec.retrieval.embeddings import has_embedding, normalise_rows

CATEGORY_LEVELS = 2  # levels of the "A, B, C" categories string that name an item's group
KMEANS_ITERS = 50  # Lloyd iteration cap (stops earlier once the assignment is stable)
KMEANS_RESTARTS = 10  # seeded k-means++ restarts; the lowest within-cluster sum of squares is kept (sklearn's n_init)
PAPER_USER_CLUSTERS = 3  # the paper's k for user groups (KMeans over LightGCN embeddings)


@dataclass(frozen=True, eq=False)
class Grouping:
    """Members -> groups, with centroids for routing members that have no group."""

    name: str  # "category" | "kmeans" | "random" | "global"
    of: dict[int, int]  # member id -> group id in 0..G-1; groups numbered largest first
    centroids: np.ndarray | None  # (G, d) in the embedding space; a NaN row: a group that cannot be routed to
    labels: tuple[str, ...] = ()  # (G,) a name per group where groups have names (categories), else ()

    def __post_init__(self):
        groups = set(self.of.values())
        if groups != set(range(len(groups))):
            raise DataError(f"{self.name}: group ids must be 0..G-1 with no empty group, got {sorted(groups)[:8]}")
        if self.centroids is not None and self.centroids.shape[0] != len(groups):
            raise DataError(f"{self.name}: {self.centroids.shape[0]} centroids for {len(groups)} groups")
        if self.labels and len(self.labels) != len(groups):
            raise DataError(f"{self.name}: {len(self.labels)} labels for {len(groups)} groups")

    @property
    def num_groups(self) -> int:
        return len(self.sizes)

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        """(G,) members per group."""
        return tuple(int(n) for n in np.bincount(np.fromiter(self.of.values(), np.int64, len(self.of))))

    @functools.cached_property
    def groups_by_size(self) -> tuple[int, ...]:
        """Group ids, largest group first (ties: lower id first)."""
        return tuple(sorted(range(len(self.sizes)), key=lambda g: (-self.sizes[g], g)))

    @functools.cached_property
    def _members(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in self.sizes]
        for m in sorted(self.of):
            out[self.of[m]].append(m)
        return tuple(tuple(ms) for ms in out)

    def members(self, g: int) -> tuple[int, ...]:
        """The member ids of group g, ascending."""
        return self._members[g]

    def nearest(self, embeddings: np.ndarray) -> np.ndarray:
        """Nearest routable centroid per row. embeddings: (N, d) -> (N,) int64 group ids.
        argmin_g ||x - c_g||^2; rows without an embedding, or no centroids: the largest group."""
        x = np.asarray(embeddings, dtype=np.float64).reshape(-1, np.shape(embeddings)[-1])  # (N, d)
        out = np.full(len(x), self.groups_by_size[0], dtype=np.int64)
        c = self.centroids
        if c is None or not np.isfinite(c).all(axis=1).any():
            return out
        if c.shape[1] != x.shape[1]:
            raise DataError(f"{self.name}: embeddings of dim {x.shape[1]}, centroids of dim {c.shape[1]}")
        d2 = ((x[:, None, :] - np.nan_to_num(c)[None]) ** 2).sum(-1)  # (N, G)
        d2[:, ~np.isfinite(c).all(axis=1)] = np.inf
        known = has_embedding(x)
        out[known] = d2[known].argmin(axis=1)
        return out

    def route(self, member_id: int, embedding: np.ndarray | None = None) -> int:
        """The group of a member; a member without one: `nearest(embedding)` (module docstring)."""
        if member_id in self.of:
            return self.of[member_id]
        if embedding is None:
            return self.groups_by_size[0]
        return int(self.nearest(np.asarray(embedding)[None])[0])


# --- building groupings ----------------------------------------------------------------------------
def group_centroids(members: np.ndarray, groups: np.ndarray, emb: np.ndarray, num_groups: int) -> np.ndarray:
    """Mean embedding per group over its members that have one; NaN rows for groups with none.
    members, groups: (N,) int64; emb: (M, d) indexed by member id -> (G, d) float64."""
    x = np.asarray(emb, dtype=np.float64)[members]  # (N, d)
    keep = has_embedding(x)
    sums = np.zeros((num_groups, x.shape[1]))
    np.add.at(sums, groups[keep], x[keep])
    counts = np.bincount(groups[keep], minlength=num_groups)[:, None]  # (G, 1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def make_grouping(name: str, members: np.ndarray, groups: np.ndarray, emb: np.ndarray | None = None,
                  labels: tuple[str, ...] = ()) -> Grouping:
    """A Grouping from raw group ids: empty groups dropped, the rest renumbered largest first (ties:
    lower raw id first); centroids from `emb` (`group_centroids`) where given.
    members, groups: (N,) ints; labels: a name per raw group id, or ()."""
    members, groups = np.asarray(members, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    if members.shape != groups.shape or len(np.unique(members)) != len(members) or len(members) == 0:
        raise DataError(f"{name}: need distinct member ids, one group each; got {members.shape} / {groups.shape}")
    counts = np.bincount(groups)  # (raw G,)
    order = [g for g in np.argsort(-counts, kind="stable") if counts[g] > 0]
    renumber = np.full(len(counts), -1, dtype=np.int64)
    renumber[order] = np.arange(len(order))
    new = renumber[groups]  # (N,)
    cents = None if emb is None else group_centroids(members, new, emb, len(order))
    names = tuple(labels[g] for g in order) if labels else ()
    return Grouping(name, dict(zip(members.tolist(), new.tolist())), cents, names)


def category_key(meta: dict, levels: int = CATEGORY_LEVELS) -> str:
    """The group name of an item: the first `levels` levels of its "A, B, C" categories string,
    split on "," and stripped, joined by ", " (a one-level string is its own group)."""
    parts = [p.strip() for p in str(meta.get("categories") or "").split(",")]
    return ", ".join(p for p in parts[:levels] if p)


def category_groups(item_meta: dict[int, dict], item_emb: np.ndarray | None = None,
                    levels: int = CATEGORY_LEVELS) -> Grouping:
    """Items grouped by `category_key`; centroids = mean collaborative embedding of each group's items
    (item_emb: (I, d) indexed by item id), so cold items route by embedding. A new item with known
    categories can be routed by name: `grouping.labels.index(category_key(meta))`."""
    items = sorted(item_meta)
    keys = [category_key(item_meta[i], levels) for i in items]
    names = tuple(sorted(set(keys)))
    raw = np.array([names.index(k) for k in keys], dtype=np.int64)  # (N,) raw id = rank of the name
    return make_grouping("category", np.array(items), raw, item_emb, names)


def read_item_meta(path: str | os.PathLike) -> dict[int, dict]:
    """An LC-Rec `<name>.item.json` {"ITEM": {title, description, brand, categories}} keyed by int id."""
    raw = load_json(os.fspath(path))
    bad = [k for k, v in raw.items() if not str(k).isdigit() or not isinstance(v, dict)]
    if bad:
        raise DataError(f"{path}: item {bad[0]!r}: expected an integer id and an object")
    return {int(k): v for k, v in raw.items()}


def best_kmeans(x: np.ndarray, k: int, seed: int, iters: int, restarts: int) -> np.ndarray:
    """Labels (N,) int64 of the best of `restarts` k-means runs over x (N, d): the lowest
    sum_i ||x_i - c_{label_i}||^2 (first run on ties). Run r is seeded by the r-th draw of rng(seed)."""
    best, best_sse = None, np.inf
    for run_seed in np.random.default_rng(seed).integers(2**31, size=max(restarts, 1)).tolist():
        centroids, labels = kmeans(x, k, seed=run_seed, iters=iters)  # (k', d), (N,)
        sse = float(((x - centroids[labels]) ** 2).sum())
        if sse < best_sse:
            best, best_sse = labels, sse
    return best


def kmeans_groups(emb: np.ndarray, k: int, seed: int = 0, iters: int = KMEANS_ITERS,
                  restarts: int = KMEANS_RESTARTS) -> Grouping:
    """Members 0..M-1 (the rows of emb (M, d)) clustered by k-means (k-means++ seeding, Lloyd, at most
    `iters` rounds, best of `restarts`, deterministic given `seed`) over the rows that have an
    embedding; the centroids are the clusters' means. Rows without an embedding go to the largest
    group (module docstring).

    k is the caller's: e.g. for items the number of category groups (so both groupings make as many
    pools), for users `PAPER_USER_CLUSTERS`. Empty clusters are dropped, so G <= k."""
    x = np.asarray(emb, dtype=np.float64)  # (M, d)
    keep = has_embedding(x)
    if k < 1 or not keep.any():
        raise DataError(f"k-means needs k >= 1 and some embedded rows; got k={k}, {int(keep.sum())} rows")
    labels = best_kmeans(x[keep], k, seed, iters, restarts)  # (M',)
    counts = np.bincount(labels)
    groups = np.full(len(x), int(np.argmax(counts)), dtype=np.int64)  # ties: lowest id, as make_grouping
    groups[keep] = labels
    return make_grouping("kmeans", np.arange(len(x)), groups, x)


def random_groups(grouping: Grouping, seed: int = 0, emb: np.ndarray | None = None) -> Grouping:
    """The control: the same members and group sizes, members dealt to groups by a seeded permutation
    (group g takes the next sizes[g] members of the permuted list). Centroids from emb (M, d) where given,
    else none (cold members then go to the largest group)."""
    members = np.array(sorted(grouping.of), dtype=np.int64)  # (N,)
    perm = np.random.default_rng(seed).permutation(members)
    groups = np.repeat(np.arange(grouping.num_groups), grouping.sizes)  # (N,) sizes in group order
    return make_grouping("random", perm, groups, emb)


def global_group(members: np.ndarray | range, emb: np.ndarray | None = None) -> Grouping:
    """Every member in one group: the global pool."""
    members = np.asarray(members, dtype=np.int64)
    return make_grouping("global", members, np.zeros(len(members), dtype=np.int64), emb)


# --- balance and quality ---------------------------------------------------------------------------
def within_group_cosine(grouping: Grouping, emb: np.ndarray) -> float:
    """Member-weighted mean pairwise cosine inside groups, over members with an embedding:

        s_g = sum_{i in g} e_i (unit rows),  cos_g = (||s_g||^2 - n_g) / (n_g (n_g - 1)),
        within = sum_g n_g cos_g / sum_g n_g     over groups with n_g >= 2 embedded members.

    emb: (M, d) indexed by member id. NaN where no group has two embedded members."""
    members = np.array(sorted(grouping.of), dtype=np.int64)  # (N,)
    groups = np.array([grouping.of[m] for m in members.tolist()], dtype=np.int64)
    x = normalise_rows(np.asarray(emb)[members])  # (N, d)
    keep = has_embedding(x)
    sums = np.zeros((grouping.num_groups, x.shape[1]))
    np.add.at(sums, groups[keep], x[keep])
    n = np.bincount(groups[keep], minlength=grouping.num_groups).astype(np.float64)  # (G,)
    ok = n >= 2
    if not ok.any():
        return float("nan")
    cos = ((sums[ok] ** 2).sum(1) - n[ok]) / (n[ok] * (n[ok] - 1))
    return float((n[ok] * cos).sum() / n[ok].sum())


@dataclass(frozen=True)
class GroupSummary:
    """How balanced a grouping is and how alike its groups' members are, beside the random control."""

    name: str
    num_groups: int  # G
    members: int  # N
    smallest: int  # min group size
    median: float  # median group size
    largest: int  # max group size
    effective_groups: float  # exp(-sum_g p_g log p_g), p_g = n_g / N: G when equal, 1 when one group holds all
    within_cosine: float  # `within_group_cosine` of this grouping
    random_cosine: float  # the same for `random_groups(grouping, seed)`: same sizes, members shuffled
    global_cosine: float  # the same for one group of all members (what a random grouping approaches)

    def line(self) -> str:
        return (f"{self.name:9s} G={self.num_groups:3d} N={self.members} sizes {self.smallest}/{self.median:g}/"
                f"{self.largest} (min/median/max) eff.G={self.effective_groups:.1f} cos within "
                f"{self.within_cosine:.3f} vs random {self.random_cosine:.3f} (global {self.global_cosine:.3f})")


def summarize(grouping: Grouping, emb: np.ndarray, seed: int = 0) -> GroupSummary:
    """The `GroupSummary` of a grouping; emb: (M, d) indexed by member id."""
    sizes = np.array(grouping.sizes, dtype=np.float64)  # (G,)
    p = sizes / sizes.sum()
    return GroupSummary(
        name=grouping.name, num_groups=grouping.num_groups, members=len(grouping.of),
        smallest=int(sizes.min()), median=float(np.median(sizes)), largest=int(sizes.max()),
        effective_groups=float(np.exp(-(p * np.log(p)).sum())),
        within_cosine=within_group_cosine(grouping, emb),
        random_cosine=within_group_cosine(random_groups(grouping, seed), emb),
        global_cosine=within_group_cosine(global_group(sorted(grouping.of)), emb),
    )
