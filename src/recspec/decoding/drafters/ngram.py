"""A model-free drafter from an n-gram table: each node's continuations are the tokens that most often
followed its last n - 1 tokens in a corpus (retrieval drafting; LASER builds the corpora per user or item
group, `retrieval/`). No forward pass: a hash of the context, a binary search, a gather.

The table is device tensors: `keys` (H,) the sorted hashes of every context seen, `next` (H, W) its W most
frequent next tokens (most frequent first, ties by token id; -1 where fewer were seen). Several orders
back off: the longest context with a match wins.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.drafters.base import DrafterInputs, register
from recspec.decoding.drafters.select import level_widths, select_nodes
from recspec.decoding.handoff import Frontier, Sampling, Scores, Verdict
from recspec.decoding.tree import DraftTree, Layout, gather_rows, stack_levels

_P = 1_000_003  # hash multiplier (int64 arithmetic wraps; the table and the lookup hash alike)


def context_hash(ctx: torch.Tensor) -> torch.Tensor:
    """(..., c) int64 token contexts -> (...,) int64 hashes (a polynomial in token + 1, wrapping)."""
    h = torch.zeros(ctx.shape[:-1], dtype=torch.int64, device=ctx.device)
    for j in range(ctx.shape[-1]):
        h = h * _P + ctx[..., j] + 1
    return h


@dataclass(frozen=True, eq=False)
class NGramOrder:
    """One order n: the contexts of n - 1 tokens seen and their most frequent continuations."""

    n: int
    keys: torch.Tensor  # (H,) int64 sorted context hashes
    next: torch.Tensor  # (H, W) int64 continuations, most frequent first (-1: none)

    def lookup(self, ctx: torch.Tensor) -> torch.Tensor:
        """(..., >= n - 1) contexts (their last n - 1 tokens are used) -> (..., W) continuations (-1: none)."""
        h = context_hash(ctx[..., ctx.shape[-1] - (self.n - 1):])
        i = torch.searchsorted(self.keys, h.reshape(-1)).clamp(max=max(len(self.keys) - 1, 0))
        hit = self.keys[i] == h.reshape(-1) if len(self.keys) else torch.zeros_like(h.reshape(-1), dtype=torch.bool)
        out = torch.where(hit[:, None], self.next[i], -1) if len(self.keys) else \
            torch.full((h.numel(), self.next.shape[1]), -1, dtype=torch.int64, device=h.device)
        return out.reshape(*h.shape, -1)


@dataclass(frozen=True, eq=False)
class NGramTable:
    """Orders from longest to shortest context; a lookup takes the longest order that has a match."""

    orders: tuple[NGramOrder, ...]

    @property
    def width(self) -> int:
        return int(self.orders[0].next.shape[1])

    @property
    def context(self) -> int:
        """Tokens of context the longest order reads."""
        return self.orders[0].n - 1

    @staticmethod
    def build(sequences: Iterable[Sequence[int]], orders: Sequence[int] = (3, 2), width: int = 4) -> "NGramTable":
        """Count every (context, next token) in `sequences` for each order n (contexts of n - 1 tokens)."""
        seqs = [list(map(int, s)) for s in sequences]
        if not orders or min(orders) < 2 or width < 1:
            raise ValueError(f"n-gram orders must be >= 2 and width >= 1, got orders {tuple(orders)}, width {width}")
        out = []
        for n in sorted(set(orders), reverse=True):
            counts: dict[tuple, Counter] = defaultdict(Counter)
            for s in seqs:
                for i in range(n - 1, len(s)):
                    counts[tuple(s[i - n + 1:i])][s[i]] += 1
            ctx = torch.tensor(list(counts), dtype=torch.int64).reshape(len(counts), n - 1)
            nxt = torch.full((len(counts), width), -1, dtype=torch.int64)
            for r, c in enumerate(counts.values()):
                best = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:width]
                nxt[r, :len(best)] = torch.tensor([t for t, _ in best])
            h = context_hash(ctx)
            order = h.argsort()
            out.append(NGramOrder(n, h[order], nxt[order]))
        return NGramTable(tuple(out))

    def lookup(self, ctx: torch.Tensor) -> torch.Tensor:
        """(..., context) tokens -> (..., W) continuations of the longest matching order (-1: none)."""
        best = None
        for o in self.orders:
            got = o.lookup(ctx)
            best = got if best is None else torch.where((best[..., :1] >= 0), best, got)
        return best

    def to(self, device) -> "NGramTable":
        return NGramTable(tuple(NGramOrder(o.n, o.keys.to(device), o.next.to(device)) for o in self.orders))


@register("ngram")
class NGramDrafter:
    def __init__(self, inputs: DrafterInputs):
        """inputs.table: the NGramTable; inputs.shape.N nodes per tree level. Node scores start from the
        target's cumulative log-probs of the current beams and fall with the continuation's rank, so a
        likelier beam's continuations come first where a level is cut."""
        if inputs.table is None:
            raise ValueError("the ngram drafter needs an n-gram table (DrafterInputs.table)")
        self.constraint, self.N = inputs.constraint, inputs.shape.N
        self.table = inputs.table

    def start(self, prompts: Prompts, layout: Layout) -> None:
        self.prompts, self.layout = prompts, layout
        if self.table.orders[0].keys.device != prompts.tokens.device:
            self.table = self.table.to(prompts.tokens.device)

    def prefill(self) -> None:
        """Nothing to run: the table is the draft."""

    def observe(self, frontier: Frontier, scores: Scores, verdict: Verdict) -> None:
        """No cache."""

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        return ()

    def _contexts(self, f: Frontier) -> torch.Tensor:
        """(B, M, c) the last c tokens before each beam's next one: its prompt, then its tokens so far."""
        c, (B, M, _) = self.table.context, f.codes.shape
        T = self.prompts.tokens.shape[1]
        seq = torch.cat([self.prompts.tokens[:, None].expand(B, M, T), f.codes], dim=2)  # (B, M, T + n)
        end = T + f.level  # (B,) tokens before the next one
        idx = (end[:, None] - c + torch.arange(c, device=end.device)).clamp(min=0)  # (B, c)
        return seq.gather(2, idx[:, None].expand(B, M, c))

    @torch.no_grad()
    def propose(self, frontier: Frontier, depth: int, widths: tuple[int, ...] | None = None,
                sampling: Sampling | None = None) -> DraftTree:
        """Level by level: each node's continuations by the table, the constraint's invalid ones dropped,
        the best `w` of them (top-w; sampling is not supported by a table: its q is not a distribution)."""
        if sampling is not None:
            raise ValueError("the ngram drafter drafts top-N trees: use strict or topk-beta verification")
        ctx, scores, states = self._contexts(frontier), frontier.scores, frontier.states  # (B, M, c), (B, M)
        N, W = self.N, self.table.width
        rank = torch.arange(W, device=scores.device, dtype=scores.dtype)
        levels = []
        for w in level_widths(widths, depth, N):
            nxt = self.table.lookup(ctx)  # (B, P, W)
            ok = (nxt >= 0) & self.constraint.allowed(states, frontier.banned).gather(2, nxt.clamp(min=0))
            cand = torch.where(ok, scores[..., None] - rank, float("-inf"))
            pick, score, _, _ = select_nodes(cand, w, None)  # (B, w) into P * W
            parent, token = pick // W, nxt.flatten(1).gather(1, pick).clamp(min=0)
            levels.append((token, parent, torch.isfinite(score)))
            states = self.constraint.step(gather_rows(states, parent), token)
            ctx = torch.cat([gather_rows(ctx, parent)[..., 1:], token[..., None]], dim=-1)
            scores = score
        tok, par, val = (stack_levels(x, N) for x in zip(*levels))  # (B, d, N)
        ws = level_widths(widths, depth, N)
        return DraftTree(tokens=tok, parents=par, valid=val, fed=ws if any(x < N for x in ws) else None)
