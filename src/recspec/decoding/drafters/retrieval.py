"""A model-free drafter from a retrieval pool (LASER): the draft tree is the pool's most frequent
continuations of the last tokens, precomputed per context in a `RetrievalTable` (decoding/retrieval_table.py,
built from the pools of `retrieval/`), so a step costs one hashed lookup and a gather, never a trie walk.

Each user is routed to a pool: `route(groups)` before a run gives each row's group id (customized pools:
one per item or user group; 0 for all rows: one global pool). The table holds every group's trees under
(group, context) keys, so one batch may mix groups.

Own n-grams. Where the engine's N exceeds the table's width W, the first column of the tree is the row's
own match (LASER's pool also holds the current prompt and generation): the latest earlier place where the
row's last c tokens occurred in its prompt + output so far, and the tokens that followed it there, one per
level, as a chain (`own_match`); the table's W nodes follow in columns 1..W. A chain node that repeats a
table node is harmless (verification follows the first).

The tree is cut to the engine's shape (N nodes per level, the round's depth) and walked once under the
constraint: a node whose token its parent's state does not allow (text after <eos>, a SID that does not
exist) is invalid, and so is everything below it.
"""

from __future__ import annotations

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.drafters.base import DrafterInputs, register
from recspec.decoding.handoff import Frontier, Sampling, Scores, Verdict
from recspec.decoding.tree import DraftTree, Layout
from recspec.decoding.tree_verify import parent_rows, row_states


def fit_levels(x: torch.Tensor, depth: int, N: int, fill) -> torch.Tensor:
    """(B, D, W) -> (B, depth, N): levels and nodes cut, or padded with `fill`."""
    B, D, W = x.shape
    x = x[:, :depth, :N]
    if x.shape[1] < depth or x.shape[2] < N:
        out = x.new_full((B, depth, N), fill)
        out[:, :x.shape[1], :x.shape[2]] = x
        return out
    return x


def own_match(seq: torch.Tensor, end: torch.Tensor, c: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """seq (B, S) tokens, end (B,) each row's length (its tokens are seq[:, :end]) -> (tokens (B, depth),
    valid (B, depth)): the tokens after the latest window seq[p-c+1 .. p], p < end - 1, equal to the row's
    last c tokens, as far as they reach before `end`; none valid where no earlier window matches."""
    B, S = seq.shape
    pos = torch.arange(S, device=seq.device)
    last = seq.gather(1, (end[:, None] - c + torch.arange(c, device=seq.device)).clamp(min=0))  # (B, c)
    match = (pos >= c - 1)[None].expand(B, S).clone()  # match[:, p]: the window ending at p equals `last`
    for k in range(c):
        off = c - 1 - k  # seq[p - off] must be last[k]
        match[:, off:] &= seq[:, :S - off] == last[:, k:k + 1]
    p = torch.where(match & (pos[None] < (end - 1)[:, None]), pos[None], -1).amax(dim=1)  # (B,) -1: none
    idx = p[:, None] + 1 + torch.arange(depth, device=seq.device)  # (B, depth)
    valid = (p[:, None] >= 0) & (idx < end[:, None]) & (end[:, None] >= c)
    return seq.gather(1, idx.clamp(max=S - 1)), valid


@register("retrieval")
class RetrievalDrafter:
    def __init__(self, inputs: DrafterInputs):
        """inputs.table: the RetrievalTable; inputs.shape.N nodes per tree level."""
        if inputs.table is None or not hasattr(inputs.table, "lookup"):
            raise ValueError("the retrieval drafter needs a retrieval table (DrafterInputs.table)")
        self.constraint, self.N, self.table = inputs.constraint, inputs.shape.N, inputs.table
        self._routed: torch.Tensor | None = None  # (B,) group ids for the next run (None: group 0)
        self._groups: torch.Tensor | None = None  # (B,) the static buffer the rounds read

    def route(self, groups: torch.Tensor | None) -> None:
        """groups (B,) int64: the pool of each row of the next run (None: the global pool, group 0)."""
        self._routed = None if groups is None else groups.reshape(-1).long()

    def start(self, prompts: Prompts, layout: Layout) -> None:
        self.prompts, self.layout = prompts, layout
        B, dev = prompts.tokens.shape[0], prompts.tokens.device
        if self._groups is None or self._groups.shape[0] != B or self._groups.device != dev:
            self._groups = torch.zeros(B, dtype=torch.long, device=dev)  # one buffer per shape (CUDA graphs)
        if self._routed is not None and self._routed.shape[0] != B:
            raise ValueError(f"route() gave {self._routed.shape[0]} groups for a batch of {B}")
        self._groups.copy_(self._routed if self._routed is not None else torch.zeros_like(self._groups))

    def prefill(self) -> None:
        """Nothing to run: the table is the draft."""

    def observe(self, frontier: Frontier, scores: Scores, verdict: Verdict) -> None:
        """No cache: the pools learn from finished outputs between runs (`retrieval.pools`)."""

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        return ()

    @torch.no_grad()
    def propose(self, frontier: Frontier, depth: int, widths: tuple[int, ...] | None = None,
                sampling: Sampling | None = None) -> DraftTree:
        """The table's tree for each user's context, cut to `depth` levels of N nodes (at most widths[j] on
        level j), invalid wherever the constraint refuses a token or the parent is invalid."""
        if sampling is not None:
            raise ValueError("the retrieval drafter drafts top-N trees: use strict or topk-beta verification")
        seq = torch.cat([self.prompts.tokens, frontier.codes[:, 0]], dim=1)  # (B, T + n) prompt, then output so far
        end = self.prompts.tokens.shape[1] + frontier.level  # (B,) each row's length in seq
        c = self.table.context
        ctx = seq.gather(1, (end[:, None] - c + torch.arange(c, device=seq.device)).clamp(min=0))  # (B, c) last c
        tok, par, val = self.table.lookup(self._groups, ctx)  # (B, D, W) each
        own = self.N > self.table.width  # column 0: the row's own match, the table's nodes after it
        W = self.N - 1 if own else self.N
        tok, par, val = fit_levels(tok, depth, W, 0), fit_levels(par, depth, W, 0), fit_levels(val, depth, W, False)
        if own:
            chain, ok = own_match(seq, end, c, depth)
            first = (torch.arange(depth, device=tok.device) > 0).long()[None, :, None]  # (1, depth, 1)
            tok = torch.cat([chain[..., None], tok], dim=2)  # (B, depth, N)
            par = torch.cat([torch.zeros_like(chain)[..., None], par + first], dim=2)  # table parents shift right
            val = torch.cat([ok[..., None], val], dim=2)
        B = tok.shape[0]
        shape = DraftTree(tokens=tok, parents=par.clamp(max=self.N - 1), valid=val)  # cut parents: checked below
        prow = parent_rows(shape)  # (B, depth, N) each node's parent row
        ps = row_states(self.constraint, frontier.states[:, 0], shape, prow).gather(1, prow.reshape(B, -1))
        allowed = self.constraint.allowed(ps, frontier.banned)  # (B, depth * N, V): ONE call
        allowed = allowed.gather(2, tok.reshape(B, -1, 1)).reshape(B, depth, self.N)  # bans: a per-user mask
        ok_above, levels = torch.ones_like(val[:, 0, :1]), []  # (B, 1): the root
        for j in range(depth):
            ok = val[:, j] & allowed[:, j] & ok_above.gather(1, par[:, j].clamp(max=ok_above.shape[1] - 1))
            ok &= par[:, j] < ok_above.shape[1]
            if widths is not None:
                ok &= torch.arange(self.N, device=ok.device) < widths[j]
            levels.append(ok)
            ok_above = ok
        valid = torch.stack(levels, dim=1) if levels else val
        fed = tuple(widths) if widths is not None and any(w < self.N for w in widths) else None
        return DraftTree(tokens=tok, parents=par, valid=valid, fed=fed)
