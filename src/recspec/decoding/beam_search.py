"""Autoregressive constrained beam search, batched over users: the exactness reference.

Scores are cumulative log-probabilities under the model's full softmax (invalid tokens are masked
after normalisation, as Hugging Face's `prefix_allowed_tokens_fn` does). Every item takes L code
steps, one model call each (the prefill and L - 1 decode calls), and its score is the sum of its
code log-probs. With eos=True it also takes the `<eos>` step, an (L+1)-th call whose log-prob is
part of the final score (transformers' `generate` does this); since every item has L codes, that
step only reorders the K items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recspec.data.exclusion import banned_states
from recspec.data.trie import SIDTrie
from recspec.data.vocab import Prompts
from recspec.decoding.verify import gumbel_topk
from recspec.decoding.prompt import ancestor_mask, prefill, prompt_key_mask
from recspec.models.decoder import Decoder


@dataclass(frozen=True)
class BeamResult:
    """K items per user, best first."""

    sids: torch.Tensor  # (B, K) int64 row of trie.sids (-1: no valid item, only if K > the items allowed)
    scores: torch.Tensor  # (B, K) float32 cumulative log-prob of the codes (and <eos>, if it was scored)
    codes: torch.Tensor  # (B, K, L) int64 token ids of the SID codes
    margin: torch.Tensor | None = None  # (B,) smallest gap between the K-th kept and the best dropped candidate


def topk_extensions(scores: torch.Tensor, logp: torch.Tensor, allowed: torch.Tensor, width: int):
    """Best `width` one-token extensions of M beams.

    scores (B, M) cumulative log-probs; logp (B, M, V) next-token log-probs; allowed (B, M, V) bool.
    Returns parent (B, W) beam index, token (B, W), score (B, W) sorted best first. Candidates are
    ordered beam-major (beam m, token v) -> m * V + v, the order ties are broken in."""
    B, M, V = logp.shape
    cand = torch.where(allowed, scores[:, :, None] + logp, torch.full_like(logp, float("-inf")))
    best, idx = cand.reshape(B, M * V).topk(width, dim=-1)
    return idx // V, idx % V, best


def _gather(x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...) -> (B, W, ...) rows chosen by parent (B, W)."""
    idx = parent.reshape(*parent.shape, *([1] * (x.dim() - 2))).expand(*parent.shape, *x.shape[2:])
    return x.gather(1, idx)


def check_width(trie: SIDTrie, K: int) -> None:
    if not 1 <= K <= trie.num_sids:
        raise ValueError(f"K={K} must be between 1 and the number of distinct items ({trie.num_sids})")


def sample_extensions(scores, logp, allowed, width, generator, temperature: float = 1.0):
    """Like `topk_extensions`, but `width` draws without replacement from the softmax of the
    candidates' cumulative log-probs divided by `temperature` (the step of sampling beam search)."""
    B, M, V = logp.shape
    cand = torch.where(allowed, scores[:, :, None] + logp, torch.full_like(logp, float("-inf"))).reshape(B, M * V)
    hot = cand / temperature
    idx = gumbel_topk(hot - hot.logsumexp(dim=1, keepdim=True), width, generator)
    return idx // V, idx % V, cand.gather(1, idx)


def boundary_gap(scores: torch.Tensor, logp: torch.Tensor, allowed: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """How close a top-K step came to another choice: the K-th kept candidate's score minus the best
    dropped one's (B,); +inf when nothing was dropped. Inputs as `topk_extensions`, kept (B, K) scores."""
    B, M, V = logp.shape
    cand = torch.where(allowed, scores[:, :, None] + logp, torch.full_like(logp, float("-inf"))).reshape(B, M * V)
    top = cand.topk(min(kept.shape[1] + 1, M * V), dim=-1).values
    if top.shape[1] <= kept.shape[1]:
        return torch.full((B,), float("inf"), device=cand.device)
    return torch.nan_to_num(kept[:, -1] - top[:, -1], nan=float("inf"), posinf=float("inf"))


@torch.no_grad()
def beam_search(model: Decoder, trie: SIDTrie, prompts: Prompts, K: int, sample: bool = False,
                generator: torch.Generator | None = None, audit: bool = False, temperature: float = 1.0,
                eos: bool = False, exclude: torch.Tensor | None = None) -> BeamResult:
    """prompts (B users) -> their top-K items under the model's constrained beam search.

    eos=True: also score <eos> after the L codes (one more model call), as transformers' generate does.
    exclude (B, U) bool: SID rows user b must not get (`exclusion.history_rows`); the search runs on
    each user's trie of allowed items (`exclusion.banned_states`).

    sample=True: sampling beam search instead: each step keeps K extensions drawn without
    replacement from the softmax of their cumulative log-probs (the law relaxed speculative
    decoding follows); the final list is sorted by cumulative log-prob. temperature < 1 sharpens
    that softmax (towards the top-K search as it goes to 0).
    audit=True (top-K only): also the smallest `boundary_gap` over the steps, to tell a near-tie that
    rounding may flip from a real disagreement when another search's list differs."""
    check_width(trie, K)
    B, T = prompts.tokens.shape
    L, dev = trie.num_levels, prompts.tokens.device
    S = T + L * K
    cache, logp = prefill(model, prompts, S)
    logp = logp[:, None]  # (B, 1, V)
    keys = prompt_key_mask(prompts, S)
    scores = torch.zeros(B, 1, device=dev)
    state = torch.full((B, 1), trie.ROOT, dtype=torch.int64, device=dev)
    codes = torch.zeros(B, 1, 0, dtype=torch.int64, device=dev)
    path = torch.zeros(B, 1, 0, dtype=torch.int64, device=dev)  # (B, M, j) cache slots of each beam's tokens
    margin = torch.full((B,), float("inf"), device=dev)
    banned = banned_states(trie, exclude) if exclude is not None else None  # (B, S)
    steps = L + int(eos)
    for level in range(steps):
        allowed = trie.allowed(state, banned)  # (B, M, V)
        if sample:
            parent, token, scores = sample_extensions(scores, logp, allowed, K, generator, temperature)
        else:
            prev = scores
            parent, token, scores = topk_extensions(prev, logp, allowed, K)
            if audit:
                margin = torch.minimum(margin, boundary_gap(prev, logp, allowed, scores))
        state = trie.step(_gather(state, parent), token)
        codes = torch.cat([_gather(codes, parent), token[..., None]], dim=-1) if level < L else _gather(codes, parent)
        if level + 1 == steps:  # the last step's tokens are never fed
            break
        slots = (T + level * K + torch.arange(K, device=dev)).expand(B, K)
        path = torch.cat([_gather(path, parent), slots[..., None]], dim=-1)  # (B, K, level + 1)
        positions = prompts.lengths[:, None] + level
        logits = model(token, positions.expand(B, K), ancestor_mask(keys, path), cache, slots)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, K, V)
    if sample:  # best first, as in the top-K search
        order = scores.argsort(dim=1, descending=True, stable=True)
        scores, codes = scores.gather(1, order), _gather(codes, order)
    sids = trie.leaf_sid[trie.walk(codes)]
    sids = torch.where(torch.isfinite(scores), sids, torch.full_like(sids, -1))
    return BeamResult(sids=sids, scores=scores, codes=codes, margin=margin if audit and not sample else None)
