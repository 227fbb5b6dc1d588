"""A feature-level drafter (EAGLE-2 style): the draft head of models/heads.py on the target's hidden states,
drafting a dynamic tree for greedy speculation (K = 1: lists, text, one item).

Each round has two head passes:
  observe  (after the target's pass) the newly committed tokens, each fed with the target's real feature of
           the token before it (step 0): its keys/values go to the committed slots, and the last one, the
           target's own bonus token, gives the root: the head's feature and log-probs for the next token.
           On the first round the prompt's tokens go through too (the head's prefill).
  propose  the tree: level 0 ranks the root's log-probs; each deeper level feeds the level above's tokens with
           their parents' predicted features (step j + 1 for tree level j) and ranks their children.
The tree is dynamic: node scores are the target's beam score plus the head's cumulative log-probs, below the
first level only the best expand * K nodes of the level above are extended (shape.expand; 0: all), and each
level keeps its best `width` nodes overall. Tokens the constraint does not allow are never proposed.

The first round drafts nothing (every node invalid): the target has computed no feature yet. A round
without a tree (depth 0) still commits through `observe`, so the head never misses a token. Only top-N
drafting (strict and topk-beta verification); the drafted tree reads the head's own keys/values of tree nodes,
which the next round's `observe` recomputes from real features for the nodes that were accepted.
"""

from __future__ import annotations

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.drafters.base import DrafterInputs, register
from recspec.decoding.drafters.select import level_widths, select_nodes
from recspec.decoding.handoff import Frontier, Sampling, Scores, Verdict
from recspec.decoding.prompt import prompt_key_mask, prompt_positions
from recspec.decoding.tree import DraftTree, Layout, extend_mask, gather_rows, stack_levels
from recspec.decoding.verify import candidate_scores
from recspec.errors import CheckpointError

NEG_INF = float("-inf")


def pair_keys(prompts: Prompts, slots: int) -> torch.Tensor:
    """(B, S) bool: the prompt slots holding a head pair: every real prompt token but <bos>, the first (no
    feature precedes it)."""
    T = prompts.tokens.shape[1]
    col = torch.arange(slots, device=prompts.tokens.device)
    return prompt_key_mask(prompts, slots) & (col[None] != (T - prompts.lengths)[:, None])


def committed_mask(keys: torch.Tensor, lay: Layout, upto: torch.Tensor) -> torch.Tensor:
    """keys (B, S); upto (B, J) levels -> (B, J, S): the prompt pairs and the committed tokens of levels
    1..upto (K = 1: level l sits in slot T + l - 1)."""
    col = torch.arange(keys.shape[1], device=keys.device)
    committed = (col >= lay.T) & (col < lay.T + upto[..., None].clamp(max=lay.L))  # (B, J, S)
    return keys[:, None, :] | committed


@register("feature-head")
class FeatureHeadDrafter:
    def __init__(self, inputs: DrafterInputs):
        """inputs.head: the `FeatureHead`; inputs.target: the target it drafts for; inputs.shape: N nodes per
        tree level, expand."""
        head, target, c = inputs.head, inputs.target, inputs.constraint
        if head is None or target is None:
            raise ValueError("the feature-head drafter needs a feature head and the target (DrafterInputs.head, .target)")
        head.check_fits(target)
        if head.cfg.vocab_size != c.vocab_size:
            raise CheckpointError(f"head vocabulary ({head.cfg.vocab_size} tokens) differs from the constraint's "
                                  f"({c.vocab_size})")
        self.head, self.target, self.constraint = head, target, c
        self.N, self.expand = inputs.shape.N, inputs.shape.expand

    def start(self, prompts: Prompts, layout: Layout) -> None:
        """Bind the prompts; allocate the head's cache and the root buffers (reused while the shape holds)."""
        if layout.K != 1:
            raise ValueError(f"the feature-head drafter drafts for greedy decoding (K = 1), got K = {layout.K}")
        B, dev = prompts.tokens.shape[0], prompts.tokens.device
        if getattr(self, "layout", None) != layout or self.cache.k.shape[1] != B:
            C, V = self.head.cfg.hidden_size, self.head.cfg.vocab_size
            self.cache = self.head.new_cache(B, layout.slots)
            self.keys = torch.zeros(B, layout.slots, dtype=torch.bool, device=dev)
            self.root_feat = torch.zeros(B, C, dtype=self.head.fc.weight.dtype, device=dev)  # (B, C)
            self.root_logp = torch.zeros(B, V, device=dev)  # (B, V) fp32
            self.root_ok = torch.zeros(B, dtype=torch.bool, device=dev)  # (B,) a root has been computed
        self.layout, self.prompts = layout, prompts

    def prefill(self) -> None:
        """No head work yet (the target has no feature before its first pass): the prompt's pair mask, and no
        root, so the first round drafts nothing. The prompt goes through the head in that round's `observe`."""
        self.keys.copy_(pair_keys(self.prompts, self.layout.slots))
        self.root_ok.zero_()

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.cache.k, self.cache.v, self.root_feat, self.root_logp, self.root_ok)

    # --- observe: the committed tokens with the target's features ------------------------------------
    def _round_pairs(self, f: Frontier, scores: Scores, verdict: Verdict):
        """This round's committed tokens as head pairs (B, J): the accepted nodes then the bonus token, each with
        the target's feature of the token before it (the pending token's, then the accepted nodes')."""
        lay, fed = self.layout, scores.fed
        tokens, nodes = verdict.tokens[:, :, 0], verdict.nodes[:, :, 0]  # (B, J) K = 1
        B, J = tokens.shape
        base = scores.hidden.shape[1] - sum(fed)  # rows before the tree: the pending tokens, or the prompt
        starts = [base + sum(fed[:j]) for j in range(len(fed))]
        rows = [torch.full_like(nodes[:, 0], base - 1)] + [starts[g] + nodes[:, g].clamp(min=0) for g in range(J - 1)]
        feats = gather_rows(scores.hidden, torch.stack(rows, 1))  # (B, J, C)
        g = torch.arange(J, device=tokens.device)
        level = f.level[:, None] + 1 + g  # (B, J) the level of each pair's token
        pos = self.prompts.lengths[:, None] + level - 1
        live = g[None] <= verdict.accepted[:, None]  # the accepted nodes and the bonus token
        slots = torch.where(live, lay.T + level.clamp(1, lay.L) - 1, lay.sink)  # K = 1: level l at slot T + l - 1
        return tokens, feats, pos, slots, committed_mask(self.keys, lay, level)

    def _prompt_pairs(self, scores: Scores):
        """The prompt's columns 1..T-1 as pairs (B, T - 1), each with the target's feature of the column before,
        causal over the prompt's pairs (pad columns see only themselves)."""
        T, S = self.layout.T, self.layout.slots
        dev = self.keys.device
        q = torch.arange(1, T, device=dev)
        col = torch.arange(S, device=dev)
        mask = ((col[None] <= q[:, None])[None] & self.keys[:, None, :]) | (col[None] == q[:, None])[None]
        B = self.keys.shape[0]
        return (self.prompts.tokens[:, 1:], scores.hidden[:, :T - 1], prompt_positions(self.prompts)[:, 1:],
                q.expand(B, -1), mask)

    @torch.no_grad()
    def observe(self, frontier: Frontier, scores: Scores, verdict: Verdict) -> None:
        """Feed the committed tokens (and on the first round the prompt) -> the head's keys/values, and the root:
        the head's feature and log-probs after the target's bonus token."""
        parts = [self._round_pairs(frontier, scores, verdict)]
        if scores.prefill:
            parts.insert(0, self._prompt_pairs(scores))
        tok, feat, pos, slots, mask = (torch.cat(x, 1) for x in zip(*parts))
        out = self.head.features(self.target, tok, feat, pos, mask, self.cache, slots)  # (B, Q, C) step 0
        bonus = tok.shape[1] - parts[-1][0].shape[1] + verdict.accepted  # (B,) the bonus token's pair
        root = out.gather(1, bonus[:, None, None].expand(-1, 1, out.shape[2]))[:, 0]  # (B, C)
        self.root_feat.copy_(root)
        self.root_logp.copy_(torch.log_softmax(self.target.head(root).float(), dim=-1))
        self.root_ok.fill_(True)

    # --- propose: the dynamic tree --------------------------------------------------------------------
    @torch.no_grad()
    def propose(self, frontier: Frontier, depth: int, widths: tuple[int, ...] | None = None,
                sampling: Sampling | None = None) -> DraftTree:
        """Level by level: the best `w` allowed children of the level above (the root's at level 0), by the
        target's beam score plus the head's cumulative log-probs."""
        if sampling is not None:
            raise ValueError("the feature-head drafter drafts top-N trees: use strict or topk-beta verification")
        lay, N = self.layout, self.N
        scores, states = frontier.scores, frontier.states  # (B, 1)
        B = scores.shape[0]
        logp = torch.where(self.root_ok[:, None], self.root_logp, NEG_INF)[:, None]  # (B, 1, V)
        feat = self.root_feat[:, None]  # (B, 1, C) the parents' features
        mask = committed_mask(self.keys, lay, frontier.level[:, None])  # (B, 1, S) the bonus token's view
        keep = max(1, int(self.expand * scores.shape[1])) if self.expand > 0 else N
        ws = level_widths(widths, depth, N)
        levels = []
        for j, w in enumerate(ws):
            cand = candidate_scores(scores, logp, self.constraint.allowed(states, frontier.banned))  # (B, P, V)
            if j > 0 and keep < cand.shape[1]:  # nodes are best-first: extend the top `keep`
                cand = torch.cat([cand[:, :keep], torch.full_like(cand[:, keep:], NEG_INF)], dim=1)
            pick, score, _, _ = select_nodes(cand, w, None)  # (B, w) into P * V
            parent, token = pick // cand.shape[2], pick % cand.shape[2]
            levels.append((token, parent, torch.isfinite(score)))
            if j + 1 == depth:
                break
            states, scores = self.constraint.step(gather_rows(states, parent), token), score
            slots = lay.tree_slots(j, B, scores.device)[:, :w]
            mask = extend_mask(mask, parent, slots)
            pos = (self.prompts.lengths + frontier.level + j)[:, None].expand(B, w)
            feat = self.head.features(self.target, token, gather_rows(feat, parent), pos, mask, self.cache, slots,
                                      torch.full_like(token, j + 1))  # (B, w, C)
            logp = torch.log_softmax(self.target.head(feat).float(), dim=-1)  # (B, w, V)
        tok, par, val = (stack_levels(x, N) for x in zip(*levels))  # (B, d, N)
        return DraftTree(tokens=tok, parents=par, valid=val, fed=ws if any(x < N for x in ws) else None)
