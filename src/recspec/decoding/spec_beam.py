"""Speculative beam search (AtSpeed): draft -> score in one target pass -> verify -> commit.

Each round a drafter proposes a tree of d levels x N nodes from the target's current K beams; the
target scores [pending beam tokens | all tree nodes] in ONE forward with tree attention (on the
first round that same pass is the prefill); verification walks down the levels; the accepted
levels and the target's own next level are committed, and the accepted nodes' KV is compacted
into the committed slots. Users advance independently: each has its own level and tree.

Strict verification returns exactly the target's beam search (`beam_search`); relaxed returns
the target's sampling beam search (`sampling_beam_search`) in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recspec.data.trie import SIDTrie
from recspec.data.vocab import Prompts
from recspec.decoding import verify as V_
from recspec.decoding.beam_search import BeamResult, check_width
from recspec.decoding.drafters.base import Drafter, Frontier, Verdict
from recspec.decoding.prompt import prefill_mask, prompt_positions
from recspec.decoding.stats import PhaseClock
from recspec.decoding.tree import DraftTree, Layout, extend_mask, gather_rows, path_mask
from recspec.models.decoder import Decoder


@dataclass
class Beams:
    """The target's K beams per user, and where each user stands."""

    scores: torch.Tensor  # (B, M) cumulative log-probs
    states: torch.Tensor  # (B, M) trie states
    codes: torch.Tensor  # (B, M, L) token ids of the levels produced so far (0-padded)
    path: torch.Tensor  # (B, M, L) committed slots of those tokens (sink-padded)
    level: torch.Tensor  # (B,) levels produced (0..lay.end; lay.end = finished: L, or L + 1 with <eos>)

    def copy_(self, other: "Beams") -> None:
        """In place, so the tensors stay the same objects (static buffers for CUDA graphs)."""
        for name in ("scores", "states", "codes", "path", "level"):
            getattr(self, name).copy_(getattr(other, name))


@torch.no_grad()
def spec_beam_search(target: Decoder, drafter: Drafter | None, trie: SIDTrie, prompts: Prompts, K: int, N: int,
                     gamma: int, verify: str = "strict", generator: torch.Generator | None = None,
                     clock: PhaseClock | None = None, eos: bool = False,
                     exclude: torch.Tensor | None = None) -> tuple[BeamResult, SpecStats]:
    """prompts (B users) -> top-K items per user, and acceptance statistics (eager, any device).

    gamma = 0 (or no drafter) is plain autoregressive beam search through the same loop.
    eos, exclude (B, U) bool: as in `beam_search`."""
    from recspec.decoding.engine import SpecEngine

    engine = SpecEngine(target, drafter, trie, K=K, N=N, gamma=gamma, verify=verify, generator=generator, eos=eos)
    return engine.run(prompts, clock=clock, exclude=exclude)


def check_models(target: Decoder, trie: SIDTrie, K: int, N: int, gamma: int, verify: str) -> None:
    check_width(trie, K)
    if N < K or gamma < 0 or verify not in ("strict", "relaxed"):
        raise ValueError(f"need draft beams N >= K, gamma >= 0, verify strict|relaxed (got N={N}, K={K}, {verify})")
    if target.cfg.vocab_size != trie.vocab_size:
        raise ValueError(f"target vocabulary ({target.cfg.vocab_size}) differs from the SID trie's ({trie.vocab_size})")


def initial_beams(B: int, K: int, L: int, lay: Layout, root: int, device) -> Beams:
    """K beams per user before any level: beam 0 is the empty sequence, the others are dead (-inf)."""
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    return Beams(scores, torch.full((B, K), root, dtype=torch.long, device=device),
                 torch.zeros(B, K, L, dtype=torch.long, device=device),
                 torch.full((B, K, L), lay.sink, dtype=torch.long, device=device),
                 torch.zeros(B, dtype=torch.long, device=device))


def spec_round(target: Decoder, drafter: Drafter | None, trie: SIDTrie, lay: Layout, cache, prompts: Prompts,
               keys: torch.Tensor, beams: Beams, first: bool, d: int, verify: str, generator,
               clock: PhaseClock, eager: bool, widths: tuple[int, ...] | None = None,
               temperature: float = 1.0, banned: torch.Tensor | None = None) -> tuple[Beams, Verdict]:
    """One round: propose -> score (one target pass) -> verify -> commit.

    eager=False (CUDA graphs): shapes depend on (first, d, widths) only. eager=True allows host syncs
    that save work: the target scores only each tree level's valid nodes, verification stops early.
    widths: at most widths[j] drafted nodes at tree level j (static; None: N each).
    temperature (relaxed): target and draft sample from their cumulative log-probs / temperature.
    banned (B, S) bool: trie states each user may not enter (`exclusion.banned_states`; None: none)."""
    frontier = _frontier(beams, lay, not first, banned)
    clock.phase("draft")
    if first and drafter is not None:
        drafter.prefill()
    tree = drafter.propose(frontier, d, verify == "relaxed", generator, widths, temperature) if d else None
    clock.phase("verify")
    logp_beams, logp_tree = _score(target, cache, prompts, keys, lay, frontier, tree, trim=eager)
    beams, verdict = _verify(trie, lay, beams, logp_beams, logp_tree, tree, lay.K, verify, generator, eager, temperature,
                             banned)
    clock.phase("other")
    cache.copy_slots(verdict.copy_src, verdict.copy_dst)
    if drafter is not None:
        drafter.observe(verdict)
    return beams, verdict


def _frontier(beams: Beams, lay: Layout, pending: bool, banned: torch.Tensor | None = None) -> Frontier:
    if not pending:
        return Frontier(None, None, beams.path, beams.scores, beams.states, beams.level, banned)
    lvl = beams.level.clamp(1, lay.L)
    tokens = beams.codes.gather(2, (lvl - 1)[:, None, None].expand(-1, beams.codes.shape[1], 1))[..., 0]
    return Frontier(tokens, lay.committed_slots(lvl), beams.path, beams.scores, beams.states, beams.level, banned)


def _score(target: Decoder, cache, prompts: Prompts, keys, lay: Layout, f: Frontier, tree: DraftTree | None,
           trim: bool = False):
    """ONE target forward over [prompt (first round) or pending beams | tree nodes].

    trim: feed each tree level only up to its last valid node (drafters put valid nodes first; deep
    SID levels branch little, so most of a wide level is padding there). Nodes left out are invalid:
    no accepted path reads them. Returns log-probs after the current beams (B, M, V) and after each
    tree node (B, d, N, V; rows of nodes left out are -inf)."""
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
    logits = target(torch.cat(parts_t, 1), torch.cat(parts_p, 1), torch.cat(parts_m, 1), cache, torch.cat(parts_s, 1))
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp_beams = logp[:, head - 1:head].expand(-1, f.scores.shape[1], -1) if f.pending is None else logp[:, :head]
    logp_tree = _tree_rows(logp[:, head:], widths, lay.N) if tree is not None else None
    return logp_beams, logp_tree


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


def _verify(trie: SIDTrie, lay: Layout, beams: Beams, logp: torch.Tensor, logp_tree, tree: DraftTree | None,
            K: int, mode: str, gen, early_exit: bool = True, temperature: float = 1.0,
            banned: torch.Tensor | None = None) -> tuple[Beams, Verdict]:
    """Level by level: accept while the target's new beams are drafted nodes; commit one more level.
    A user's tree levels stop one short of lay.end: the target's own next level finishes her."""
    B, dev, V = logp.shape[0], logp.device, logp.shape[-1]
    alive = beams.level < lay.end  # users still verifying this round
    d_user = (lay.end - 1 - beams.level).clamp(min=0).clamp(max=tree.depth if tree is not None else 0)
    beam_node = torch.arange(beams.scores.shape[1], device=dev).expand(B, -1)
    src, dst = [], []
    accepted = torch.zeros(B, dtype=torch.long, device=dev)
    j = 0
    while True:
        cand = V_.candidate_scores(beams.scores, logp, trie.allowed(beams.states, banned))  # (B, M, V)
        cand = torch.where(alive[:, None, None], cand, torch.zeros_like(cand))  # finished rows: harmless
        in_tree = alive & (j < d_user)
        parent, token, node, ok = _choose(cand, K, mode, gen, tree, j, beam_node, in_tree, temperature)
        ok = ok & in_tree
        beams = _advance(trie, beams, parent, token, V_.gather_scores(cand, parent * V + token), alive, lay)
        slots_now = lay.committed_slots(beams.level.clamp(1, lay.L))  # (B, K) where this level is committed
        keep = (ok & (beams.level <= lay.L))[:, None]
        src.append(torch.where(keep, lay.tree_base + j * lay.N + node.clamp(min=0), lay.sink))
        dst.append(torch.where(keep, slots_now, lay.sink))
        accepted += ok.long()
        alive = ok
        if tree is None or j >= tree.depth or (early_exit and not bool(alive.any())):  # host sync (eager only)
            break
        logp = gather_rows(logp_tree[:, j], node.clamp(min=0))  # (B, K, V) target log-probs after the new beams
        beam_node, j = node, j + 1
    return beams, Verdict(torch.cat(src, 1), torch.cat(dst, 1), accepted)


def _choose(cand, K, mode, gen, tree: DraftTree | None, j, beam_node, in_tree, temperature: float = 1.0):
    """The target's K new beams at this level: parent, token (B, K), their tree node (B, K) or -1, ok (B,)."""
    B, M, V = cand.shape
    has_level = tree is not None and j < tree.depth
    table = V_.node_lookup(tree.parents[:, j], tree.tokens[:, j], tree.valid[:, j], max(M, tree.tokens.shape[2]), V) if has_level else None
    if mode == "strict":
        parent, token, _ = V_.topk_candidates(cand, K)
        if not has_level:
            return parent, token, torch.full_like(parent, -1), torch.zeros(B, dtype=torch.bool, device=cand.device)
        ok, node = V_.verify_strict(parent, token, beam_node, table, V)
        return parent, token, node, ok
    logp = cand.reshape(B, M * V) / temperature
    logp = logp - logp.logsumexp(dim=1, keepdim=True)
    flat = V_.gumbel_topk(logp, K, gen)  # the target's own sampling step (no tree, or bonus level)
    if has_level:
        q_on_p, draws, draw_logq = _relaxed_inputs(tree, j, beam_node, M, V)
        chosen, _ = V_.verify_relaxed(logp, q_on_p, draws, draw_logq, K, gen)
        flat = torch.where(in_tree[:, None], chosen, flat)
    parent, token = V_.beams_from_flat(flat, V)
    if not has_level:
        return parent, token, torch.full_like(parent, -1), torch.zeros(B, dtype=torch.bool, device=cand.device)
    # accepted when every new beam is a drafted node, drawn or not: the K beams follow the target's law
    # whichever way they were filled, and the tree holds their children's scores either way
    node = _node_of(table, beam_node, parent, token, V)
    return parent, token, node, (node >= 0).all(dim=1)


def _relaxed_inputs(tree: DraftTree, j, beam_node, M, V):
    """Map the draft's level-j distribution and draws onto the target's p-space (B, M * V)."""
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


def _node_of(table, beam_node, parent, token, V):
    pnode = beam_node.gather(1, parent)
    node = table.gather(1, (pnode * V + token).clamp(min=0))
    return torch.where(pnode >= 0, node, -1)


def _advance(trie: SIDTrie, b: Beams, parent, token, score, alive, lay: Layout) -> Beams:
    """Users still alive take their K new beams at level `level + 1`; the others keep theirs."""
    B, K = parent.shape
    lvl = b.level + 1  # (B,)
    codes, path = gather_rows(b.codes, parent), gather_rows(b.path, parent)
    col = (lvl - 1).clamp(max=lay.L - 1)[:, None, None].expand(B, K, 1)
    writes = (lvl <= lay.L)[:, None, None]
    codes = torch.where(writes, codes.scatter(2, col, token[..., None]), codes)
    path = torch.where(writes, path.scatter(2, col, lay.committed_slots(lvl.clamp(max=lay.L))[..., None]), path)
    states = trie.step(b.states.gather(1, parent), token)
    new = Beams(score, states, codes, path, lvl)
    return _where_alive(alive, new, b)


def _where_alive(alive, new: Beams, old: Beams) -> Beams:
    w = lambda a, b: torch.where(alive.reshape(-1, *([1] * (a.dim() - 1))), a, b)  # noqa: E731
    return Beams(w(new.scores, old.scores), w(new.states, old.states), w(new.codes, old.codes),
                 w(new.path, old.path), w(new.level, old.level))
