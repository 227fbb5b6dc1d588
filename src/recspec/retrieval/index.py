"""The retrieval pool's n-gram index (LASER, `spec/retrieval-drafting.md` section 2): a continuation
trie with frequencies, on the host, compiled into a device `RetrievalTable`.

Insert. For each start position of an inserted sequence, its next `context + depth` tokens are walked
down from the root, each node's count incremented: a node is an n-gram (its path from the root) and
its count is how often that n-gram occurred (n <= context + depth). Two counts per node: `output`
(earlier or current outputs) and `prompt` (prompt tokens); drafts rank by output, then prompt.

Lookup. The last `context` tokens are walked from the root; if that context was never followed by a
token, the shorter suffixes are tried, down to 1 token. Draft. The matched node's subtree, best-first by
count: a child's count never exceeds its parent's, so the kept nodes are closed under ancestors.

Storage, per node: six int64 `array`s (token, parent, first child, next sibling, output and prompt
counts: 48 bytes) and one entry of ONE dict, parent id * 2^32 + token -> child id (~37 bytes of table,
a 32-byte key and a 28-byte id object): ~145 bytes per node, `nbytes`. Tokens lie in [0, 2^32).

Bounded memory. When a start position's walk leaves more than `max_nodes` nodes, `prune()` keeps the
most frequent nodes (total count, output + prompt), 3/4 of the cap of them, and removes the rest: the
rarest, and among equally rare ones the deepest, then the newest. A child never out-counts its parent and is deeper,
so a removed node takes its subtree with it and the kept counts stay exact; n-grams seen again after a
prune count from zero (as in lossy counting). The cap is checked after each start position's walk,
which adds at most context + depth nodes; after `insert` returns, num_nodes <= max_nodes.

Online update. `insert` may be called at any time; the contexts whose trees it may change are `dirty`
until the next `compile` or `sync`, which rewrites only those rows of a table, in place.
"""

from __future__ import annotations

import heapq
import sys
from array import array
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from recspec.decoding.retrieval_table import (DEFAULT_PROBES, EMPTY, RetrievalTable, TreeRows, build_table,
                                              find_slot, key_hashes, place_rows)

_V = 1 << 32  # child key = parent id * _V + token
_ARRAYS = ("_token", "_parent", "_first", "_sibling", "_out", "_prompt")
DEFAULT_MAX_NODES = 1 << 20  # ~150 MB at ~145 bytes per node


@dataclass(frozen=True, eq=False)
class DraftNodes:
    """A drafted tree, level by level; within a level most frequent first (output, then prompt count)."""

    tokens: np.ndarray  # (n,) int64
    parents: np.ndarray  # (n,) int64 index of the parent within the level above (level 0: 0, the context)
    level: np.ndarray  # (n,) int64 levels below the context, 0-based, non-decreasing
    output: np.ndarray  # (n,) int64 output count of each node's n-gram
    prompt: np.ndarray  # (n,) int64 prompt count

    @staticmethod
    def none() -> "DraftNodes":
        z = np.zeros(0, dtype=np.int64)
        return DraftNodes(z, z, z, z, z)

    def __len__(self) -> int:
        return len(self.tokens)

    def grid(self, depth: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The table's layout: tokens, parents (depth, width) int64 and valid (depth, width) bool."""
        tokens, parents = np.zeros((depth, width), np.int64), np.zeros((depth, width), np.int64)
        valid = np.zeros((depth, width), bool)
        pos = self.positions()
        tokens[self.level, pos], parents[self.level, pos], valid[self.level, pos] = self.tokens, self.parents, True
        return tokens, parents, valid

    def positions(self) -> np.ndarray:
        """(n,) each node's index within its level."""
        first = np.searchsorted(self.level, self.level)  # first node of each node's level
        return np.arange(len(self)) - first

    def paths(self) -> list[tuple[int, ...]]:
        """Each node's tokens from below the context down to it."""
        pos, out, by_level = self.positions(), [], {}
        for i, (lvl, p) in enumerate(zip(self.level.tolist(), pos.tolist())):
            up = by_level[(lvl - 1, int(self.parents[i]))] if lvl else ()
            by_level[(lvl, p)] = up + (int(self.tokens[i]),)
            out.append(by_level[(lvl, p)])
        return out


class NGramIndex:
    """A continuation trie of n-grams of up to context + depth tokens, with output / prompt counts."""

    def __init__(self, context: int = 2, depth: int = 8, max_nodes: int = DEFAULT_MAX_NODES):
        if context < 1 or depth < 1 or max_nodes <= context + depth:
            raise ValueError(f"need context >= 1, depth >= 1, max_nodes > context + depth; got {context}, {depth}, "
                             f"{max_nodes}")
        self.context, self.depth, self.max_nodes = context, depth, max_nodes
        for name, root in zip(_ARRAYS, (-1, -1, -1, -1, 0, 0)):  # node 0 is the root
            setattr(self, name, array("q", [root]))
        self._children: dict[int, int] = {}  # parent * _V + token -> child
        self._dirty: set[int] = set()  # context nodes (depth <= context) touched since the last compile / sync
        self._gone: set[tuple[int, ...]] = set()  # contexts pruned away since then
        self.dropped = 0  # contexts the last compile / sync could not place (full probe window)

    # --- insert -------------------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], source: str = "output") -> None:
        """Count every n-gram (n <= context + depth) of `tokens` as seen in `source`: "output" or "prompt"."""
        counts = {"output": "_out", "prompt": "_prompt"}.get(source)  # by name: a prune replaces the arrays
        if counts is None:
            raise ValueError(f"source must be 'output' or 'prompt', got {source!r}")
        seq = [int(t) for t in tokens]
        if seq and (min(seq) < 0 or max(seq) >= _V):
            raise ValueError(f"tokens must lie in [0, 2^32), got {min(seq)}..{max(seq)}")
        span = self.context + self.depth
        for i in range(len(seq)):
            self._walk(seq, i, min(i + span, len(seq)), getattr(self, counts))
            if self.num_nodes > self.max_nodes:
                self.prune()

    def _walk(self, seq: list[int], start: int, end: int, counts: array) -> None:
        node, children, dirty, last_context = 0, self._children, self._dirty, start + self.context
        for k in range(start, end):
            key = node * _V + seq[k]
            child = children.get(key)
            if child is None:
                child = self._add(node, seq[k], key)
            counts[child] += 1
            if k < last_context:
                dirty.add(child)
            node = child

    def _add(self, parent: int, token: int, key: int) -> int:
        node = len(self._token)
        self._token.append(token)
        self._parent.append(parent)
        self._first.append(-1)
        self._sibling.append(self._first[parent])  # the new child goes first in its parent's chain
        self._out.append(0)
        self._prompt.append(0)
        self._first[parent] = node
        self._children[key] = node
        return node

    # --- lookup -------------------------------------------------------------------------------------
    def find(self, ngram: Sequence[int]) -> int | None:
        """The node of `ngram` (walked from the root), None if never seen."""
        node = 0
        for t in ngram:
            node = self._children.get(node * _V + int(t)) if t >= 0 else None
            if node is None:
                return None
        return node

    def lookup(self, last_tokens: Sequence[int]) -> int | None:
        """The node of the longest suffix (<= context tokens) of `last_tokens` that was followed by a
        token somewhere; None if none was. A negative token is padding: no suffix through it matches."""
        tail = [int(t) for t in last_tokens][-self.context:]
        for n in range(len(tail), 0, -1):
            node = self.find(tail[len(tail) - n:])
            if node is not None and self._first[node] >= 0:
                return node
        return None

    def counts(self, ngram: Sequence[int]) -> tuple[int, int]:
        """(output, prompt) count of `ngram`; (0, 0) if absent."""
        node = self.find(ngram)
        return (0, 0) if node is None else (self._out[node], self._prompt[node])

    def items(self) -> Iterator[tuple[tuple[int, ...], int, int]]:
        """Every n-gram in the trie: (tokens, output count, prompt count), depth first."""
        stack = [(0, ())]
        while stack:
            node, path = stack.pop()
            child = self._first[node]
            while child >= 0:
                p = path + (self._token[child],)
                yield p, self._out[child], self._prompt[child]
                stack.append((child, p))
                child = self._sibling[child]

    # --- draft --------------------------------------------------------------------------------------
    def draft(self, last_tokens: Sequence[int], budget: int, width: int, depth: int) -> DraftNodes:
        """The tree below `lookup(last_tokens)`: its most frequent nodes, at most `budget` in all, `width`
        per level and `depth` levels (empty when nothing matches)."""
        node = self.lookup(last_tokens)
        return DraftNodes.none() if node is None else self.draft_from(node, budget, width, depth)

    def draft_from(self, root: int, budget: int, width: int, depth: int) -> DraftNodes:
        """Best-first from `root`: pop the most frequent open node (ties: shallower, then the parent taken
        earlier, then the smaller token); a full level skips it and its subtree. Every pushed node counts
        no more than the one just popped, so pops come out in order and each level is sorted."""
        if min(budget, width, depth) <= 0:
            return DraftNodes.none()
        heap: list[tuple[int, int, int, int, int, int]] = []
        self._push_children(heap, root, 0, 0)
        taken: list[tuple[int, int, int]] = []  # (node, level, index of the parent in `taken`)
        pos: list[int] = []  # index of each taken node within its level
        filled = [0] * depth
        while heap and len(taken) < budget:
            _, _, level, up, _, node = heapq.heappop(heap)
            if filled[level] >= width:
                continue
            pos.append(filled[level])
            filled[level] += 1
            taken.append((node, level, up))
            if level + 1 < depth:
                self._push_children(heap, node, level + 1, len(taken) - 1)
        return self._nodes(taken, pos)

    def _push_children(self, heap: list, node: int, level: int, up: int) -> None:
        child = self._first[node]
        while child >= 0:
            heapq.heappush(heap, (-self._out[child], -self._prompt[child], level, up, self._token[child], child))
            child = self._sibling[child]

    def _nodes(self, taken: list[tuple[int, int, int]], pos: list[int]) -> DraftNodes:
        order = sorted(range(len(taken)), key=lambda i: taken[i][1])  # stable: pop order within a level
        node = [taken[i][0] for i in order]
        arr = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
        return DraftNodes(tokens=arr([self._token[n] for n in node]),
                          parents=arr([pos[taken[i][2]] if taken[i][1] else 0 for i in order]),
                          level=arr([taken[i][1] for i in order]),
                          output=arr([self._out[n] for n in node]), prompt=arr([self._prompt[n] for n in node]))

    # --- prune --------------------------------------------------------------------------------------
    def prune(self, target: int | None = None) -> int:
        """Remove the rarest nodes until at most `target` remain (default 3/4 of max_nodes) -> nodes removed.
        Pruned contexts are remembered for `sync`; every remaining context is dirty (its subtree may
        have lost nodes)."""
        target = self.max_nodes * 3 // 4 if target is None else target
        n = self.num_nodes
        if n <= target:
            return 0
        before = self.contexts()
        self._compact(self._keep(target))
        after = self.contexts()
        self._gone |= before.keys() - after.keys()
        self._dirty = set(after.values())
        return n - self.num_nodes

    def _keep(self, target: int) -> np.ndarray:
        """(N + 1,) bool: the root and the `target` nodes first by (total count desc, depth, id). A parent
        counts at least as much as its child and is shallower, so it comes first: the kept set is closed
        under ancestors, i.e. a removed node takes its subtree with it."""
        total = np.array(self._out, dtype=np.int64) + np.array(self._prompt, dtype=np.int64)  # (N + 1,)
        parent = np.array(self._parent, dtype=np.int64)
        depth = np.zeros_like(parent)
        for _ in range(self.context + self.depth):  # the deepest node is context + depth below the root
            depth = np.where(parent >= 0, depth[parent] + 1, 0)
        ids = np.arange(1, len(total))
        order = np.lexsort((ids, depth[1:], -total[1:]))  # most frequent, then shallowest, then oldest
        keep = np.zeros(len(total), dtype=bool)
        keep[0] = True
        keep[ids[order[:target]]] = True
        return keep

    def _compact(self, keep: np.ndarray) -> None:
        """Keep nodes keep (N + 1,) bool (closed under ancestors), renumbered in their old order."""
        ids = np.flatnonzero(keep)  # (M,) old ids, root first
        new_id = np.cumsum(keep) - 1
        old = {name: np.array(getattr(self, name), dtype=np.int64)[ids] for name in _ARRAYS}
        parent = np.where(ids == 0, -1, new_id[old["_parent"]])
        first, sibling = _link(parent)
        cols = {"_token": old["_token"], "_parent": parent, "_first": first, "_sibling": sibling,
                "_out": old["_out"], "_prompt": old["_prompt"]}
        for name in _ARRAYS:
            setattr(self, name, array("q", cols[name].tobytes()))
        self._children = dict(zip((parent[1:] * _V + cols["_token"][1:]).tolist(), range(1, len(ids))))

    # --- sizes, contexts ----------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        """N-gram nodes (the root not counted)."""
        return len(self._token) - 1

    @property
    def nbytes(self) -> int:
        """An estimate of the index's memory: array buffers, the dict's table, its key and id objects."""
        arrays = sum(a.buffer_info()[1] * a.itemsize for a in (getattr(self, n) for n in _ARRAYS))
        entries = len(self._children) * (sys.getsizeof(1 << 40) + sys.getsizeof(1 << 20))
        return arrays + sys.getsizeof(self._children) + entries + sys.getsizeof(self._dirty)

    @property
    def dirty(self) -> frozenset[tuple[int, ...]]:
        """Contexts whose tree may differ from the last compiled / synced one (pruned ones included)."""
        return frozenset(self.path(n) for n in self._dirty) | self._gone

    def clear_dirty(self) -> None:
        """The caller has written every context's tree into a table."""
        self._dirty, self._gone = set(), set()

    def path(self, node: int) -> tuple[int, ...]:
        """The tokens from the root down to `node`."""
        out = []
        while node > 0:
            out.append(self._token[node])
            node = self._parent[node]
        return tuple(reversed(out))

    def contexts(self) -> dict[tuple[int, ...], int]:
        """{context: node} for every context of 1..`context` tokens that was followed by a token."""
        out, level = {}, [(0, ())]
        for _ in range(self.context):
            below = []
            for node, path in level:
                child = self._first[node]
                while child >= 0:
                    p = path + (self._token[child],)
                    if self._first[child] >= 0:
                        out[p] = child
                        below.append((child, p))
                    child = self._sibling[child]
            level = below
        return out

    # --- compile ------------------------------------------------------------------------------------
    def rows(self, contexts: dict[tuple[int, ...], int], budget: int, width: int, depth: int,
             group: int = 0) -> TreeRows:
        """Table rows for {context: node}: each context's key and its `draft_from` tree."""
        grids = [self.draft_from(node, budget, width, depth).grid(depth, width) for node in contexts.values()]
        if not grids:
            return TreeRows.cat([], depth, width)
        tok, par, val = (torch.from_numpy(np.stack(x)) for x in zip(*grids))  # (R, D, W) each
        return TreeRows(torch.from_numpy(key_hashes(group, list(contexts))), tok, par, val)

    def compile(self, budget: int, width: int, depth: int, group: int = 0, capacity: int | None = None,
                probes: int = DEFAULT_PROBES, device="cpu") -> RetrievalTable:
        """A table of every context's tree under `group` (see `build_table` for capacity); clears `dirty`."""
        if depth > self.depth:
            raise ValueError(f"depth {depth} exceeds the index's depth {self.depth} (levels kept below a context)")
        table, self.dropped = build_table(self.rows(self.contexts(), budget, width, depth, group), self.context,
                                          budget, capacity, probes, device)
        self.clear_dirty()
        return table

    def sync(self, table: RetrievalTable, group: int = 0) -> int:
        """Rewrite, in place, the rows of the contexts changed since the last compile / sync: a changed
        context's tree is recomputed (placed in a free probe slot if new), a pruned context's slot is
        emptied -> rows written. Contexts that find no free slot are counted in `dropped`."""
        if table.context != self.context:
            raise ValueError(f"table context {table.context} != index context {self.context}")
        live = {self.path(n): n for n in sorted(self._dirty) if self._first[n] >= 0}
        keys = table.host_keys()
        cleared = clear_contexts(table, keys, [p for p in sorted(self._gone) if p not in live], group)
        rows = self.rows(live, table.budget, table.width, table.depth, group)
        written, self.dropped = place_rows(table, rows, keys)
        self.clear_dirty()
        return written + cleared


def clear_contexts(table: RetrievalTable, keys: list[int], contexts: list[tuple[int, ...]], group: int) -> int:
    """Empty the slots of `contexts` (those in the table) in place; keys: the table's host keys, updated."""
    slots = []
    for key in key_hashes(group, contexts).tolist():
        s = find_slot(keys, key, table.probes)
        if s >= 0 and keys[s] == key:
            keys[s] = EMPTY
            slots.append(s)
    if slots:
        R, D, W = len(slots), table.depth, table.width
        z = torch.zeros((R, D, W), dtype=torch.int64)
        table.write_rows(torch.tensor(slots), torch.full((R,), EMPTY, dtype=torch.int64), z, z, z.bool())
    return len(slots)


def _link(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First-child and next-sibling links for parents (M,) (root: -1), siblings newest first as `_add`
    makes them: a node's next sibling is its parent's child with the next smaller id."""
    M = len(parent)
    first, sibling = np.full(M, -1, np.int64), np.full(M, -1, np.int64)
    if M <= 1:
        return first, sibling
    child = np.arange(1, M)
    order = np.lexsort((child, parent[1:]))  # by parent, then id
    c, p = child[order], parent[1:][order]
    same = np.r_[False, p[1:] == p[:-1]]
    sibling[c] = np.where(same, np.r_[-1, c[:-1]], -1)
    last = np.r_[p[1:] != p[:-1], True]  # the newest child of each parent
    first[p[last]] = c[last]
    return first, sibling
