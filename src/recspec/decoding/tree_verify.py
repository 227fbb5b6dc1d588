"""Greedy verification of a whole draft tree in one pass (K = 1): what `round.verify` does level by level,
vectorised over the tree's nodes, so a round costs a handful of kernels instead of one generic top-K step
per level.

Terms. Rows are the tree's possible parents: row 0 is the user's current sequence (the root), row
1 + j*N + n is node (j, n). A node is *followed* when the rule would output its token after its parent:
  greedy   its token is the target's best allowed token after the parent (`topk(1)` of the cumulative
           scores, as `greedy.greedy_decode` takes it);
  top-k/β  (LASER, `verify.TopKBeta`) or, where no child of the parent is the greedy token, it is the
           parent's first drafted child, ranks within the target's top k and has probability > β.
The *accepted path* starts at the root and steps to a followed child while there is one (the first, if
several: duplicates carry the same token, hence the same KV); its length a is the round's accepted levels.
The *bonus* token is the target's greedy token after the path's last node; a + 1 tokens are committed.

Cumulative scores are summed level by level exactly as the level-by-level verification sums them, so the
greedy choice sees the same floating-point values and the output equals plain greedy decoding.
Per-user bans that grow while decoding (a list's finished items) are not applied inside the tree: the
round uses this pass only where there are none (`round.spec_round`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recspec.decoding.constraints import Constraint, settle
from recspec.decoding.handoff import Beams, Scores, Verdict
from recspec.decoding.tree import DraftTree, Layout


@dataclass(frozen=True)
class FollowRule:
    """The greedy rules a one-pass verification can apply (k = 1: greedy exactly)."""

    k: int = 1  # a drafted first child may rank up to k-th under the target
    beta: float = 0.0  # ... and must have a target probability above beta


def parent_rows(tree: DraftTree) -> torch.Tensor:
    """(B, d, N) the row of each node's parent: 0 (the root) on level 0, else 1 + (j - 1) * N + parent."""
    B, d, N = tree.tokens.shape
    base = (torch.arange(d, device=tree.tokens.device) - 1).clamp(min=0) * N + 1  # (d,)
    return torch.where(torch.arange(d, device=base.device)[None, :, None] == 0, torch.zeros_like(tree.parents),
                       base[None, :, None] + tree.parents)


def row_states(constraint: Constraint, root: torch.Tensor, tree: DraftTree, prow: torch.Tensor) -> torch.Tensor:
    """root (B,) the current state -> (B, 1 + d*N) the constraint state after each row's sequence."""
    B, d, N = tree.tokens.shape
    states = [root[:, None]]
    for j in range(d):
        rows = torch.cat(states, dim=1)
        states.append(constraint.step(rows.gather(1, prow[:, j]), tree.tokens[:, j]))
    return torch.cat(states, dim=1)


def row_scores(logp: torch.Tensor, root: torch.Tensor, tree: DraftTree, prow: torch.Tensor) -> torch.Tensor:
    """logp (B, R, V) masked log-probs after each row, root (B,) the current cumulative score ->
    (B, R) cumulative score of each row's sequence (summed level by level, as verification sums them)."""
    B, d, N = tree.tokens.shape
    V = logp.shape[2]
    scores = [root[:, None]]
    for j in range(d):
        rows = torch.cat(scores, dim=1)
        step = logp.reshape(B, -1).gather(1, prow[:, j] * V + tree.tokens[:, j])  # (B, N)
        scores.append(rows.gather(1, prow[:, j]) + step)
    return torch.cat(scores, dim=1)


def followed(cand: torch.Tensor, tree: DraftTree, prow: torch.Tensor, rule: FollowRule) -> torch.Tensor:
    """cand (B, R, V) cumulative scores of each row's extensions (-inf: not allowed) -> (B, d, N) bool: the
    nodes the rule follows from their parent (see the module docstring)."""
    B, d, N = tree.tokens.shape
    R, V = cand.shape[1], cand.shape[2]
    top = cand.topk(max(rule.k, 1), dim=-1)  # (B, R, k)
    flat_p = prow.reshape(B, d * N)
    greedy = top.indices[..., 0].gather(1, flat_p).reshape(B, d, N)
    follow = tree.valid & (tree.tokens == greedy)
    if rule.k <= 1:
        return follow
    same = (prow[..., :, None] == prow[..., None, :]) & tree.valid[..., None, :]  # (B, d, N, N) siblings m of n
    earlier = torch.ones(N, N, dtype=torch.bool, device=cand.device).tril(-1)  # m < n
    first = tree.valid & ~(same & earlier).any(dim=-1)
    greedy_kid = (same & follow[..., None, :]).any(dim=-1)  # the parent has a followed greedy child
    mine = cand.reshape(B, R * V).gather(1, flat_p * V + tree.tokens.reshape(B, d * N)).reshape(B, d, N)
    kth = top.values[..., -1].gather(1, flat_p).reshape(B, d, N)
    lse = cand.logsumexp(dim=-1).gather(1, flat_p).reshape(B, d, N)
    loose = first & ~greedy_kid & (mine >= kth) & ((mine - lse).exp() > rule.beta)
    return follow | loose


def accepted_path(follow: torch.Tensor, prow: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """follow (B, d, N), depth (B,) tree levels each user may accept -> (nodes (B, d): the path's node per
    level, -1 past its end; end (B,): the row of its last node, 0 = the root)."""
    B, d, N = follow.shape
    cur = torch.zeros(B, dtype=torch.long, device=follow.device)
    alive = depth > 0
    nodes = []
    for j in range(d):
        kids = follow[:, j] & (prow[:, j] == cur[:, None]) & (alive & (j < depth))[:, None]  # (B, N)
        hit = kids.any(dim=1)
        n = kids.int().argmax(dim=1)
        nodes.append(torch.where(hit, n, -1))
        cur = torch.where(hit, 1 + j * N + n, cur)
        alive = alive & hit
    return torch.stack(nodes, dim=1), cur


def verify_tree(constraint: Constraint, lay: Layout, beams: Beams, scores: Scores, tree: DraftTree,
                rule: FollowRule) -> tuple[Beams, Verdict]:
    """One pass over the whole tree for K = 1 users (no growing bans): the accepted path and the bonus token;
    the same beams and verdict as `round.verify` level by level, with J = d + 1 verified levels."""
    B, d, N = tree.tokens.shape
    V = scores.beams.shape[2]
    prow = parent_rows(tree)
    logp = torch.cat([scores.beams[:, :1], scores.tree.reshape(B, d * N, V)], dim=1)  # (B, R, V)
    states = row_states(constraint, beams.states[:, 0], tree, prow)  # (B, R)
    allowed = constraint.allowed(states)  # (B, R, V)
    logp = torch.where(allowed, settle(constraint, states, logp), torch.full_like(logp, float("-inf")))
    score = row_scores(logp, beams.scores[:, 0], tree, prow)  # (B, R)
    cand = torch.where(allowed, score[..., None] + logp, torch.full_like(logp, float("-inf")))
    live = beams.level < lay.end
    depth = torch.where(live, (lay.end - 1 - beams.level).clamp(min=0, max=d), torch.zeros_like(beams.level))
    nodes, end = accepted_path(followed(cand, tree, prow, rule), prow, depth)
    a = (nodes >= 0).sum(dim=1)  # (B,) accepted levels
    best = cand.gather(1, end[:, None, None].expand(B, 1, V))[:, 0].topk(1, dim=-1)  # the bonus, greedily
    return _commit_path(constraint, lay, beams, tree, nodes, a, best.indices[:, 0], best.values[:, 0],
                        states.gather(1, end[:, None])[:, 0], live)


def _commit_path(constraint: Constraint, lay: Layout, beams: Beams, tree: DraftTree, nodes: torch.Tensor,
                 a: torch.Tensor, bonus: torch.Tensor, bonus_score: torch.Tensor, end_state: torch.Tensor,
                 live: torch.Tensor) -> tuple[Beams, Verdict]:
    """Write the a accepted tokens and the bonus at levels level + 1 .. level + a + 1 of live users."""
    B, d, N = tree.tokens.shape
    dev, L = nodes.device, lay.L
    t = torch.arange(d + 1, device=dev)[None]  # (1, J) verified level index
    node_tok = tree.tokens.gather(2, nodes.clamp(min=0)[..., None])[..., 0]  # (B, d)
    toks = torch.cat([node_tok, bonus[:, None]], dim=1)  # (B, J)
    toks = torch.where(t == a[:, None], bonus[:, None], toks)
    write = (t <= a[:, None]) & live[:, None]  # (B, J) levels committed this round
    kept = (t < a[:, None]) & live[:, None]  # ... whose node's KV moves into the committed slots
    pos = torch.where(write, beams.level[:, None] + t, torch.full_like(t, L)).clamp(max=L)  # L: a dump column
    slot = lay.committed_slots((beams.level[:, None] + t + 1).clamp(max=L).reshape(-1)).reshape(B, d + 1)
    codes = torch.cat([beams.codes[:, 0], beams.codes.new_zeros(B, 1)], 1).scatter(1, pos, toks)[:, :L]
    path = torch.cat([beams.path[:, 0], beams.path.new_zeros(B, 1)], 1).scatter(1, pos, slot)[:, :L]
    state = torch.where(live, constraint.step(end_state, bonus), beams.states[:, 0])
    new = Beams(scores=torch.where(live, bonus_score, beams.scores[:, 0])[:, None], states=state[:, None],
                codes=codes[:, None], path=path[:, None], level=torch.where(live, beams.level + a + 1, beams.level))
    src = torch.where(kept[:, :d], lay.tree_base + torch.arange(d, device=dev) * N + nodes.clamp(min=0), lay.sink)
    src = torch.cat([src, torch.full_like(src[:, :1], lay.sink)], dim=1)
    dst = torch.where(kept, slot, torch.full_like(slot, lay.sink))
    out_nodes = torch.cat([torch.where(kept[:, :d], nodes, -1), torch.full_like(nodes[:, :1], -1)], dim=1)
    return new, Verdict(out_nodes[..., None], src, dst, torch.where(live, a, torch.zeros_like(a)), toks[..., None], None)
