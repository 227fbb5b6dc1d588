"""One round of speculative beam search (AtSpeed): propose -> score -> verify -> commit.

Each round a drafter proposes a tree of d levels x N nodes from the target's current K beams; the
target scores [pending beam tokens | all tree nodes] in ONE forward with tree attention (on the
first round that same pass is the prefill); verification walks down the levels with a rule object
(verify.py: strict top-K, relaxed sampling); the accepted levels and the target's own next level are
committed, and the accepted nodes' KV is compacted into the committed slots. Users advance
independently: each has its own level and tree. With no drafter (or d = 0) a round is one step of
autoregressive beam search.

Strict verification returns exactly the target's beam search (`beam_search`); relaxed returns the
target's sampling beam search (`sampling_beam_search`) in distribution.

The phases are public and pure of timing: `engine.py` runs them eagerly or captured; a profiler
(`evaluation/timing.py`) can run them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.constraints import Constraint, settle
from recspec.decoding.drafters.base import Drafter
from recspec.decoding.handoff import Beams, Frontier, Scores, Verdict
from recspec.decoding.prompt import prefill_mask, prompt_positions
from recspec.decoding.tree import DraftTree, Layout, extend_mask, gather_rows, path_mask
from recspec.decoding.tree_verify import verify_tree
from recspec.decoding.verify import VerifyRule, candidate_scores, gather_scores
from recspec.models.decoder import Decoder
from recspec.models.kv_cache import KVCache


@dataclass(frozen=True)
class RoundState:
    """What a round reads and writes: the models, the constraint, and the engine's static buffers."""

    target: Decoder
    drafter: Drafter | None  # None: autoregressive (no tree)
    rule: VerifyRule  # strict top-K or relaxed sampling (chosen once, per engine)
    constraint: Constraint  # what may be decoded (the SID trie, an item list, text)
    lay: Layout  # the cache's slot layout
    cache: KVCache  # the target's (B, S) cache
    prompts: Prompts  # (B, T) left-padded prompt buffer
    keys: torch.Tensor  # (B, S) bool: slots holding real prompt tokens
    banned: torch.Tensor | None  # (B, S) bool states a user may not enter (None: none); commit updates it


@dataclass(frozen=True)
class RoundPlan:
    """The shape of one round (static: one CUDA graph per distinct plan)."""

    first: bool  # the round that prefills the prompts
    d: int  # tree depth (0: no tree, one autoregressive step)
    widths: tuple[int, ...] | None = None  # most nodes per tree level (None: N each)


def spec_round(s: RoundState, beams: Beams, plan: RoundPlan, eager: bool) -> tuple[Beams, Verdict]:
    """One round: propose -> score (one target pass) -> verify -> commit.

    eager=False (CUDA graphs, compile): shapes depend on the plan only. eager=True allows host syncs that
    save work: the target scores only each tree level's valid nodes, verification stops early."""
    f = frontier(beams, s.lay, not plan.first, s.banned)
    tree = propose(s, f, plan)
    scores = score(s, f, tree, trim=eager)
    one_pass = s.rule.one_pass(s.lay.K) if tree is not None and s.banned is None else None
    if one_pass is not None:  # greedy over a whole tree: one vectorised pass (tree_verify.py)
        beams, verdict = verify_tree(s.constraint, s.lay, beams, scores, tree, one_pass)
    else:
        beams, verdict = verify(s, beams, scores, tree, early_exit=eager)
    commit(s, f, scores, verdict)
    return finish(s.constraint, beams, s.lay), verdict


def finish(constraint: Constraint, beams: Beams, lay: Layout) -> Beams:
    """Greedy users (K = 1) whose sequence is finished (text after <eos>) jump to the end, their remaining levels filled
    with the constraint's filler, as plain decoding would produce them at no score."""
    done = constraint.finished(beams.states) if lay.K == 1 else None  # (B, 1); beam search keeps its L levels
    if done is None:
        return beams
    stop = done.all(dim=1) & (beams.level < lay.end)  # (B,)
    fill = stop[:, None, None] & (torch.arange(beams.codes.shape[2], device=stop.device) >= beams.level[:, None, None])
    return Beams(beams.scores, beams.states, torch.where(fill, constraint.filler, beams.codes), beams.path,
                 torch.where(stop, lay.end, beams.level))


def frontier(beams: Beams, lay: Layout, pending: bool, banned: torch.Tensor | None = None) -> Frontier:
    """The beams as this round sees them: the newest level's tokens are pending (fed this round) unless
    it is the first round."""
    if not pending:
        return Frontier(None, None, beams.path, beams.scores, beams.states, beams.level, banned, beams.codes)
    lvl = beams.level.clamp(1, lay.L)
    tokens = beams.codes.gather(2, (lvl - 1)[:, None, None].expand(-1, beams.codes.shape[1], 1))[..., 0]
    return Frontier(tokens, lay.committed_slots(lvl), beams.path, beams.scores, beams.states, beams.level, banned,
                    beams.codes)


def propose(s: RoundState, f: Frontier, plan: RoundPlan) -> DraftTree | None:
    """The drafter's tree of plan.d levels (its prefill first, on the first round); None without one."""
    if s.drafter is None:
        return None
    if plan.first:
        s.drafter.prefill()
    return s.drafter.propose(f, plan.d, plan.widths, s.rule.sampling) if plan.d else None


def score(s: RoundState, f: Frontier, tree: DraftTree | None, trim: bool = False) -> Scores:
    """ONE target forward over [prompt (first round) or pending beams | tree nodes].

    trim: feed each tree level only up to its last valid node (drafters put valid nodes first; deep
    SID levels branch little, so most of a wide level is padding there). Nodes left out are invalid:
    no accepted path reads them."""
    lay, keys, prompts = s.lay, s.keys, s.prompts
    B = keys.shape[0]
    beam_mask = path_mask(keys, f.path, lay.sink)  # (B, M, S)
    if f.pending is None:  # first round: the prompt itself, causal
        toks, pos, slots = prompts.tokens, prompt_positions(prompts), torch.arange(lay.T, device=keys.device).expand(B, -1)
        mask = prefill_mask(prompts, lay.slots)
    else:
        toks, pos, slots, mask = f.pending, (prompts.lengths + f.level - 1)[:, None].expand_as(f.pending), f.pending_slots, beam_mask
    head = toks.shape[1]
    parts_t, parts_p, parts_s, parts_m = [toks], [pos], [slots], [mask]
    widths = _tree_widths(tree, trim) if tree is not None else []
    m = beam_mask
    for j, n in enumerate(widths):
        js = lay.tree_slots(j, B, keys.device)[:, :n]
        m = extend_mask(m, tree.parents[:, j, :n].clamp(max=m.shape[1] - 1), js)  # invalid nodes: any parent
        parts_t.append(tree.tokens[:, j, :n])
        parts_p.append((prompts.lengths + f.level + j)[:, None].expand_as(js))
        parts_s.append(js)
        parts_m.append(m)
    logits, hidden = s.target(torch.cat(parts_t, 1), torch.cat(parts_p, 1), torch.cat(parts_m, 1), s.cache,
                              torch.cat(parts_s, 1), with_hidden=True)  # (B, Q, V), (B, Q, C)
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp_beams = logp[:, head - 1:head].expand(-1, f.scores.shape[1], -1) if f.pending is None else logp[:, :head]
    logp_tree = _tree_rows(logp[:, head:], widths, lay.N) if tree is not None else None
    return Scores(beams=logp_beams, tree=logp_tree, hidden=hidden, fed=tuple(widths), prefill=f.pending is None)


def _tree_widths(tree: DraftTree, trim: bool) -> list[int]:
    """Nodes fed per tree level: the drafter's static widths (all N if it set none), or (trim) up to
    the last valid node of any user, at least 1."""
    N = tree.tokens.shape[2]
    if not trim:
        return list(tree.fed) if tree.fed is not None else [N] * tree.depth
    last = (tree.valid * torch.arange(1, N + 1, device=tree.valid.device)).amax(dim=(0, 2))  # (d,)
    return [max(int(w), 1) for w in last.tolist()]  # host sync (eager only): the widths shape the call


def _tree_rows(logp: torch.Tensor, widths: list[int], N: int) -> torch.Tensor:
    """(B, sum(widths), V) -> (B, d, N, V): each level's rows at its node indices, -inf rows for the rest."""
    if all(w == N for w in widths):
        return logp.reshape(logp.shape[0], len(widths), N, -1)
    out = logp.new_full((logp.shape[0], len(widths), N, logp.shape[2]), float("-inf"))
    start = 0
    for j, w in enumerate(widths):
        out[:, j, :w] = logp[:, start:start + w]
        start += w
    return out


def verify(s: RoundState, beams: Beams, scores: Scores, tree: DraftTree | None,
           early_exit: bool = True) -> tuple[Beams, Verdict]:
    """Level by level: the rule picks the target's K new beams; go on while they are all drafted nodes;
    the first level that is not (or the level below the tree) is the target's own and ends the round.
    A user's tree levels stop one short of lay.end: the target's own next level finishes her."""
    lay, logp = s.lay, scores.beams
    B, dev, V = logp.shape[0], logp.device, logp.shape[-1]
    alive = beams.level < lay.end  # users still verifying this round
    d_user = (lay.end - 1 - beams.level).clamp(min=0).clamp(max=tree.depth if tree is not None else 0)
    beam_node = torch.arange(beams.scores.shape[1], device=dev).expand(B, -1)
    nodes, toks, src, dst, banned = [], [], [], [], s.banned
    accepted = torch.zeros(B, dtype=torch.long, device=dev)
    j = 0
    while True:
        cand = candidate_scores(beams.scores, settle(s.constraint, beams.states, logp),
                                s.constraint.allowed(beams.states, banned))  # (B, M, V)
        cand = torch.where(alive[:, None, None], cand, torch.zeros_like(cand))  # finished rows: harmless
        in_tree = alive & (j < d_user)
        c = s.rule.choose(cand, lay.K, tree, j, beam_node, in_tree)
        ok = c.ok & in_tree
        beams = _advance(s.constraint, beams, c.parent, c.token, gather_scores(cand, c.parent * V + c.token), alive, lay)
        banned = s.constraint.advance_bans(banned, beams.states)  # e.g. a list's item just finished
        slots_now = lay.committed_slots(beams.level.clamp(1, lay.L))  # (B, K) where this level is committed
        keep = (ok & (beams.level <= lay.L))[:, None]
        nodes.append(torch.where(keep, c.node, -1))
        toks.append(c.token)
        src.append(torch.where(keep, lay.tree_base + j * lay.N + c.node.clamp(min=0), lay.sink))
        dst.append(torch.where(keep, slots_now, lay.sink))
        accepted += ok.long()
        alive = ok
        if tree is None or j >= tree.depth or (early_exit and not bool(alive.any())):  # host sync (eager only)
            break
        logp = gather_rows(scores.tree[:, j], c.node.clamp(min=0))  # (B, K, V) target log-probs after the new beams
        beam_node, j = c.node, j + 1
    return beams, Verdict(torch.stack(nodes, 1), torch.cat(src, 1), torch.cat(dst, 1), accepted,
                          torch.stack(toks, 1), banned)


def commit(s: RoundState, f: Frontier, scores: Scores, verdict: Verdict) -> None:
    """Move the accepted nodes' KV into their committed slots, in the target's cache; the drafter learns what
    was kept (from the frontier the round started at, and the target's pass: feature drafters read its hidden
    states)."""
    s.cache.copy_slots(verdict.copy_src, verdict.copy_dst)
    if s.banned is not None and verdict.banned is not s.banned:
        s.banned.copy_(verdict.banned)
    if s.drafter is not None:
        s.drafter.observe(f, scores, verdict)


def initial_beams(B: int, K: int, L: int, lay: Layout, root: int, device) -> Beams:
    """K beams per user before any level: beam 0 is the empty sequence, the others are dead (-inf)."""
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    return Beams(scores, torch.full((B, K), root, dtype=torch.long, device=device),
                 torch.zeros(B, K, L, dtype=torch.long, device=device),
                 torch.full((B, K, L), lay.sink, dtype=torch.long, device=device),
                 torch.zeros(B, dtype=torch.long, device=device))


def _advance(constraint: Constraint, b: Beams, parent, token, score, alive, lay: Layout) -> Beams:
    """Users still alive take their K new beams at level `level + 1`; the others keep theirs."""
    B, K = parent.shape
    lvl = b.level + 1  # (B,)
    codes, path = gather_rows(b.codes, parent), gather_rows(b.path, parent)
    col = (lvl - 1).clamp(max=lay.L - 1)[:, None, None].expand(B, K, 1)
    writes = (lvl <= lay.L)[:, None, None]
    codes = torch.where(writes, codes.scatter(2, col, token[..., None]), codes)
    path = torch.where(writes, path.scatter(2, col, lay.committed_slots(lvl.clamp(max=lay.L))[..., None]), path)
    states = constraint.step(b.states.gather(1, parent), token)
    new = Beams(score, states, codes, path, lvl)
    w = lambda a, o: torch.where(alive.reshape(-1, *([1] * (a.dim() - 1))), a, o)  # noqa: E731
    return Beams(*(w(n, o) for n, o in zip(new.tensors(), b.tensors())))
