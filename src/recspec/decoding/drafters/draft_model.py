"""A small draft model of the target's architecture and vocabulary, drafting by beam search.

Its cache has the target's layout, so committing accepted nodes is the same slot copy in both.
Node scores start from the target's cumulative log-probs of the current beams and add the
draft's own log-probs, so the draft ranks extensions the way the target would if it agreed.

A draft with a PAD module (models/pad.py) is fed each token's step index: 0 for the prompt and the pending
beam tokens, j + 1 for a token drafted at tree level j (an accepted node keeps the keys/values it was drafted
with, as `training/unrolled.py` trains it).
"""

from __future__ import annotations

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.drafters.base import DrafterInputs, register
from recspec.decoding.drafters.select import level_widths, select_nodes
from recspec.decoding.handoff import Frontier, Sampling, Scores, Verdict
from recspec.decoding.prompt import prefill, prompt_key_mask
from recspec.decoding.tree import DraftTree, Layout, extend_mask, gather_rows, pad_rows, path_mask, stack_levels
from recspec.decoding.verify import candidate_scores
from recspec.errors import CheckpointError


@register("draft-model")
class DraftModelDrafter:
    def __init__(self, inputs: DrafterInputs):
        """A draft checkpoint (inputs.model) drafting inputs.shape's tree. shape.expand: below the first
        drafted level, top-N drafting extends only the draft's best expand * K nodes of the level above
        (0: all N). Deep SID levels branch little, so plain top-N fills the tree with the only children of
        unlikely parents and drops the second children of the likely ones, which the target's top-K needs."""
        model, constraint = inputs.model, inputs.constraint
        if model is None:
            raise ValueError("the draft-model drafter needs a draft model")
        if model.cfg.vocab_size != constraint.vocab_size:
            raise CheckpointError(f"draft vocabulary ({model.cfg.vocab_size} tokens) differs from the constraint's "
                                  f"({constraint.vocab_size})")
        self.model, self.constraint, self.N, self.expand = model, constraint, inputs.shape.N, inputs.shape.expand

    def start(self, prompts: Prompts, layout: Layout) -> None:
        """Bind the prompts and allocate the draft's cache (reused while the shape holds)."""
        B = prompts.tokens.shape[0]
        if getattr(self, "layout", None) != layout or self.cache.k.shape[1] != B:
            self.cache = self.model.new_cache(B, layout.slots)
            self.root_logp = torch.zeros(B, self.model.cfg.vocab_size, device=prompts.tokens.device)
            self.keys = torch.zeros(B, layout.slots, dtype=torch.bool, device=prompts.tokens.device)
        self.layout, self.prompts, self.lengths = layout, prompts, prompts.lengths

    def prefill(self) -> None:
        """The prompts through the draft: its cache, and its log-probs of the first level."""
        _, logp = prefill(self.model, self.prompts, self.layout.slots, cache=self.cache)
        self.root_logp.copy_(logp)
        self.keys.copy_(prompt_key_mask(self.prompts, self.layout.slots))  # (B, S)

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        """Tensors a round mutates (restored around CUDA-graph warm-up)."""
        return (self.cache.k, self.cache.v)

    def observe(self, frontier: Frontier, scores: Scores, verdict: Verdict) -> None:
        self.cache.copy_slots(verdict.copy_src, verdict.copy_dst)

    def _frontier_logp(self, f: Frontier) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs (B, M, V) after each current beam, and the beams' attention masks (B, M, S)."""
        mask = path_mask(self.keys, f.path, self.layout.sink)
        if f.pending is None:
            return self.root_logp[:, None], mask
        pos = self.lengths[:, None] + f.level[:, None] - 1
        logits = self.model(f.pending, pos.expand_as(f.pending), mask, self.cache, f.pending_slots)
        return torch.log_softmax(logits.float(), dim=-1), mask

    @torch.no_grad()
    def propose(self, frontier: Frontier, depth: int, widths: tuple[int, ...] | None = None,
                sampling: Sampling | None = None) -> DraftTree:
        sample = sampling is not None
        logp, mask = self._frontier_logp(frontier)
        scores, states = frontier.scores, frontier.states
        B, V, N = scores.shape[0], logp.shape[-1], self.N
        widths = level_widths(widths, depth, N)
        P = max(N, scores.shape[1])
        levels: list[tuple] = []
        keep = min(N, int(self.expand * frontier.scores.shape[1])) if self.expand > 0 else N
        for j, w in enumerate(widths):
            cand = candidate_scores(scores, logp, self.constraint.allowed(states, frontier.banned))  # (B, M, V)
            if j > 0 and not sample and keep < cand.shape[1]:  # nodes are best-first: extend the top `keep`
                cand = torch.cat([cand[:, :keep], torch.full_like(cand[:, keep:], float("-inf"))], dim=1)
            pick, score, draws, logq = select_nodes(cand, w, sampling)  # (B, w) into M * V
            parent, token = pick // V, pick % V
            levels.append((token, parent, torch.isfinite(score), draws, pad_rows(logq, P)))
            states = self.constraint.step(gather_rows(states, parent), token)
            scores = score
            slots = self.layout.tree_slots(j, B, scores.device)[:, :w]
            mask = extend_mask(mask, parent, slots)
            pos = (self.lengths + frontier.level + j)[:, None].expand(B, w)
            steps = None if self.model.pad is None else torch.full_like(token, j + 1)  # (B, w) draft depths
            if j + 1 < depth:
                logits = self.model(token, pos, mask, self.cache, slots, steps=steps)
                logp = torch.log_softmax(logits.float(), dim=-1)
            else:  # KV only: if this last level is accepted, `observe` copies it and the next round reads it
                self.model.hidden(token, pos, mask, self.cache, slots, steps)
        tok, par, val, drw, lq = zip(*levels)
        tok, par, val = (stack_levels(x, N) for x in (tok, par, val))  # (B, d, N)
        drw = stack_levels(drw, N, first_pad=True)
        lq = torch.stack(lq, dim=1) if sample else None  # (B, d, P, V)
        return DraftTree(tokens=tok, parents=par, valid=val, draws=drw, logq=lq,
                         fed=widths if any(w < N for w in widths) else None)
