"""Plain greedy decoding under any constraint: the reference that greedy tree speculation must equal.

One model call per token: the best allowed next token (the constraint's mask, the user's bans), fed back
at the next position. This is the engine's K = 1 strict search without a tree, written out plainly and
kept apart from the engine on purpose (the engine is tested against it).
"""

from __future__ import annotations

import torch

from recspec.data.trie import SIDTrie
from recspec.data.vocab import Prompts
from recspec.decoding.beam_search import BeamResult
from recspec.decoding.constraints import Constraint, as_constraint, settle
from recspec.decoding.prompt import ancestor_mask, prefill, prompt_key_mask
from recspec.decoding.verify import candidate_scores, topk_candidates
from recspec.models.decoder import Decoder


@torch.no_grad()
def greedy_decode(model: Decoder, constraint: Constraint | SIDTrie, prompts: Prompts,
                  exclude: torch.Tensor | None = None) -> BeamResult:
    """prompts (B) -> each user's greedy sequence of constraint.num_levels tokens: codes (B, 1, n), its
    score (B, 1) (sum of the chosen tokens' log-probs) and what it means, `constraint.outputs` (B, 1, ...).
    exclude (B, U) bool: SID rows a user may not get (as in `beam_search`)."""
    c = as_constraint(constraint)
    B, T = prompts.tokens.shape
    n, dev = c.num_levels, prompts.tokens.device
    slots = T + n
    cache, logp = prefill(model, prompts, slots)  # (B, V) after the prompt
    keys = prompt_key_mask(prompts, slots)
    bans = c.initial_bans(exclude, B, dev)
    state = torch.full((B, 1), c.ROOT, dtype=torch.int64, device=dev)
    score = torch.zeros(B, 1, device=dev)
    tokens = []
    for j in range(n):
        cand = candidate_scores(score, settle(c, state, logp[:, None]), c.allowed(state, bans))  # (B, 1, V)
        _, token, score = topk_candidates(cand, 1)  # (B, 1) the best allowed token
        state = c.step(state, token)
        bans = c.advance_bans(bans, state)
        tokens.append(token)
        if j + 1 == n:  # the last token is never fed
            break
        slot = torch.full((B, 1), T + j, dtype=torch.int64, device=dev)
        path = (T + torch.arange(j + 1, device=dev)).expand(B, 1, -1)  # (B, 1, j + 1) the tokens so far
        logits = model(token, (prompts.lengths + j)[:, None], ancestor_mask(keys, path), cache, slot)
        logp = torch.log_softmax(logits[:, 0].float(), dim=-1)  # (B, V)
    codes = torch.stack(tokens, dim=-1)  # (B, 1, n)
    return BeamResult(sids=c.outputs(codes), scores=score, codes=codes)
