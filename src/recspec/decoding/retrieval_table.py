"""A retrieval pool compiled for the device: an open-addressing hash table from (group, context) to a
precomputed draft tree (LASER's retrieval drafting, `spec/retrieval-drafting.md`).

The research code walks a Python trie per step; here every context's tree is drafted once, on the host
(`recspec.retrieval`), and a step is a hash, a gather of P candidate keys per context order and a gather
of one (D, W) tree per row: fixed shapes, no host sync, so it runs inside a captured CUDA graph.

Keys. `key_hash(group, ctx)` mixes the group id, the context length n and the n tokens into a
non-negative int64 (the sign bit cleared), so every order c, c - 1, ..., 1 of every group lives in one
table and `EMPTY` (-1) can never be a key. Host code (Python ints, numpy) and device code (tensors) hash
alike. Two contexts with one hash (odds ~2^-63 per pair) would share a tree: a wrong draft, which
verification rejects, so speculation stays lossless.

Slots. A key lives within `probes` (P) slots of its home slot, home = hash mod H (linear probing, no
early stop): a lookup reads all P candidates and takes the one that holds its key, so a slot can be
emptied without tombstones. A key whose P slots are all taken is not stored (`find_slot` returns -1):
the builder counts it as dropped, and a lookup of that context falls back to a shorter one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

EMPTY = -1  # key of an empty slot; real keys are >= 0
DEFAULT_PROBES = 8  # slots a key may sit past its home: a lookup reads P keys per context order

_P = 1_000_003  # polynomial multiplier over the tokens
_GROUP = 0x9E3779B97F4A7C15 - (1 << 64)  # odd multiplier that spreads group ids (as a signed int64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 finaliser constants (signed int64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_POSITIVE = (1 << 63) - 1


def _mix(group, cols):
    """The hash on same-typed int64 arrays (numpy or torch): both wrap on overflow and shift
    arithmetically, so the two agree bit for bit. group (R,), cols n arrays (R,) -> (R,) >= 0."""
    h = group * _GROUP + len(cols)
    for t in cols:
        h = h * _P + (t + 1)
    return _finalise(h)


def _finalise(h):
    """splitmix64's finaliser, the sign bit cleared."""
    h = (h ^ (h >> 31)) * _MIX1
    h = (h ^ (h >> 29)) * _MIX2
    return (h ^ (h >> 32)) & _POSITIVE


def key_hash(group, ctx):
    """Key of (group, context of n tokens): n is ctx's last dimension.

    Tensors: group (...,) or a scalar, ctx (..., n) int64 -> (...,) int64 on ctx's device.
    Host: group an int or array, ctx a sequence of n ints -> an int; ctx (..., n) array -> (...,) array."""
    if isinstance(ctx, torch.Tensor):
        g = torch.as_tensor(group, dtype=torch.int64, device=ctx.device).expand(ctx.shape[:-1])
        return _mix(g, ctx.unbind(-1))
    arr = np.asarray(ctx, dtype=np.int64)
    n = arr.shape[-1]
    g = np.broadcast_to(np.asarray(group, dtype=np.int64), arr.shape[:-1]).reshape(-1)  # (R,): never 0-d,
    out = _mix(g, list(arr.reshape(-1, n).T))  # so numpy wraps silently as torch does
    return int(out[0]) if arr.ndim == 1 and np.ndim(group) == 0 else out.reshape(arr.shape[:-1])


def key_hashes(group: int, contexts: Sequence[Sequence[int]]) -> np.ndarray:
    """Host keys of R contexts of mixed lengths under one group -> (R,) int64 (hashed by length, batched)."""
    keys = np.zeros(len(contexts), dtype=np.int64)
    by_length: dict[int, list[int]] = {}
    for i, c in enumerate(contexts):
        by_length.setdefault(len(c), []).append(i)
    for n, rows in by_length.items():
        keys[rows] = key_hash(group, np.array([contexts[i] for i in rows], dtype=np.int64).reshape(len(rows), n))
    return keys


def find_slot(keys: list[int], key: int, probes: int) -> int:
    """Host-side placement. keys: the table's H keys as a list -> the slot within `probes` of key's
    home that holds `key`, else the first empty one, else -1 (the window is full: the key is dropped)."""
    H = len(keys)
    window = [(key % H + i) % H for i in range(probes)]
    for s in window:
        if keys[s] == key:
            return s
    return next((s for s in window if keys[s] == EMPTY), -1)


@dataclass(frozen=True, eq=False)
class TreeRows:
    """Rows to write into a table: R keys and their trees in the table's layout."""

    keys: torch.Tensor  # (R,) int64 key hashes (EMPTY: clear the slot)
    tokens: torch.Tensor  # (R, D, W) int64
    parents: torch.Tensor  # (R, D, W) int64 index into level j - 1's W nodes (level 0: 0, the context)
    valid: torch.Tensor  # (R, D, W) bool

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def select(self, idx: torch.Tensor) -> "TreeRows":
        """The rows idx (R',)."""
        return TreeRows(self.keys[idx], self.tokens[idx], self.parents[idx], self.valid[idx])

    @staticmethod
    def cat(parts: Sequence["TreeRows"], depth: int, width: int) -> "TreeRows":
        """Rows of several sources (e.g. groups) in one; an empty list gives 0 rows of (depth, width)."""
        if not parts:
            z = torch.zeros((0, depth, width), dtype=torch.int64)
            return TreeRows(torch.zeros(0, dtype=torch.int64), z, z.clone(), z.bool())
        return TreeRows(*(torch.cat(x) for x in zip(*((p.keys, p.tokens, p.parents, p.valid) for p in parts))))


@dataclass(frozen=True, eq=False)
class RetrievalTable:
    """(group, context of 1..c tokens) -> a draft tree of D levels of at most W nodes, `DraftTree`'s
    layout without the batch: a level's valid nodes come first, most frequent first; a node's parent
    indexes the level above, level 0's parent is 0 (the context's last token, the current position)."""

    context: int  # c, the longest context; orders c, c - 1, ..., 1 share the table
    keys: torch.Tensor  # (H,) int64 key hash of each slot, EMPTY where none
    tokens: torch.Tensor  # (H, D, W) int64
    parents: torch.Tensor  # (H, D, W) int64
    valid: torch.Tensor  # (H, D, W) bool
    probes: int = DEFAULT_PROBES  # P: a key sits within P slots of its home (hash mod H)
    budget: int = 0  # most valid nodes per tree the builder kept (metadata for in-place syncs)

    @staticmethod
    def empty(context: int, capacity: int, depth: int, width: int, budget: int,
              probes: int = DEFAULT_PROBES, device="cpu") -> "RetrievalTable":
        """A table of `capacity` (H) empty slots."""
        z = torch.zeros((capacity, depth, width), dtype=torch.int64, device=device)
        keys = torch.full((capacity,), EMPTY, dtype=torch.int64, device=device)
        return RetrievalTable(context, keys, z, z.clone(), z.bool(), probes, budget)

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[0])

    @property
    def depth(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def width(self) -> int:
        return int(self.tokens.shape[2])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.tokens, self.parents, self.valid))

    def to(self, device) -> "RetrievalTable":
        return RetrievalTable(self.context, self.keys.to(device), self.tokens.to(device), self.parents.to(device),
                              self.valid.to(device), self.probes, self.budget)

    def host_keys(self) -> list[int]:
        """The H keys on the host, for placement (`find_slot`)."""
        return self.keys.tolist()  # host sync: placement is a build step at the edge, never in a step

    def lookup(self, groups: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """groups (B,) int64, ctx (B, c') int64 the last tokens (its last min(c, c') are read; a negative
        token is padding: an order that reads it has no hit) -> tokens, parents (B, D, W) int64 and valid
        (B, D, W) bool of the longest context order with a hit; all invalid (tokens 0) where none hits."""
        B, cols = ctx.shape
        H, c = self.keys.shape[0], min(self.context, cols)
        dev = ctx.device
        n = torch.arange(1, c + 1, device=dev)  # (c,) the orders, all hashed at once (`key_hash`, vectorised)
        tail = ctx[:, cols - c:]  # (B, c) the last c tokens; order n reads its last n
        h = groups[:, None] * _GROUP + n  # (B, c)
        for j in range(c):  # token j of the tail belongs to the orders n >= c - j
            h = torch.where(n >= c - j, h * _P + (tail[:, j:j + 1] + 1), h)
        h = _finalise(h)
        real = (tail >= 0).flip(1).cumprod(dim=1).bool()  # (B, c): order n's n tokens are all real
        cand = ((h % H)[..., None] + torch.arange(self.probes, device=dev)) % H  # (B, c, P)
        hit = (self.keys[cand] == h[..., None]) & real[..., None]
        slot = torch.where(hit, cand, -1).amax(dim=2)  # (B, c) -1: no hit
        longest = torch.where(slot >= 0, n, 0).argmax(dim=1, keepdim=True)  # (B, 1) the longest order with a hit
        best = slot.gather(1, longest)[:, 0]  # (B,) its slot, -1 where none
        found = (best >= 0)[:, None, None]  # (B, 1, 1)
        row = best.clamp(min=0)
        tokens = torch.where(found, self.tokens[row], 0)  # (B, D, W)
        parents = torch.where(found, self.parents[row], 0)
        return tokens, parents, self.valid[row] & found

    def write_rows(self, slots: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor,
                   valid: torch.Tensor) -> None:
        """In place, so a captured graph that reads this table sees the rows without re-capture.
        slots (R,) distinct slot ids, keys (R,), tokens / parents / valid (R, D, W)."""
        dev = self.keys.device
        slots = slots.to(dev)
        self.keys.index_copy_(0, slots, keys.to(dev))
        self.tokens.index_copy_(0, slots, tokens.to(dev))
        self.parents.index_copy_(0, slots, parents.to(dev))
        self.valid.index_copy_(0, slots, valid.to(dev))


def place_rows(table: RetrievalTable, rows: TreeRows, keys: list[int] | None = None) -> tuple[int, int]:
    """Write `rows` into `table`: each key into its own slot or a free one within P of its home.
    keys: the table's host keys (read from the table when None; updated as rows are placed).
    -> (rows written, rows dropped for a full probe window)."""
    keys = table.host_keys() if keys is None else keys
    slots, kept = [], []
    for r, key in enumerate(rows.keys.tolist()):
        s = find_slot(keys, key, table.probes)
        if s >= 0:
            keys[s] = key
            slots.append(s)
            kept.append(r)
    if kept:
        idx = torch.tensor(kept, dtype=torch.int64)
        sel = rows.select(idx)
        table.write_rows(torch.tensor(slots, dtype=torch.int64), sel.keys, sel.tokens, sel.parents, sel.valid)
    return len(kept), len(rows) - len(kept)


def build_table(rows: TreeRows, context: int, budget: int, capacity: int | None = None,
                probes: int = DEFAULT_PROBES, device="cpu") -> tuple[RetrievalTable, int]:
    """A table holding `rows` -> (table, rows dropped). capacity None: H is the smallest power of two
    >= 2R (load <= 1/2), doubled until no key is dropped; a given capacity is kept and drops are counted."""
    depth, width = rows.tokens.shape[1:]
    H = capacity or max(8, 1 << max(0, 2 * len(rows) - 1).bit_length())
    while True:
        keys = [EMPTY] * H
        fits = all(_claim(keys, k, probes) for k in rows.keys.tolist())
        if fits or capacity is not None:
            break
        H *= 2
    table = RetrievalTable.empty(context, H, depth, width, budget, probes, device)
    _, dropped = place_rows(table, rows, [EMPTY] * H)
    return table, dropped


def _claim(keys: list[int], key: int, probes: int) -> bool:
    """Place key into the host keys; False if its window is full."""
    s = find_slot(keys, key, probes)
    if s >= 0:
        keys[s] = key
    return s >= 0
