"""A model-free drafter: the trie's own children, ranked by item popularity.

Where the SID trie is narrow, the best draft is no guess at all: below the first levels the target's K
beams have few children each (`recspec data inspect` prints the fan-out per level), so a tree that holds
every child of every beam is accepted whatever the target prefers. This drafter proposes exactly that,
with no forward pass: a gather from `trie.next_state` and one top-k. Where a level has more children
than the tree's width (typically the levels just below the root), it keeps
those with the highest parent score plus the log-share of training interactions under each child
(a popularity prior), the draft a retrieval pool would make.

Node scores start from the target's cumulative log-probs of the current beams, as in the model
drafter, so a parent the target likes keeps more of its children.
"""

from __future__ import annotations

import torch

from recspec.data.vocab import PAD, Prompts
from recspec.decoding.drafters.base import DrafterInputs, register
from recspec.decoding.drafters.select import level_widths, select_nodes
from recspec.decoding.handoff import Frontier, Sampling, Scores, Verdict
from recspec.decoding.tree import DraftTree, Layout, pad_rows, stack_levels

NEG_INF = float("-inf")


@register("trie")
class TrieDrafter:
    def __init__(self, inputs: DrafterInputs, draws: int | None = 0):
        """inputs.prior: (S,) log P(child | parent) by trie state (`data.popularity.popularity_prior`); None ranks a parent's
        children equally (in code order). It only matters where a level is cut to the tree's width.
        draws (sampling drafts): how many of a level's nodes, in the order drawn from q, relaxed
        verification runs its rejection steps on (None: all). A level holding every child is accepted
        whatever is drawn (the target's own draws all land on nodes), so the default 0 leaves the
        target to sample alone there, without the per-draw loop; draws only help at cut levels."""
        trie, N, prior = getattr(inputs.constraint, "trie", None), inputs.shape.N, inputs.prior
        if trie is None or inputs.constraint.num_levels != trie.num_levels:
            raise ValueError("the trie drafter drafts one item's SID: it needs the SID constraint")
        if draws is not None and draws < 0:
            raise ValueError(f"trie drafter draws must be >= 0 or None, got {draws}")
        self.draws = draws
        S = trie.next_state.shape[0]
        if prior is not None and tuple(prior.shape) != (S,):
            raise ValueError(f"trie drafter prior has shape {tuple(prior.shape)}, the trie has {S} states")
        self.trie, self.N = trie, N
        self.prior = prior.to(trie.next_state.device) if prior is not None else torch.zeros(S)

    def start(self, prompts: Prompts, layout: Layout) -> None:
        dev = prompts.tokens.device
        if self.prior.device != dev:
            self.prior = self.prior.to(dev)
        self.layout = layout

    def prefill(self) -> None:
        """Nothing to run: the trie is the draft."""

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        return ()

    def observe(self, frontier: Frontier, scores: Scores, verdict: Verdict) -> None:
        """No cache to compact."""

    @torch.no_grad()
    def propose(self, frontier: Frontier, depth: int, widths: tuple[int, ...] | None = None,
                sampling: Sampling | None = None) -> DraftTree:
        """Level by level, the children of the level above (the target's beams first), best `w` of them."""
        sample = sampling is not None
        scores, states = frontier.scores, frontier.states  # (B, M)
        N, V = self.N, self.trie.vocab_size
        widths = level_widths(widths, depth, N)
        P = max(N, scores.shape[1])
        levels = []
        for w in widths:
            child, token = self._children(states, frontier.banned)  # (B, P, C)
            C = child.shape[-1]
            cand = torch.where(child >= 0, scores[..., None] + self.prior[child.clamp(min=0)], NEG_INF)
            pick, score, draws, logq = select_nodes(cand, w, sampling)  # (B, w) into P * C
            # a node past the last child has no token: <pad> (level offset + code may pass the vocabulary
            # where a level's codebook is smaller than the widest one, e.g. a disambiguating level)
            tok = torch.where(torch.isfinite(score), token.flatten(1).gather(1, pick), PAD)
            if logq is not None:
                logq = pad_rows(_to_vocab(logq, token, V), P)  # (B, P, V)
            levels.append((tok, pick // C, torch.isfinite(score), draws, logq))
            states = torch.where(torch.isfinite(score), child.flatten(1).gather(1, pick),
                                 torch.full_like(pick, self.trie.end_state))
            scores = score
        tok, par, val, drw, lq = zip(*levels)
        tok, par, val = (stack_levels(x, N) for x in (tok, par, val))  # (B, d, N)
        if sample:  # the first `draws` of each level, in the order drawn (-1: none)
            n = N if self.draws is None else self.draws
            drw = torch.stack([torch.cat([x, x.new_full((x.shape[0], N), -1)], dim=1)[:, :n] for x in drw], dim=1)
        return DraftTree(tokens=tok, parents=par, valid=val, draws=drw if sample else None,
                         logq=torch.stack(lq, dim=1) if sample else None,
                         fed=widths if any(w < N for w in widths) else None)

    def _children(self, states: torch.Tensor, banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, P) -> child states (B, P, C) (-1: none, or one the user may not enter by `banned`
        (B, S)) and their token ids (B, P, C). A leaf's only child is the end state through <eos>; trees
        never reach it."""
        t = self.trie
        child = t.next_state[states]
        ok = (t.depth[states] < t.num_levels)[..., None] & (child >= 0)
        if banned is not None:
            ok = ok & ~banned.gather(1, child.clamp(min=0).flatten(1)).reshape(child.shape)
        child = torch.where(ok, child, torch.full_like(child, -1))
        token = t.level_offset[t.depth[states]][..., None] + torch.arange(child.shape[-1], device=states.device)
        return child, token


def _to_vocab(x: torch.Tensor, token: torch.Tensor, V: int) -> torch.Tensor:
    """x (B, P, C) over child codes, token (B, P, C) their ids -> (B, P, V), -inf elsewhere."""
    B, P, C = x.shape
    out = x.new_full((B, P, V + C), NEG_INF)
    out.scatter_(2, token.clamp(max=V + C - 1), x)
    return out[..., :V]
