"""Verification rules and tree helpers on hand-built tensors: named cases for the strict rule, the
relaxed rule's guarantees, and a chi-square test that relaxed verification keeps the target's law
(K draws without replacement from p) for a draft that samples from a different q."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from recspec.decoding.tree import dedupe_rows, extend_mask, path_mask
from recspec.decoding.verify import (
    candidate_scores,
    gumbel_topk,
    node_lookup,
    topk_candidates,
    verify_relaxed,
    verify_strict,
)

NEG = float("-inf")


# --- candidate_scores / topk_candidates ---------------------------------------------------------------
def test_invalid_tokens_are_never_chosen():
    """The best raw log-probs sit on disallowed tokens; only allowed ones may come out, and they are
    scored by cumulative log-prob (beam score + token log-prob)."""
    logp = torch.tensor([[[-0.1, -5.0, -2.0, -3.0], [-0.2, -4.0, -1.0, -6.0]]])  # (1, M=2, V=4)
    allowed = torch.tensor([[[False, True, True, True], [False, True, True, False]]])
    scores = torch.tensor([[0.0, -0.5]])  # (1, M)
    cand = candidate_scores(scores, logp, allowed)
    assert torch.isneginf(cand[~allowed]).all()
    torch.testing.assert_close(cand[allowed], (scores[:, :, None] + logp)[allowed])
    parent, token, best = topk_candidates(cand, 5)
    # all 5 allowed candidates, best first: (1,2) -1.5, (0,2) -2, (0,3) -3, (1,1) -4.5, (0,1) -5
    assert parent.tolist() == [[1, 0, 0, 1, 0]] and token.tolist() == [[2, 2, 3, 1, 1]]
    torch.testing.assert_close(best, torch.tensor([[-1.5, -2.0, -3.0, -4.5, -5.0]]))
    assert allowed[0, parent[0], token[0]].all()


def test_candidates_are_numbered_beam_major():
    """Flat candidate m * V + v decodes to (parent m, token v), for every row of a batch."""
    B, M, V = 3, 4, 5
    cand = torch.randn(B, M, V, generator=torch.Generator().manual_seed(0))
    parent, token, best = topk_candidates(cand, M * V)
    assert torch.equal(cand[torch.arange(B)[:, None], parent, token], best)
    assert (best[:, 1:] < best[:, :-1]).all()
    flat_best = cand.reshape(B, M * V).topk(3).indices
    assert torch.equal(parent[:, :3] * V + token[:, :3], flat_best)


# --- node_lookup / verify_strict --------------------------------------------------------------------
M, V = 3, 6  # parents of the drafted level (the target's beams at level 0), vocabulary


def drafted_level():
    """Five drafted nodes (B = 1): (parent, token) = (0,1) (0,4) (1,2) (2,5) and a padding node
    that would be (0,3) if it were valid."""
    parents = torch.tensor([[0, 0, 1, 2, 0]])
    tokens = torch.tensor([[1, 4, 2, 5, 3]])
    valid = torch.tensor([[True, True, True, True, False]])
    return parents, tokens, valid


def test_node_lookup_maps_extensions_to_nodes():
    parents, tokens, valid = drafted_level()
    table = node_lookup(parents, tokens, valid, M, V)  # (1, M * V)
    assert table.shape == (1, M * V)
    want = torch.full((M * V,), -1)
    for n, (p, t) in enumerate([(0, 1), (0, 4), (1, 2), (2, 5)]):
        want[p * V + t] = n
    assert torch.equal(table[0], want)


def test_strict_accepts_when_target_topk_is_inside_the_draft():
    parents, tokens, valid = drafted_level()
    table = node_lookup(parents, tokens, valid, M, V)
    roots = torch.arange(M)[None]  # level 0: the current beams are the tree's roots
    accepted, node = verify_strict(torch.tensor([[1, 0, 2]]), torch.tensor([[2, 1, 5]]), roots, table, V)
    assert accepted.tolist() == [True]
    assert node.tolist() == [[2, 0, 3]]


def test_strict_rejects_when_one_member_is_missing():
    parents, tokens, valid = drafted_level()
    table = node_lookup(parents, tokens, valid, M, V)
    roots = torch.arange(M)[None]
    accepted, node = verify_strict(torch.tensor([[1, 2, 0]]), torch.tensor([[2, 0, 4]]), roots, table, V)
    assert accepted.tolist() == [False]
    assert node.tolist() == [[2, -1, 1]]  # (2, 0) was never drafted


def test_strict_rejects_a_parent_beam_that_is_not_a_tree_node():
    """At a deeper level the target's beams are tree nodes of the level above, or -1 where the target
    kept a beam the draft did not propose: nothing below such a beam was drafted."""
    parents, tokens, valid = drafted_level()
    table = node_lookup(parents, tokens, valid, M, V)
    beam_node = torch.tensor([[2, -1, 0]])  # beam 0 is node 2 above, beam 1 no node, beam 2 node 0
    # (beam 0 -> node 2, token 5) exists as node 3; beam 1's parent node is -1; would alias (0, 0) = none anyway
    accepted, node = verify_strict(torch.tensor([[0, 1]]), torch.tensor([[5, 1]]), beam_node, table, V)
    assert accepted.tolist() == [False]
    assert node.tolist() == [[3, -1]]
    # -1 must not alias: node -1 * V + 1 clamps to column 0; make column 0 a real node and check again
    table2 = node_lookup(torch.tensor([[0, 2]]), torch.tensor([[0, 5]]), torch.tensor([[True, True]]), M, V)
    accepted, node = verify_strict(torch.tensor([[1, 0]]), torch.tensor([[0, 5]]), torch.tensor([[2, -1, 0]]),
                                   table2, V)
    assert accepted.tolist() == [False] and node.tolist() == [[-1, 1]]


def test_padded_and_invalid_nodes_never_match():
    parents, tokens, valid = drafted_level()
    table = node_lookup(parents, tokens, valid, M, V)
    roots = torch.arange(M)[None]
    accepted, node = verify_strict(torch.tensor([[0, 0]]), torch.tensor([[1, 3]]), roots, table, V)
    assert accepted.tolist() == [False] and node.tolist() == [[0, -1]]  # (0, 3) is only a padding node
    # a level of padding only: nothing matches, whatever the tokens
    empty = node_lookup(parents, tokens, torch.zeros_like(valid), M, V)
    assert (empty == -1).all()


def test_strict_rows_are_independent():
    """Batch rows with different trees and verdicts."""
    parents = torch.tensor([[0, 1, 2], [0, 0, 0]])
    tokens = torch.tensor([[0, 0, 0], [3, 4, 5]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    table = node_lookup(parents, tokens, valid, M, V)
    roots = torch.arange(M).expand(2, M)
    accepted, node = verify_strict(torch.tensor([[2, 0], [0, 1]]), torch.tensor([[0, 0], [5, 3]]), roots, table, V)
    assert accepted.tolist() == [True, False]
    assert node.tolist() == [[2, 0], [2, -1]]


# --- gumbel_topk --------------------------------------------------------------------------------------
def test_gumbel_topk_distinct_and_finite():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 12, generator=gen)
    logits[:, ::3] = NEG  # 8 finite entries per row
    for K in (1, 5, 8):
        idx = gumbel_topk(logits, K, gen)
        assert idx.shape == (500, K)
        assert all(len(set(r)) == K for r in idx.tolist())
        assert torch.isfinite(logits.gather(1, idx)).all()


def test_gumbel_topk_first_draw_follows_the_softmax():
    gen = torch.Generator().manual_seed(2)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    first = gumbel_topk(p.log().expand(40_000, -1), 2, gen)[:, 0]
    counts = torch.bincount(first, minlength=4).numpy()
    expected = p.double().numpy()
    assert chisquare(counts, expected / expected.sum() * counts.sum()).pvalue > 1e-3


# --- verify_relaxed: named cases ----------------------------------------------------------------------
def relaxed(logp, logq, N, K, gen, claim=None):
    """Draft N draws without replacement from q = softmax(logq) (over p-space and maybe beyond:
    columns >= logp.shape[1] are outside p-space), then verify. `claim`: the q the verifier is told."""
    X = logp.shape[1]
    draws = gumbel_topk(logq, N, gen)  # (B, N)
    claim = logq if claim is None else claim
    draw_logq = claim.gather(1, draws)
    draws_p = torch.where(draws < X, draws, torch.full_like(draws, -1))
    return verify_relaxed(logp, claim[:, :X].contiguous(), draws_p, draw_logq, K, gen)


def test_relaxed_accepts_every_draw_when_q_equals_p():
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logp = p.log().expand(256, -1).contiguous()
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        draws = gumbel_topk(logp, 3, gen)
        chosen, accepted = verify_relaxed(logp, logp, draws, logp.gather(1, draws), 3, gen)
        assert accepted.all()
        assert torch.equal(chosen, draws)  # accepted in the order drawn


def test_relaxed_never_outputs_a_draw_with_p_zero():
    """Draws outside p-space (-1) or where p = 0 are always rejected; the outputs then come from p."""
    gen = torch.Generator().manual_seed(3)
    B = 2000
    p = torch.tensor([0.0, 0.5, 0.3, 0.2, 0.0])
    logp = p.log().expand(B, -1).contiguous()
    logq = torch.log(torch.full((B, 5), 0.2))
    draws = torch.tensor([[-1, 0, 4]]).expand(B, -1)
    chosen, accepted = verify_relaxed(logp, logq, draws, torch.full((B, 3), np.log(0.2)), 2, gen)
    assert not accepted.any()
    assert (p[chosen] > 0).all()
    assert (chosen[:, 0] != chosen[:, 1]).all()


def test_relaxed_skips_missing_draws():
    """draw_logq = -inf marks no draw: nothing is accepted from it."""
    gen = torch.Generator().manual_seed(4)
    logp = torch.tensor([[0.5, 0.5, 0.0]]).log().expand(100, -1).contiguous()
    draws = torch.tensor([[2, 2]]).expand(100, -1)
    chosen, accepted = verify_relaxed(logp, logp, draws, torch.full((100, 2), NEG), 2, gen)
    assert not accepted.any() and (chosen < 2).all() and (chosen[:, 0] != chosen[:, 1]).all()


@pytest.mark.parametrize("N,K", [(1, 2), (3, 2), (6, 3), (4, 4)])
def test_relaxed_outputs_distinct_and_valid(N, K):
    gen = torch.Generator().manual_seed(5 + N)
    B, X = 3000, 8
    logp = torch.randn(B, X, generator=gen) * 2
    logp[torch.rand(B, X, generator=gen) < 0.3] = NEG
    logp[:, :K] = torch.randn(B, K, generator=gen)  # at least K valid entries per row
    logp = torch.log_softmax(logp, dim=1)
    logq = torch.log_softmax(torch.randn(B, X + 2, generator=gen) * 2, dim=1)  # 2 columns outside p-space
    chosen, _ = relaxed(logp, logq, N, K, gen)
    assert chosen.shape == (B, K)
    assert torch.isfinite(logp.gather(1, chosen)).all()
    assert (chosen.sort(dim=1).values.diff(dim=1) > 0).all()


# --- verify_relaxed: the law it keeps -----------------------------------------------------------------
P_LAW = torch.tensor([0.30, 0.22, 0.18, 0.14, 0.10, 0.06])  # target p over X = 6
Q_LAW = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.20, 0.30])  # a different draft q
ROWS = 20_000


def pair_pvalue(chosen: torch.Tensor, p: torch.Tensor) -> float:
    """Chi-square p-value of ordered pairs (B, 2) against 2 draws without replacement from p:
    P(a, b) = p_a p_b / (1 - p_a)."""
    X = p.shape[0]
    pairs = list(itertools.permutations(range(X), 2))
    expected = np.array([float(p[a] * p[b] / (1 - p[a])) for a, b in pairs])
    counts = np.bincount((chosen[:, 0] * X + chosen[:, 1]).numpy(), minlength=X * X)
    observed = np.array([counts[a * X + b] for a, b in pairs])
    assert observed.sum() == len(chosen)  # never a repeated pair (a, a)
    return float(chisquare(observed, expected / expected.sum() * len(chosen)).pvalue)


@pytest.mark.parametrize("N", [1, 2, 3, 6])
def test_relaxed_keeps_the_target_law(N):
    """N drafts without replacement from q; the K = 2 outputs must be 2 draws without replacement
    from p, in order (N = 1: the second slot always comes from p; N = 6: every sequence drafted)."""
    gen = torch.Generator().manual_seed(10 + N)
    logp = P_LAW.log().expand(ROWS, -1).contiguous()
    chosen, accepted = relaxed(logp, Q_LAW.log().expand(ROWS, -1).contiguous(), N, 2, gen)
    assert pair_pvalue(chosen, P_LAW) > 1e-3
    if N >= 2:
        assert 0.1 < accepted.float().mean() < 0.95  # both paths (accepted / residual) are exercised


def test_relaxed_keeps_the_target_law_with_q_mass_outside_p_space():
    """The draft also proposes 2 sequences the target cannot extend (p = 0): they take q mass and are
    always rejected, and the law over p-space must still be exact."""
    gen = torch.Generator().manual_seed(20)
    q = torch.tensor([0.04, 0.08, 0.12, 0.16, 0.16, 0.24, 0.12, 0.08])  # columns 6, 7 outside p-space
    logp = P_LAW.log().expand(ROWS, -1).contiguous()
    chosen, _ = relaxed(logp, q.log().expand(ROWS, -1).contiguous(), 4, 2, gen)
    assert pair_pvalue(chosen, P_LAW) > 1e-3


def test_the_law_test_has_power():
    """Drafting from Q_LAW while telling the verifier q is uniform breaks the guarantee: the same
    chi-square test must then reject decisively."""
    gen = torch.Generator().manual_seed(30)
    logp = P_LAW.log().expand(ROWS, -1).contiguous()
    logq = Q_LAW.log().expand(ROWS, -1).contiguous()
    chosen, _ = relaxed(logp, logq, 3, 2, gen, claim=torch.full_like(logq, -np.log(6.0)))
    assert pair_pvalue(chosen, P_LAW) < 1e-12


# --- tree helpers ---------------------------------------------------------------------------------------
def test_dedupe_rows():
    x = torch.tensor([[5, 3, 5, 1], [2, 2, 2, 2], [4, 3, 2, 1]])
    uniq, valid, inverse = dedupe_rows(x, fill=-7)
    assert uniq.tolist() == [[1, 3, 5, -7], [2, -7, -7, -7], [1, 2, 3, 4]]
    assert valid.tolist() == [[True, True, True, False], [True, False, False, False], [True] * 4]
    assert torch.equal(uniq.gather(1, inverse), x)
    assert valid.gather(1, inverse).all()


def test_path_mask_is_prompt_plus_path_never_the_sink():
    S, sink = 10, 9  # slots 0..8 + the sink at 9
    keys = torch.zeros(1, S, dtype=torch.bool)
    keys[0, 1:4] = True  # real prompt slots (slot 0 is left padding)
    path = torch.tensor([[[5, 7, sink], [6, sink, sink]]])  # (1, M=2, t=3), sink-padded
    mask = path_mask(keys, path, sink)
    assert mask.shape == (1, 2, S)
    assert torch.nonzero(mask[0, 0]).flatten().tolist() == [1, 2, 3, 5, 7]
    assert torch.nonzero(mask[0, 1]).flatten().tolist() == [1, 2, 3, 6]
    assert torch.equal(keys, path_mask(keys, path, sink)[:, 0] & keys)  # prompt keys unchanged
    # keys without the sink column (S == sink): same answer, the sink column is dropped
    mask2 = path_mask(keys[:, :sink], path, sink)
    assert mask2.shape == (1, 2, sink) and torch.equal(mask2, mask[:, :, :sink])


def test_extend_mask_is_the_parent_view_plus_itself():
    S = 8
    parent_mask = torch.zeros(1, 2, S, dtype=torch.bool)
    parent_mask[0, 0, [0, 1, 4]] = True
    parent_mask[0, 1, [0, 1, 5]] = True
    parents, slots = torch.tensor([[1, 0, 1]]), torch.tensor([[6, 7, 3]])
    mask = extend_mask(parent_mask, parents, slots)
    assert [torch.nonzero(m).flatten().tolist() for m in mask[0]] == [[0, 1, 5, 6], [0, 1, 4, 7], [0, 1, 3, 5]]
    assert parent_mask.sum() == 6  # the parent masks are not modified


# --- rule objects ---------------------------------------------------------------------------------------
def _one_level_tree(parents, tokens, valid):
    """A DraftTree of one level (B = 1) from lists."""
    from recspec.decoding.tree import DraftTree

    t = lambda x, dt=torch.long: torch.tensor([[x]], dtype=dt)  # noqa: E731  (1, d=1, N)
    return DraftTree(tokens=t(tokens), parents=t(parents), valid=t(valid, torch.bool))


def test_rules_are_the_configs_choices():
    from recspec.config import VERIFY_RULES, DecodeConfig
    from recspec.decoding.verify import RULES, RelaxedSampling, StrictTopK, TopKBeta, make_rule

    assert tuple(RULES) == VERIFY_RULES
    assert isinstance(make_rule(DecodeConfig()), StrictTopK) and make_rule(DecodeConfig()).sampling is None
    rule = make_rule(DecodeConfig(verify="relaxed", temperature=0.5))
    assert isinstance(rule, RelaxedSampling) and rule.sampling.temperature == 0.5
    assert make_rule(DecodeConfig(K=1, verify="topk-beta", accept_k=3, accept_beta=0.2)) == TopKBeta(3, 0.2)
    with pytest.raises(ValueError, match="K must be 1"):
        make_rule(DecodeConfig(K=2, verify="topk-beta"))
    with pytest.raises(ValueError, match="verify must be one of"):
        DecodeConfig(verify="greedy")


def test_strict_rule_accepts_a_level_only_when_it_holds_the_target_top_k():
    """Two beams, V = 4. The target's top-2 extensions are (beam 1, token 2) and (beam 0, token 2).
    A level drafting both (among others) is accepted, each new beam pointing at its node; a level
    missing one is not, and the new beams are the target's own either way."""
    from recspec.decoding.verify import StrictTopK

    logp = torch.log_softmax(torch.tensor([[[0.0, -3.0, 1.0, -1.0], [-2.0, -1.0, 2.0, -4.0]]]), dim=-1)
    cand = candidate_scores(torch.tensor([[0.0, -0.2]]), logp, torch.ones(1, 2, 4, dtype=torch.bool))
    beam_node = torch.arange(2)[None]  # level 0: the current beams are the tree's roots
    held = _one_level_tree([0, 1, 0], [3, 2, 2], [True, True, True])
    c = StrictTopK().choose(cand, 2, held, 0, beam_node, torch.tensor([True]))
    assert c.parent.tolist() == [[1, 0]] and c.token.tolist() == [[2, 2]]
    assert c.ok.tolist() == [True] and c.node.tolist() == [[1, 2]]
    missing = _one_level_tree([0, 1, 0], [3, 2, 1], [True, True, True])
    c2 = StrictTopK().choose(cand, 2, missing, 0, beam_node, torch.tensor([True]))
    assert c2.ok.tolist() == [False] and c2.node.tolist() == [[1, -1]]
    assert torch.equal(c2.parent, c.parent) and torch.equal(c2.token, c.token)
    bonus = StrictTopK().choose(cand, 2, held, 1, beam_node, torch.tensor([False]))  # below the tree
    assert bonus.ok.tolist() == [False] and bonus.node.tolist() == [[-1, -1]] and torch.equal(bonus.token, c.token)


def test_relaxed_rule_without_a_tree_is_the_target_sampling_step():
    """No tree level: the rule's K beams are K draws without replacement from the target's cumulative
    log-probs / temperature (gumbel_topk with the same generator state)."""
    from recspec.decoding.verify import RelaxedSampling

    cand = torch.log_softmax(torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    c = RelaxedSampling(0.7, torch.Generator().manual_seed(1)).choose(cand, 3, None, 0, torch.arange(2)[None], torch.ones(3, dtype=torch.bool))
    logits = cand.reshape(3, 10) / 0.7
    want = gumbel_topk(logits - logits.logsumexp(dim=1, keepdim=True), 3, torch.Generator().manual_seed(1))
    assert torch.equal(c.parent * 5 + c.token, want) and not c.ok.any()


def _greedy_case(draft_tokens):
    """One user, one beam, V = 5: target log-probs with ranks 2 > 0 > 3 > 1 > 4 (p = .6, .25, .1, .04, .01)
    and a tree level drafting `draft_tokens` below the current node, in the draft's order."""
    p = torch.tensor([0.25, 0.04, 0.6, 0.1, 0.01])
    cand = (p.log() - 1.0)[None, None]  # (1, 1, 5): a beam score of -1 does not change ranks or p
    n = len(draft_tokens)
    return cand, _one_level_tree([0] * n, draft_tokens, [True] * n)


@pytest.mark.parametrize("draft,k,beta,token,ok", [
    ([2, 0], 2, 0.1, 2, True),   # the draft holds the argmax: greedy's own token, accepted
    ([0, 3], 2, 0.1, 0, True),   # its first choice ranks 2nd with p .25 > .1: kept
    ([0, 3], 1, 0.1, 2, False),  # k = 1: greedy exactly
    ([3, 0], 2, 0.1, 2, False),  # first choice ranks 3rd: the target's argmax
    ([0], 2, 0.3, 2, False),     # p .25 is not above beta .3
    ([3], 3, 0.05, 3, True),     # 3rd with p .1 > .05 under k = 3: kept
])
def test_topk_beta_rule_named_cases(draft, k, beta, token, ok):
    from recspec.decoding.verify import TopKBeta

    cand, tree = _greedy_case(draft)
    c = TopKBeta(k, beta).choose(cand, 1, tree, 0, torch.zeros(1, 1, dtype=torch.long), torch.tensor([True]))
    assert c.token.tolist() == [[token]] and c.ok.tolist() == [ok] and c.parent.tolist() == [[0]]
    if ok:
        assert int(tree.tokens[0, 0, int(c.node)]) == token


def test_topk_beta_with_k_one_is_greedy_on_random_trees():
    from recspec.decoding.verify import StrictTopK, TopKBeta

    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        cand = torch.log_softmax(torch.randn(4, 1, 6, generator=gen), dim=-1)
        tokens = torch.stack([torch.randperm(6, generator=gen)[:3] for _ in range(4)])[:, None]  # (4, 1, 3)
        from recspec.decoding.tree import DraftTree

        tree = DraftTree(tokens=tokens, parents=torch.zeros_like(tokens), valid=torch.ones_like(tokens, dtype=torch.bool))
        args = (cand, 1, tree, 0, torch.zeros(4, 1, dtype=torch.long), torch.ones(4, dtype=torch.bool))
        a, b = TopKBeta(1, 0.0).choose(*args), StrictTopK().choose(*args)
        assert torch.equal(a.token, b.token) and torch.equal(a.ok, b.ok) and torch.equal(a.node, b.node)
