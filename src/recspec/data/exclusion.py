"""Per-user exclusions: items a user must not be recommended (e.g. those already in her history).

Decoding excludes them exactly by searching, for each user, the trie of the items she may get: the
shared trie with every state that leads to no allowed item removed. So the leaf of an excluded SID
is never entered (the step that reaches it is masked), and neither is a prefix all of whose items
are excluded, which would otherwise hold a beam that can only end in an excluded item. A user then
gets K items whenever she may get K; fewer (the rest -1) only when fewer SIDs are allowed.

Exclusions are by unique SID row (`trie.sids`): a SID is excluded when any item that has it is, since
a generative model returns the SID, not one of the items that share it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from recspec.data.trie import SIDTrie
from recspec.errors import DataError


def history_rows(trie: SIDTrie, histories: Sequence[Sequence[int]]) -> torch.Tensor:
    """histories (B lists of item ids) -> (B, U) bool on the trie's device: the SID rows of each
    history's items. An item id outside the catalogue raises DataError naming it."""
    I = int(trie.item_sid.shape[0])
    lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
    items = np.fromiter((int(i) for h in histories for i in h), dtype=np.int64, count=int(lengths.sum()))
    bad = np.nonzero((items < 0) | (items >= I))[0]
    if bad.size:
        user = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        raise DataError(f"exclude history: history {user} holds item {items[bad[0]]}, outside the catalogue's {I} items")
    dev = trie.item_sid.device
    user = torch.as_tensor(np.repeat(np.arange(len(histories)), lengths), device=dev)
    rows = torch.zeros(len(histories), trie.num_sids, dtype=torch.bool, device=dev)
    rows[user, trie.item_sid[torch.as_tensor(items, device=dev)]] = True
    return rows


def prefix_states(trie: SIDTrie) -> torch.Tensor:
    """(U, L + 1) int64: state of each SID row's length-d prefix (column 0 the root, column L its leaf)."""
    state = torch.full((trie.num_sids,), trie.ROOT, dtype=torch.int64, device=trie.sids.device)
    cols = [state]
    for d in range(trie.num_levels):
        state = trie.next_state[state, trie.sids[:, d]]
        cols.append(state)
    return torch.stack(cols, dim=1)


def live_counts(trie: SIDTrie, rows: torch.Tensor) -> torch.Tensor:
    """rows (B, U) bool SID rows user b may not get -> (B, S) int32: the SIDs user b may get below each
    state (0 at the end state)."""
    B, S = rows.shape[0], trie.next_state.shape[0]
    allowed = (~rows).int()  # (B, U)
    live = torch.zeros(B, S, dtype=torch.int32, device=rows.device)  # allowed SIDs below each state
    for prefix in prefix_states(trie).unbind(1):  # (U,) states of one prefix length
        live.scatter_add_(1, prefix.expand(B, -1), allowed)
    return live


def banned_states(trie: SIDTrie, rows: torch.Tensor) -> torch.Tensor:
    """rows (B, U) bool SID rows user b may not get -> (B, S) bool: the states user b may not enter,
    those with no allowed SID below them. The end state (after <eos>) is never banned. Device tensors,
    no host sync: the engine fills its static buffer with this at load."""
    banned = live_counts(trie, rows) == 0
    banned[:, trie.end_state] = False
    return banned
