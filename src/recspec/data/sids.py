"""Semantic IDs: every item is L codes, one per level, each level its own codebook.

The on-disk format is the LC-Rec / AtSpeed json index:
    {"0": ["<a_47>", "<b_103>", "<c_234>", "<d_99>"], "1": [...], ...}
keys are 0-based item ids, values the item's code tokens, level l written `<{prefix_l}_{code}>`.

Every item has its own SID. An index where several items share one SID (a collision) gets one more
level when it is loaded, the disambiguating level, written `<dup_N>`: N = 0 for an item alone on its
SID, 0..g-1 (by item id) inside a group of g items sharing one. A saved index holds that level, so it
loads back to the same codes and fingerprint; an index without collisions is left as it is.
(Building SIDs: `recspec.data.sid_build`.)
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
DISAMBIGUATION_PREFIX = "dup"  # token prefix of the disambiguating level appended to colliding indexes


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

    @property
    def disambiguated(self) -> bool:
        """Whether the last level is the disambiguating level `resolve_collisions` appends."""
        return self.num_levels > 1 and self.prefixes[-1] == DISAMBIGUATION_PREFIX

    def fingerprint(self) -> str:
        """A short stable hash of the codes, stored with checkpoints to catch a mismatched index."""
        import hashlib

        h = hashlib.sha256(np.ascontiguousarray(self.codes, dtype=np.int64).tobytes())
        h.update(repr((self.level_sizes, self.prefixes)).encode())
        return h.hexdigest()[:16]

    # --- io -------------------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike) -> "SIDIndex":
        """Read a json index; items sharing a SID are told apart by `resolve_collisions`."""
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
        return resolve_collisions(SIDIndex.from_tokens(raw, source=path), source=path)

    @staticmethod
    def from_tokens(raw: dict, source: str = "<index>") -> "SIDIndex":
        """The index as `raw` writes it, collisions kept (`load` resolves them)."""
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


# --- collisions ---------------------------------------------------------------------------------------
def rank_in_group(codes: np.ndarray) -> np.ndarray:
    """Each item's rank among the items sharing its codes (0 for the first, by item id).
    codes: (I, L) -> (I,) int64."""
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)  # (I,) group id per item
    order = np.argsort(group, kind="stable")  # items grouped, by id inside a group
    starts = np.searchsorted(group[order], group[order], side="left")  # (I,) first slot of the group
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - starts
    return rank


def resolve_collisions(index: SIDIndex, source: str = "<index>") -> SIDIndex:
    """The index with one disambiguating level appended where items share a SID (see the module
    docstring); the index itself where every SID is unique. Its codebook size is the largest group."""
    if index.collisions() == 0:
        return index
    if index.disambiguated:
        raise DataError(f"{source}: {index.collisions()} items share a SID although the last level "
                        f"<{DISAMBIGUATION_PREFIX}_N> should tell them apart; remove that level or fix it")
    rank = rank_in_group(index.codes)  # (I,)
    codes = np.concatenate([index.codes, rank[:, None]], axis=1)  # (I, L + 1)
    return SIDIndex(codes=codes, level_sizes=(*index.level_sizes, int(rank.max()) + 1),
                    prefixes=(*index.prefixes, DISAMBIGUATION_PREFIX))


@dataclass(frozen=True)
class LevelStats:
    """How one SID level is used."""

    prefix: str  # token prefix
    tokens: int  # codebook size in the vocabulary (max code + 1)
    codes_used: int  # distinct codes that some item has
    fanout_mean: float  # mean number of codes (children) under each distinct prefix of the levels before
    fanout_max: int  # the most codes under one prefix


@dataclass(frozen=True)
class CollisionStats:
    """Items that shared a SID before the disambiguating level (the whole SID where there is none)."""

    shared_sids: int  # SIDs held by more than one item
    items_on_shared_sids: int  # items on those SIDs
    largest_group: int  # most items on one SID (1: no collision)
    disambiguated_items: int  # items with a non-zero disambiguating code (all but the first of each group)
    disambiguated_share: float  # disambiguated_items / items
    action: str  # what was done about them


def level_stats(index: SIDIndex) -> list[LevelStats]:
    """Codes used and fan-out (children per prefix) of every level."""
    out = []
    for level in range(index.num_levels):
        pairs = np.unique(index.codes[:, : level + 1], axis=0)  # (P, level + 1) distinct prefixes
        parents = pairs[:, :level] if level else np.zeros((len(pairs), 1), np.int64)  # the root: one parent
        _, fanout = np.unique(parents, axis=0, return_counts=True)  # children per parent prefix
        out.append(LevelStats(prefix=index.prefixes[level], tokens=int(index.level_sizes[level]),
                              codes_used=len(np.unique(index.codes[:, level])),
                              fanout_mean=round(float(fanout.mean()), 3), fanout_max=int(fanout.max())))
    return out


def collision_stats(index: SIDIndex) -> CollisionStats:
    """Collisions of the codes before the disambiguating level, and what resolving them did."""
    base = index.codes[:, :-1] if index.disambiguated else index.codes  # (I, L')
    _, counts = np.unique(base, axis=0, return_counts=True)  # items per distinct SID
    shared = counts[counts > 1]
    moved = int((shared - 1).sum())
    if index.collisions():
        action = "not resolved: this index was not read by SIDIndex.load; call resolve_collisions"
    elif index.disambiguated:
        action = (f"appended level <{DISAMBIGUATION_PREFIX}_N> ({index.level_sizes[-1]} codes): 0 for an item "
                  "alone on its SID, 0..g-1 by item id in a group of g")
    else:
        action = "none: every item has its own SID"
    return CollisionStats(shared_sids=len(shared), items_on_shared_sids=int(shared.sum()),
                          largest_group=int(counts.max()), disambiguated_items=moved,
                          disambiguated_share=round(moved / index.num_items, 6), action=action)
