"""Picking a tree level's nodes from scored candidates: the one selection step every drafter shares."""

from __future__ import annotations

import torch

from recspec.decoding.handoff import Sampling
from recspec.decoding.verify import gumbel_topk


def select_nodes(cand: torch.Tensor, n: int, sampling: Sampling | None):
    """cand (B, P, X) cumulative scores of each parent's X extensions (-inf: invalid) -> n nodes:
    flat index parent * X + x (B, n) and score (B, n); with sampling also draws (B, n) (node i is draw i)
    and logq (B, P, X), the draft's sequence distribution (cumulative scores / temperature, normalised).

    Top-n (sampling None) keeps the n best, best first; sampling draws n without replacement from q, in
    the order drawn (Gumbel-top-n)."""
    B, P, X = cand.shape
    flat = cand.reshape(B, P * X)
    n = min(n, P * X)
    if sampling is None:
        score, idx = flat.topk(n, dim=1)
        return idx, score, None, None
    hot = flat / sampling.temperature
    norm = hot.logsumexp(dim=1, keepdim=True)
    logq = torch.where(torch.isfinite(norm), hot - norm, hot)  # finished rows: all -inf
    picks = gumbel_topk(logq, n, sampling.generator)  # (B, n) distinct, in the order drawn
    score = flat.gather(1, picks)
    draws = torch.arange(n, device=cand.device).expand(B, -1)
    return picks, score, draws, logq.reshape(B, P, X)


def level_widths(widths: tuple[int, ...] | None, depth: int, N: int) -> tuple[int, ...]:
    """The nodes a drafter proposes at each of `depth` tree levels: the round plan's widths (None: N each),
    none wider than the tree's N."""
    return tuple(min(w, N) for w in widths) if widths else (N,) * depth
