"""The popularity prior over the SID trie: how training interactions split among a state's children.

log P(child | parent) is the child's share of the interactions under its parent, add-`smoothing` per
child, so a child nobody interacted with keeps a little mass. Data-only (trie + histories): the trie
drafter ranks children by it where a tree level is cut (decoding/drafters/trie_drafter.py) and a
`Catalog` computes it once (`Catalog.popularity`).
"""

from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np
import torch

from recspec.data.trie import SIDTrie


def popularity_prior(trie: SIDTrie, histories: Iterable[Iterable[int]], smoothing: float = 1.0) -> torch.Tensor:
    """(S,) float32 log P(state | its parent state) from interaction counts, add-`smoothing` per child.

    histories: item ids per user (training data). The root (and the end state) get 0."""
    I = len(trie.item_sid)
    hs = list(histories)
    ends = np.cumsum(np.fromiter(map(len, hs), dtype=np.int64, count=len(hs)))
    items = np.fromiter(itertools.chain.from_iterable(hs), dtype=np.int64, count=int(ends[-1]) if len(hs) else 0)
    bad = np.nonzero((items < 0) | (items >= I))[0]
    if bad.size:
        u = int(np.searchsorted(ends, bad[0], side="right"))
        raise ValueError(f"popularity prior: history {u} holds item {items[bad[0]]}, outside the catalogue's {I} items")
    counts = np.bincount(items, minlength=I).astype(np.float64)
    trie = trie.to("cpu")
    nxt = trie.next_state.numpy()
    S = nxt.shape[0]
    leaf_of_sid = np.full(trie.num_sids, -1, dtype=np.int64)
    leaves = np.nonzero(trie.leaf_sid.numpy() >= 0)[0]
    leaf_of_sid[trie.leaf_sid.numpy()[leaves]] = leaves
    mass = np.zeros(S, dtype=np.float64)
    np.add.at(mass, leaf_of_sid[trie.item_sid.numpy()], counts)  # interactions per leaf
    parent = np.full(S, -1, dtype=np.int64)
    depth = trie.depth.numpy()
    L = trie.num_levels
    src, col = np.nonzero(nxt >= 0)
    keep = depth[src] < L  # code edges only (not leaf -> end)
    parent[nxt[src[keep], col[keep]]] = src[keep]
    for d in range(L, 0, -1):  # push mass up, deepest level first
        at = np.nonzero((depth == d) & (parent >= 0))[0]
        np.add.at(mass, parent[at], mass[at])
    mass = mass + smoothing
    fan = np.bincount(parent[parent >= 0], minlength=S).astype(np.float64)  # children per state
    prior = np.zeros(S, dtype=np.float64)
    has = parent >= 0
    prior[has] = np.log(mass[has]) - np.log(mass[parent[has]] - smoothing + smoothing * fan[parent[has]])
    return torch.as_tensor(prior, dtype=torch.float32)
