"""The trie of valid SIDs as tensors: the single authority on which next tokens are allowed.

States are trie nodes. A state at depth l (l codes decoded) allows the codes of level l that some
item continues with; a leaf (depth L, a complete SID) allows only `<eos>`; the end state (depth
L + 1, after `<eos>`) allows nothing. An invalid transition also lands in the end state, so every
state index is always valid and masks of dead beams are all False.

Layout: `next_state[s, c]` is the child of state s through code c of level depth[s] (-1: none);
token id = level_offset[depth[s]] + c. The `<eos>` step is a pseudo-level whose only code 0 is
`<eos>`, so every level is handled the same way.

Every leaf is exactly one item: an index where items share a SID is refused (`SIDIndex.load` and
`build_sids` resolve collisions with a disambiguating level), so K distinct SIDs are K distinct items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recspec.data.sids import SIDIndex
from recspec.data.vocab import EOS, Vocab
from recspec.errors import DataError


@dataclass(frozen=True, eq=False)
class SIDTrie:
    next_state: torch.Tensor  # (S, Cmax) int64 child state per code, -1 where invalid
    depth: torch.Tensor  # (S,) int64 codes decoded to reach the state (0 = root, L = leaf, L+1 = end)
    level_offset: torch.Tensor  # (L + 2,) int64 token id of code 0 of the level a state at depth d decodes
    leaf_sid: torch.Tensor  # (S,) int64 row of `sids` for leaves, -1 elsewhere
    sids: torch.Tensor  # (U, L) int64 unique SIDs (codes), row order = leaf order
    sid_items: tuple[tuple[int, ...], ...]  # unique SID row -> (the one item that has it,)
    item_sid: torch.Tensor  # (I,) int64 item id -> unique SID row
    vocab_size: int
    end_state: int

    ROOT = 0

    @property
    def num_levels(self) -> int:
        return int(self.sids.shape[1])

    @property
    def num_sids(self) -> int:
        return int(self.sids.shape[0])

    def items(self, sids: torch.Tensor) -> torch.Tensor:
        """(...,) SID rows -> (...,) the item of each; -1 (no SID) stays -1."""
        sid_item = torch.empty_like(self.item_sid)  # (U,) inverse of item_sid: one item per SID
        sid_item[self.item_sid] = torch.arange(len(self.item_sid), device=self.item_sid.device)
        return torch.where(sids >= 0, sid_item[sids.clamp(min=0)], sids)

    def to(self, device) -> "SIDTrie":
        t = lambda x: x.to(device)  # noqa: E731
        return SIDTrie(t(self.next_state), t(self.depth), t(self.level_offset), t(self.leaf_sid),
                       t(self.sids), self.sid_items, t(self.item_sid), self.vocab_size, self.end_state)

    def allowed(self, state: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """(...,) states -> (..., V) bool mask of allowed next tokens. One vectorised call.

        banned (B, S) bool: states user b may not enter (`exclusion.banned_states`); then state is
        (B, ...) and a move into a banned state is not allowed."""
        shape = state.shape
        s = state.reshape(-1)
        cmax = self.next_state.shape[1]
        cols = self.level_offset[self.depth[s]][:, None] + torch.arange(cmax, device=s.device)  # (n, Cmax)
        ok = self.next_state[s] >= 0  # (n, Cmax)
        if banned is not None:
            child = self.next_state[s].clamp(min=0).reshape(banned.shape[0], -1)  # (B, n / B * Cmax)
            ok = ok & ~banned.gather(1, child).reshape(ok.shape)
        out = torch.zeros(s.shape[0], self.vocab_size + cmax, dtype=torch.bool, device=s.device)
        out.scatter_(1, cols, ok)
        return out[:, : self.vocab_size].reshape(*shape, self.vocab_size)

    def step(self, state: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """(...,) states, (...,) tokens -> (...,) next states; invalid moves go to the end state."""
        code = token - self.level_offset[self.depth[state]]
        cmax = self.next_state.shape[1]
        ok = (code >= 0) & (code < cmax)
        nxt = self.next_state[state, code.clamp(0, cmax - 1)]
        return torch.where(ok & (nxt >= 0), nxt, torch.full_like(nxt, self.end_state))

    def walk(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """(..., t) token paths from `state` (default root) -> (...,) final states."""
        if state is None:
            state = torch.full(tokens.shape[:-1], self.ROOT, dtype=torch.int64, device=tokens.device)
        for j in range(tokens.shape[-1]):
            state = self.step(state, tokens[..., j])
        return state


def build_trie(index: SIDIndex, vocab: Vocab) -> SIDTrie:
    """Build the trie of every item's SID, one leaf per item; an index with collisions is refused."""
    if tuple(index.level_sizes) != tuple(vocab.level_sizes):
        raise ValueError(f"index level sizes {index.level_sizes} differ from vocab {vocab.level_sizes}")
    if index.collisions():
        raise DataError(f"{index.collisions()} items share their SID with another item; a trie leaf is one item: "
                        "tell them apart with sids.resolve_collisions(index)")
    codes = np.asarray(index.codes, dtype=np.int64)  # (I, L)
    L = codes.shape[1]
    cmax = max(max(vocab.level_sizes), 1)
    sids, item_sid = np.unique(codes, axis=0, return_inverse=True)  # (U, L), (I,)
    item_sid = item_sid.reshape(-1)
    # State ids per depth: depth d states are the unique length-d prefixes, in sorted order.
    firsts, prefix_ids = [0], []
    for d in range(L + 1):
        pre, inv = np.unique(sids[:, :d], axis=0, return_inverse=True) if d else (np.zeros((1, 0)), np.zeros(len(sids), np.int64))
        prefix_ids.append(firsts[-1] + inv.reshape(-1))  # (U,) state of each SID's length-d prefix
        firsts.append(firsts[-1] + len(pre))
    end_state = firsts[-1]
    S = end_state + 1
    next_state = np.full((S, cmax), -1, dtype=np.int64)
    depth = np.zeros(S, dtype=np.int64)
    for d in range(L + 1):
        depth[firsts[d]:firsts[d + 1]] = d
    depth[end_state] = L + 1
    for d in range(L):
        next_state[prefix_ids[d], sids[:, d]] = prefix_ids[d + 1]
    next_state[prefix_ids[L], 0] = end_state  # leaf --<eos>--> end
    leaf_sid = np.full(S, -1, dtype=np.int64)
    leaf_sid[prefix_ids[L]] = np.arange(len(sids))
    offsets = list(vocab.level_offsets()) + [EOS, 0]  # depth L decodes <eos>; the end state nothing
    sid_item = np.empty(len(sids), dtype=np.int64)  # (U,) the item of each SID row
    sid_item[item_sid] = np.arange(len(item_sid))
    tt = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return SIDTrie(tt(next_state), tt(depth), tt(offsets), tt(leaf_sid), tt(sids),
                   tuple((i,) for i in sid_item.tolist()), tt(item_sid), vocab.size, end_state)
