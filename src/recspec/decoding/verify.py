"""Verification rules: pure tensor functions (no model, no cache).

Terms. At SID level i the target holds M beams with cumulative log-probs. Its candidates are all
trie-valid one-token extensions of those beams ("p-space", flattened as beam * V + token). A draft
tree level holds N drafted extensions of the draft's own beams. A level is *accepted* when the
target's K new beams are all drafted nodes, so the tree below them holds their children and
verification can go on; at the first level that is not accepted the target's own K beams are
the produced step (strict) or are completed by residual sampling (relaxed), and the round ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from recspec.config import DecodeConfig
from recspec.decoding.handoff import Sampling
from recspec.decoding.tree import DraftTree, gather_rows
from recspec.decoding.tree_verify import FollowRule

NEG_INF = float("-inf")


def candidate_scores(scores: torch.Tensor, logp: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """scores (B, M), logp (B, M, V), allowed (B, M, V) -> (B, M, V) cumulative log-probs (-inf invalid)."""
    return torch.where(allowed, scores[:, :, None] + logp, torch.full_like(logp, NEG_INF))


def topk_candidates(cand: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cand (B, M, V) -> parent (B, K), token (B, K), score (B, K), best first, ties beam-major."""
    B, M, V = cand.shape
    best, idx = cand.reshape(B, M * V).topk(K, dim=-1)
    return idx // V, idx % V, best


def node_lookup(parents: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, M: int, V: int) -> torch.Tensor:
    """A tree level's nodes as a table: (B, N) parents/tokens/valid -> (B, M * V) node index or -1."""
    B, N = parents.shape
    table = torch.full((B, M * V + 1), -1, dtype=torch.int64, device=parents.device)
    flat = torch.where(valid, parents * V + tokens, torch.full_like(tokens, M * V))  # invalid -> dump column
    table.scatter_(1, flat, torch.arange(N, device=parents.device).expand(B, N).clone())
    return table[:, : M * V]


def verify_strict(parent: torch.Tensor, token: torch.Tensor, beam_node: torch.Tensor, table: torch.Tensor,
                  V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Strict top-K rule for one level.

    parent, token (B, K): the target's top-K extensions T_i (parent = index of its current beam);
    beam_node (B, M): the tree node (at the level above) that each current beam is, or -1 (level 0:
    the current beams are the tree's roots, pass arange(M)); table (B, P * V): node_lookup of the
    drafted level D_i, P = parents of that level.
    Returns accepted (B,) bool — T_i is a subset of D_i — and node (B, K): each T_i member's node or -1.
    """
    pnode = beam_node.gather(1, parent)  # (B, K) node of each parent beam in the tree
    flat = (pnode * V + token).clamp(min=0)
    node = torch.where(pnode >= 0, table.gather(1, flat), torch.full_like(pnode, -1))
    return (node >= 0).all(dim=1), node


def gumbel_topk(logits: torch.Tensor, K: int, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, X) -> (B, K) indices: K draws without replacement, each next draw from the
    distribution renormalised over what is left (the Gumbel-top-K trick)."""
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(1e-20, 1.0)
    return (logits - torch.log(-torch.log(u))).topk(K, dim=-1).indices


def verify_relaxed(logp: torch.Tensor, q_on_p: torch.Tensor, draws: torch.Tensor, draw_logq: torch.Tensor,
                   K: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed (sampling) rule for one level: recursive rejection sampling over ordered drafts.

    logp (B, X): the target's normalised log p over p-space; q_on_p (B, X): the draft's log q of the
    same sequences (-inf where the draft could not propose them); draws (B, N): the draft's N draws
    *without replacement* from q, in the order drawn, as p-space indices (-1: outside p-space, p = 0);
    draw_logq (B, N): their log q (-inf: no draw, skipped).

    Outputs are filled slot by slot. Slot s targets p^(s) = p without the outputs of slots < s,
    renormalised; r starts at p^(s). Draw i has the law q_i = q without draws < i, renormalised.
    It is accepted with probability min(1, r(y) / q_i(y)): then it is output s and slot s + 1
    begins with the next draw; on rejection r <- normalise(max(0, r - q_i)). When the draws run out
    the open slot samples from r and the rest from p (Gumbel-top-K, without replacement).
    Guarantee: each draw, given everything before it, follows q_i and is independent of the coins
    so far, so each slot is distributed exactly as p^(s): the K outputs are K draws without
    replacement from p, the law of the target's own sampling beam search step (gumbel_topk on logp).
    Returns chosen (B, K) distinct p-space indices and accepted (B,) bool: all K came from drafts.
    """
    B, X = logp.shape
    dev = logp.device
    p, q = logp.exp(), q_on_p.exp()  # (B, X)
    taken = torch.zeros(B, X, dtype=torch.bool, device=dev)  # outputs so far
    drawn = torch.zeros(B, X, dtype=torch.bool, device=dev)  # drafts so far (inside p-space)
    q_left = torch.ones(B, 1, device=dev)  # q-mass not yet drawn (inside or outside p-space)
    chosen = torch.full((B, K), -1, dtype=torch.int64, device=dev)
    slot = torch.zeros(B, dtype=torch.int64, device=dev)
    r = p.clone()
    for i in range(draws.shape[1]):
        live = (slot < K) & torch.isfinite(draw_logq[:, i])
        y, inside = draws[:, i].clamp(min=0), draws[:, i] >= 0
        qy = draw_logq[:, i].exp() / q_left[:, 0]
        ry = torch.where(inside, r.gather(1, y[:, None])[:, 0], torch.zeros_like(qy))
        accept = live & (torch.rand(B, device=dev, generator=generator) * qy < ry)
        chosen.scatter_(1, slot.clamp(max=K - 1)[:, None], torch.where(accept, y, chosen.gather(1, slot.clamp(max=K - 1)[:, None])[:, 0])[:, None])
        taken |= accept[:, None] & (torch.arange(X, device=dev)[None] == y[:, None])
        q_i = torch.where(drawn, torch.zeros_like(q), q) / q_left
        rejected = _normalise((r - q_i).clamp(min=0), fallback=r)
        fresh = _normalise(torch.where(taken, torch.zeros_like(p), p), fallback=r)
        r = torch.where(accept[:, None], fresh, torch.where(live[:, None], rejected, r))
        slot = slot + accept.long()
        drawn |= (live & inside)[:, None] & (torch.arange(X, device=dev)[None] == y[:, None])
        q_left = torch.where(live[:, None], (q_left - draw_logq[:, i:i + 1].exp()).clamp(min=1e-30), q_left)
    return _finish(chosen, slot, r, logp, taken, K, generator)


def _finish(chosen, slot, r, logp, taken, K, generator):
    """Slots the drafts did not fill: the open one from its residual r, the rest from p without replacement."""
    p, ok = logp.exp(), slot >= K
    left = _normalise(torch.where(taken, torch.zeros_like(r), r), fallback=p)
    open_pick = gumbel_topk(left.log(), 1, generator)[:, 0]  # one draw from the residual (graph-safe)
    s = slot.clamp(max=K - 1)
    chosen = chosen.scatter(1, s[:, None], torch.where(ok, chosen.gather(1, s[:, None])[:, 0], open_pick)[:, None])
    taken = taken | (~ok[:, None] & (torch.arange(p.shape[1], device=p.device)[None] == open_pick[:, None]))
    logits = torch.where(taken, torch.full_like(logp, NEG_INF), logp)
    rest = gumbel_topk(logits, K, generator)  # (B, K): fills slots after the open one, in order
    col = torch.arange(K, device=p.device)[None]
    fill = rest.gather(1, (col - s[:, None] - 1).clamp(min=0))
    chosen = torch.where(~ok[:, None] & (col > s[:, None]), fill, chosen)
    return chosen, ok


def _normalise(x: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of x (B, X) scaled to sum 1; rows summing to ~0 become `fallback` (or stay)."""
    total = x.sum(dim=1, keepdim=True)
    ok = total > 1e-12
    out = x / torch.where(ok, total, torch.ones_like(total))
    return out if fallback is None else torch.where(ok, out, fallback)


def beams_from_flat(flat: torch.Tensor, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p-space indices (B, K) -> parent beam (B, K), token (B, K)."""
    return flat // V, flat % V


def gather_scores(cand: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """cand (B, M, V), flat (B, K) -> (B, K) cumulative scores of the chosen extensions."""
    return cand.reshape(cand.shape[0], -1).gather(1, flat)


# --- rules: how one level's K new beams are chosen, and whether the tree holds them -------------------
@dataclass(frozen=True)
class Choice:
    """One level's verdict: the target's K new beams and whether the drafted level held them all."""

    parent: torch.Tensor  # (B, K) index of each new beam's parent among the current beams
    token: torch.Tensor  # (B, K) its token id
    node: torch.Tensor  # (B, K) its node in the tree level (-1: not drafted, or no tree level)
    ok: torch.Tensor  # (B,) bool: every new beam is a drafted node (the level is accepted)


class VerifyRule(Protocol):
    """Chosen once per engine (`make_rule`); the round calls `choose` level by level and never asks which
    rule it holds."""

    sampling: Sampling | None  # how drafters draft for this rule: None top-N, else N draws from q

    def one_pass(self, K: int) -> FollowRule | None:
        """The rule as a one-pass greedy tree verification (`tree_verify`), or None where it has none."""

    def choose(self, cand: torch.Tensor, K: int, tree: DraftTree | None, j: int, beam_node: torch.Tensor,
               in_tree: torch.Tensor) -> Choice:
        """cand (B, M, V) cumulative log-probs of the one-token extensions (-inf: invalid); tree level j
        (None, or j past its depth: the target's own bonus level); beam_node (B, M) the tree node (level
        j - 1) each current beam is, or -1; in_tree (B,) users whose tree reaches level j."""


def _target_only(parent: torch.Tensor, token: torch.Tensor) -> Choice:
    """A level with no tree: the target's own choice, no node, not accepted."""
    return Choice(parent, token, torch.full_like(parent, -1),
                  torch.zeros(parent.shape[0], dtype=torch.bool, device=parent.device))


def _level_table(tree: DraftTree | None, j: int, M: int, V: int) -> torch.Tensor | None:
    """Tree level j as a node_lookup table (B, P * V), or None where the tree has no level j."""
    if tree is None or j >= tree.depth:
        return None
    return node_lookup(tree.parents[:, j], tree.tokens[:, j], tree.valid[:, j], max(M, tree.tokens.shape[2]), V)


@dataclass(frozen=True)
class StrictTopK:
    """The target's K best extensions (its beam search step); the level is accepted when the tree holds
    them all. Output: exactly the target's beam search."""

    sampling: Sampling | None = None

    def one_pass(self, K: int) -> FollowRule | None:
        return FollowRule(k=1) if K == 1 else None

    def choose(self, cand, K, tree, j, beam_node, in_tree) -> Choice:
        B, M, V = cand.shape
        table = _level_table(tree, j, M, V)
        parent, token, _ = topk_candidates(cand, K)
        if table is None:
            return _target_only(parent, token)
        ok, node = verify_strict(parent, token, beam_node, table, V)
        return Choice(parent, token, node, ok)


@dataclass(frozen=True, eq=False)
class RelaxedSampling:
    """K draws without replacement from the target's cumulative log-probs / temperature (its sampling beam
    search step), filled from the draft's draws by recursive rejection sampling (`verify_relaxed`).
    Output: the target's sampling beam search, in distribution."""

    temperature: float = 1.0  # target and draft sample from their cumulative log-probs / temperature
    generator: torch.Generator | None = None  # None: torch's global RNG (compiled and captured rounds)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.generator)

    def one_pass(self, K: int) -> FollowRule | None:
        return None

    def choose(self, cand, K, tree, j, beam_node, in_tree) -> Choice:
        B, M, V = cand.shape
        table = _level_table(tree, j, M, V)
        logp = cand.reshape(B, M * V) / self.temperature
        logp = logp - logp.logsumexp(dim=1, keepdim=True)
        flat = gumbel_topk(logp, K, self.generator)  # the target's own sampling step (no tree, or bonus level)
        if table is not None:
            q_on_p, draws, draw_logq = relaxed_inputs(tree, j, beam_node, M, V)
            chosen, _ = verify_relaxed(logp, q_on_p, draws, draw_logq, K, self.generator)
            flat = torch.where(in_tree[:, None], chosen, flat)
        parent, token = beams_from_flat(flat, V)
        if table is None:
            return _target_only(parent, token)
        # accepted when every new beam is a drafted node, drawn or not: the K beams follow the target's law
        # whichever way they were filled, and the tree holds their children's scores either way
        node = node_of(table, beam_node, parent, token, V)
        return Choice(parent, token, node, (node >= 0).all(dim=1))


@dataclass(frozen=True)
class TopKBeta:
    """LASER's relaxed greedy rule (K = 1): at each level the output is the target's greedy token, unless the
    draft's own first choice there (its first drafted child of the current node) is within the target's
    top `k` tokens and has probability above `beta` (the target's, renormalised over the allowed tokens):
    then the draft's token is kept. k = 1 is greedy exactly. The level is accepted when its output is a
    drafted node."""

    k: int = 2  # the draft's token may rank up to k-th under the target
    beta: float = 0.1  # and must have at least this probability
    sampling: Sampling | None = None

    def one_pass(self, K: int) -> FollowRule | None:
        return FollowRule(self.k, self.beta)

    def choose(self, cand, K, tree, j, beam_node, in_tree) -> Choice:
        B, M, V = cand.shape
        table = _level_table(tree, j, M, V)
        parent, token, _ = topk_candidates(cand, 1)  # (B, 1) the target's greedy token
        if table is None:
            return _target_only(parent, token)
        node = node_of(table, beam_node, parent, token, V)  # (B, 1) the greedy token's node, or -1
        mine = tree.valid[:, j] & (tree.parents[:, j] == beam_node[:, :1])  # (B, N) drafted children here
        first = mine.int().argmax(dim=1, keepdim=True)  # (B, 1) the draft's first choice
        d_tok = tree.tokens[:, j].gather(1, first)
        d_logit = cand[:, 0].gather(1, d_tok)  # (B, 1) its cumulative score under the target
        rank = 1 + (cand[:, 0] > d_logit).sum(dim=1, keepdim=True)
        p = (d_logit - cand[:, 0].logsumexp(dim=1, keepdim=True)).exp()
        take = mine.any(dim=1, keepdim=True) & (node < 0) & (self.k > 1) & (rank <= self.k) & (p > self.beta) \
            & in_tree[:, None]  # a level past the user's tree (her last, the target's own) is greedy
        token, node = torch.where(take, d_tok, token), torch.where(take, first, node)
        return Choice(parent, token, node, (node >= 0).all(dim=1))


# config.VERIFY_RULES: name -> the rule, from the decoding config and the sampling generator
RULES = {"strict": lambda cfg, generator: StrictTopK(),
         "relaxed": lambda cfg, generator: RelaxedSampling(float(cfg.temperature), generator),
         "topk-beta": lambda cfg, generator: TopKBeta(cfg.accept_k, cfg.accept_beta)}


def make_rule(cfg: DecodeConfig, generator: torch.Generator | None = None) -> VerifyRule:
    """cfg.verify -> its rule object (a new rule: one class above and one entry in RULES)."""
    if cfg.verify not in RULES:
        raise ValueError(f"unknown verification rule {cfg.verify!r}; choose from {', '.join(RULES)}")
    if cfg.verify == "topk-beta" and cfg.K != 1:
        raise ValueError(f"verify topk-beta is a greedy rule: K must be 1, got {cfg.K}")
    return RULES[cfg.verify](cfg, generator)


def relaxed_inputs(tree: DraftTree, j: int, beam_node: torch.Tensor, M: int, V: int):
    """The draft's level-j distribution and draws on the target's p-space (B, M * V): q_on_p (B, M * V),
    draws (B, n) p-space indices (-1: outside), draw_logq (B, n) (-inf: no draw)."""
    B, P = beam_node.shape[0], tree.logq.shape[2]
    logq = tree.logq[:, j]  # (B, P, V) over extensions of the draft's parents at this level
    known = beam_node >= 0
    q_on_p = torch.where(known[..., None], gather_rows(logq, beam_node.clamp(min=0)), float("-inf")).reshape(B, M * V)
    beam_of = torch.full((B, P + 1), -1, dtype=torch.long, device=beam_node.device)
    beam_of.scatter_(1, torch.where(known, beam_node, P), torch.arange(M, device=beam_node.device).expand(B, M).clone())
    node = tree.draws[:, j].clamp(min=0)  # (B, n) node index of each draw (-1: no draw)
    par, tok = tree.parents[:, j].gather(1, node), tree.tokens[:, j].gather(1, node)
    k = beam_of.gather(1, par)
    draws = torch.where(k >= 0, k * V + tok, -1)
    draw_logq = logq.reshape(B, P * V).gather(1, par * V + tok)
    real = tree.valid[:, j].gather(1, node) & (tree.draws[:, j] >= 0)
    draw_logq = torch.where(real, draw_logq, float("-inf"))  # on an invalid node, or none: no draw
    return q_on_p, draws, draw_logq


def node_of(table: torch.Tensor, beam_node: torch.Tensor, parent: torch.Tensor, token: torch.Tensor, V: int):
    """The tree node (B, K) of each chosen extension (parent, token), or -1 (`node_lookup` table)."""
    pnode = beam_node.gather(1, parent)
    node = table.gather(1, (pnode * V + token).clamp(min=0))
    return torch.where(pnode >= 0, node, -1)


__all__ = ["candidate_scores", "topk_candidates", "node_lookup", "verify_strict", "gumbel_topk",
           "verify_relaxed", "beams_from_flat", "gather_scores", "gather_rows", "Choice", "VerifyRule", "StrictTopK",
           "RelaxedSampling", "TopKBeta", "RULES", "make_rule"]
