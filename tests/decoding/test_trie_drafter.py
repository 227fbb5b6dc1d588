"""The model-free trie drafter: strict speculative beam search with it is the target's beam search
on Beauty users; a tree that holds every child of the target's beams is accepted whatever the
target; a cut level keeps the best children by parent score + popularity prior; the prior is a
normalised log-share of training interactions; relaxed mode with it follows the target's sampling
beam search; unknown drafter names are refused."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from recspec.data.popularity import popularity_prior
from recspec.data.sids import SIDIndex, resolve_collisions
from recspec.data.trie import SIDTrie, build_trie
from recspec.data.vocab import Prompts, Vocab, build_prompts
from recspec.decoding.beam_search import beam_search
from recspec.decoding.drafters import DraftModelDrafter, TrieDrafter, make_drafter
from recspec.decoding.handoff import Frontier, Sampling
from recspec.decoding.engine import SpecEngine
from recspec.decoding.round import RoundPlan
from recspec.decoding.tree import DraftTree
from spec_checks import (ATOL, BATCH, ROOT, ROWS, TARGET, TOY, check_items, decode, inputs, levels_table,
                         outcome_counts, root_codes, root_widths)

# Fixtures `beauty` and `reference` come from conftest.py.

SINGLES = 5  # users decoded one at a time per batch-1 strict case (batch-32 cases: one batch each)
CALL_BATCHES = 2  # ... per target in the target-calls test
TOY_ROWS = ROWS // 2  # rows of the relaxed-mode law tests (the power check shows they suffice)


def fan_out(trie: SIDTrie) -> torch.Tensor:
    """(S,) code children per trie state (a leaf's <eos> step is no code)."""
    has = (trie.next_state >= 0).sum(dim=1)
    return torch.where(trie.depth < trie.num_levels, has, torch.zeros_like(has))


def node_paths(tree: DraftTree, b: int) -> list[dict[tuple[int, ...], int]]:
    """User b's valid nodes per tree level as {(root beam, token, token, ...): node index}, following
    parents; also checks that valid nodes come first and extend valid nodes of the level above."""
    out: list[dict[tuple[int, ...], int]] = []
    for j in range(tree.depth):
        valid = tree.valid[b, j]
        n = int(valid.sum())
        assert valid[:n].all() and not valid[n:].any(), f"level {j}: valid nodes are not the leading ones"
        level = {}
        for i in range(n):
            parent, token = int(tree.parents[b, j, i]), int(tree.tokens[b, j, i])
            if j == 0:
                level[(parent, token)] = i
            else:
                above = [p for p, k in out[j - 1].items() if k == parent]
                assert len(above) == 1, f"level {j} node {i} extends an invalid node"
                level[above[0] + (token,)] = i
        assert len(level) == n, f"level {j}: duplicate nodes"
        out.append(level)
    return out


# --- strict: the target's beam search, whatever the tree's shape ----------------------------------------
FULL = (ROOT, 24, 64, 64)  # every level-1 code; room for the children of 10 level-2 beams
CASES = [  # (K, N, gamma, depths, widths, fixed shapes, prior, batch, eos)
    (1, 96, 2, (1, 2, 2), FULL, False, "pop", BATCH, False), (10, 96, 2, (1, 2, 2), FULL, False, "pop", 1, True),
    (5, 40, 3, (), (), False, "pop", BATCH, True), (20, 40, 1, (), (), False, "flat", 1, False),
    (10, 40, 3, (), (30, 12), False, "pop", BATCH, False), (1, 40, 2, (), (30, 12), False, "pop", 1, False),
    (20, 64, 2, (), (64, 10, 30, 10), True, "pop", BATCH, True), (5, 96, 2, (1, 2, 2), FULL, True, "flat", 1, False),
]
BATCH_CASES = [c for c in CASES if c[-2] == BATCH]


@pytest.mark.parametrize("K,N,gamma,depths,widths,fixed,prior,batch,eos", CASES,
                         ids=[f"K{c[0]}-N{c[1]}-g{c[2]}-d{''.join(map(str, c[3]))}-w{'_'.join(map(str, c[4]))}"
                              f"-{'fixed' if c[5] else 'eager'}-{c[6]}-b{c[7]}-{'eos' if c[8] else 'noeos'}" for c in CASES])
def test_strict_equals_beam_search(beauty, reference, K, N, gamma, depths, widths, fixed, prior, batch, eos):
    case = (K, N, gamma, depths, widths, fixed, prior, batch, eos)
    L, widths = beauty.trie.num_levels, root_widths(widths, beauty.trie)
    pop = popularity_prior(beauty.trie, beauty.train) if prior == "pop" else None
    width = max(p.tokens.shape[1] for p in beauty.prompts(batch))
    which = [BATCH_CASES.index(case)] if batch == BATCH else range(SINGLES)  # batch-32 cases: a batch each
    pairs = list(zip([beauty.prompts(batch)[b] for b in which], reference(K, batch, which, eos)))
    root_fits = int(fan_out(beauty.trie)[beauty.trie.ROOT]) <= min((widths or (N,))[0], N)
    for b, (prompts, want) in enumerate(pairs):
        engine = SpecEngine(beauty.target, TrieDrafter(inputs(beauty.trie, N, prior=pop)), beauty.trie, decode(K=K, N=N, gamma=gamma, depths=depths, widths=widths, fixed_shapes=fixed, prompt_width=width if fixed else None, eos=eos))
        got, stats = engine.run(prompts)
        check_items(beauty.trie, beauty.vocab, got)
        same = (got.sids == want.sids).all(dim=1)
        assert same.all(), f"batch {b}: users {torch.nonzero(~same).flatten().tolist()} differ from beam search"
        assert torch.equal(got.codes, want.codes)
        torch.testing.assert_close(got.scores, want.scores, atol=ATOL, rtol=0)
        acc, _ = levels_table(stats, L, max((gamma, *depths)), eos)
        if root_fits:  # the first round's tree holds every level-1 code
            assert (acc[:, 0] >= 1).all(), "a tree holding every level-1 code must be accepted at level 1"
        assert (acc > 0).any(), "the trie's children were never accepted"


def level2_beams(target, trie: SIDTrie, prompts, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's K beams after two SID levels (plain beam search, two rounds of the AR engine):
    states (B, K) and whether each beam is live (B, K)."""
    engine = SpecEngine(target, None, trie, decode(K=K, N=K, gamma=0))
    engine.load(prompts)
    engine.round(RoundPlan(first=True, d=0))
    engine.round(RoundPlan(first=False, d=0))
    assert (engine.beams.level == 2).all()
    return engine.beams.states.clone(), torch.isfinite(engine.beams.scores)


def descendants(trie: SIDTrie, levels: int) -> list[torch.Tensor]:
    """[(S,) code descendants j levels below each state, for j = 1..levels]."""
    fan = fan_out(trie)
    code = (trie.next_state >= 0) & (trie.depth < trie.num_levels)[:, None]  # (S, C) code edges
    out = [fan]
    for _ in range(levels - 1):
        out.append(torch.where(code, out[-1][trie.next_state.clamp(min=0)], 0).sum(dim=1))
    return out


@pytest.mark.parametrize("seed,eos", [(1, False), (11, True)])
def test_a_tree_holding_every_child_takes_two_target_calls(beauty, make_decoder, seed, eos):
    """depths (1, 2, D), widths FULL (N past its end): round 1 drafts every level-1 code, round 2 every
    descendant of the target's 10 level-2 beams down to level L - 1 (D = L - 3: the target's own level L
    ends the search) or, with eos, down to the leaves (D = L - 2: <eos> is the target's own step). Where
    they fit the widths, the tree holds every child and both rounds are accepted whatever the target's
    weights: 2 target calls per user."""
    trie, L = beauty.trie, beauty.trie.num_levels
    K, N, depths, full = 10, 96, (1, 2, L - 2 if eos else L - 3), root_widths(FULL, trie)
    target = beauty.target if seed == 1 else make_decoder(beauty.vocab, seed=seed, **TARGET)
    below = descendants(trie, L - 2)  # below[j - 1]: descendants at SID level 2 + j of a level-2 state
    widths = full + (N,) * (L - len(full))  # the tree's width at SID level l is widths[l - 1]
    assert int(below[0][trie.ROOT]) <= full[0] <= N and L >= len(full)
    prior = popularity_prior(trie, beauty.train)
    for prompts in beauty.batched[:CALL_BATCHES]:
        states, live = level2_beams(target, trie, prompts, K)
        assert live.all()
        last = L if eos else L - 1  # the deepest SID level round 2 drafts
        fits = torch.stack([(below[j - 1][states] * live).sum(dim=1) <= widths[1 + j] for j in range(1, last - 1)]).all(0)
        engine = SpecEngine(target, TrieDrafter(inputs(trie, N, prior=prior)), trie,
                            decode(K=K, N=N, gamma=2, depths=depths, widths=full, eos=eos))
        _, stats = engine.run(prompts)
        levels_table(stats, L, max(depths), eos)
        calls = stats.target_calls()
        assert (calls[fits] == 2).all(), f"users {torch.nonzero(fits & (calls != 2)).flatten().tolist()} took more calls"
        assert fits.all(), f"users {torch.nonzero(~fits).flatten().tolist()} have more children than the widths"


# --- the popularity prior ------------------------------------------------------------------------------
# TOY plus item 7, which had item 0's SID: resolved as loading resolves it, the two share the prefix (0, 0)
# (item 7's interactions count for that prefix too) and differ in the disambiguating level
SHARED = resolve_collisions(SIDIndex(codes=np.concatenate([TOY.codes, [[0, 0]]]), level_sizes=TOY.level_sizes,
                                     prefixes=TOY.prefixes))
HISTORIES = [[0, 0, 1], [3, 7, 0], [5], [0, 3]]


def expected_prior(index: SIDIndex, histories, smoothing: float) -> dict[tuple[int, ...], float]:
    """{SID prefix: log P(prefix | its parent)} from add-`smoothing` counts of interactions under each prefix."""
    count = Counter(i for h in histories for i in h)
    under: Counter = Counter()
    prefixes = {tuple(c[:d]) for c in index.codes.tolist() for d in range(1, index.num_levels + 1)}
    for item, codes in enumerate(index.codes.tolist()):
        for d in range(1, index.num_levels + 1):
            under[tuple(codes[:d])] += count[item]
    out = {}
    for p in prefixes:
        siblings = [s for s in prefixes if len(s) == len(p) and s[:-1] == p[:-1]]
        out[p] = float(np.log(under[p] + smoothing) - np.log(sum(under[s] + smoothing for s in siblings)))
    return out


def state_of(trie: SIDTrie, vocab: Vocab, prefix: tuple[int, ...]) -> int:
    offsets = vocab.level_offsets()
    return int(trie.walk(torch.tensor([offsets[i] + c for i, c in enumerate(prefix)])))


@pytest.mark.parametrize("smoothing", [1.0, 0.5])
def test_popularity_prior_is_the_log_share_of_interactions(smoothing):
    vocab = Vocab.for_index(SHARED)
    trie = build_trie(SHARED, vocab)
    prior = popularity_prior(trie, HISTORIES, smoothing)
    assert prior.shape == (trie.next_state.shape[0],)
    want = expected_prior(SHARED, HISTORIES, smoothing)
    for prefix, logp in want.items():
        assert float(prior[state_of(trie, vocab, prefix)]) == pytest.approx(logp, abs=1e-5), prefix
    assert float(prior[trie.ROOT]) == 0.0
    # more interactions under a child, higher prior than its siblings with fewer
    count = Counter(i for h in HISTORIES for i in h)
    under = Counter({p: 0 for p in want})
    for item, codes in enumerate(SHARED.codes.tolist()):
        for d in range(1, SHARED.num_levels + 1):
            under[tuple(codes[:d])] += count[item]
    pairs = [(a, b) for a in want for b in want if len(a) == len(b) and a[:-1] == b[:-1] and under[a] > under[b]]
    assert len(pairs) >= 3
    for a, b in pairs:
        assert prior[state_of(trie, vocab, a)] > prior[state_of(trie, vocab, b)], (a, b)


def check_normalised(trie: SIDTrie, prior: torch.Tensor) -> None:
    """exp(prior) over the children of every state with children sums to 1."""
    code = (trie.next_state >= 0) & (trie.depth < trie.num_levels)[:, None]  # (S, C)
    probs = torch.where(code, prior[trie.next_state.clamp(min=0)].double().exp(), 0).sum(dim=1)
    has = code.any(dim=1)
    assert has.sum() > 1
    torch.testing.assert_close(probs[has], torch.ones_like(probs[has]), atol=1e-5, rtol=0)


def test_popularity_prior_normalises_over_children(beauty):
    check_normalised(beauty.trie, popularity_prior(beauty.trie, beauty.train))
    vocab = Vocab.for_index(SHARED)
    check_normalised(build_trie(SHARED, vocab), popularity_prior(build_trie(SHARED, vocab), HISTORIES))


def test_prior_of_another_shape_is_refused():
    trie = build_trie(TOY, Vocab.for_index(TOY))
    S = trie.next_state.shape[0]
    with pytest.raises(ValueError, match=re.escape(f"({S + 1},)")):
        TrieDrafter(inputs(trie, 4, prior=torch.zeros(S + 1)))
    with pytest.raises(ValueError, match="draws"):
        TrieDrafter(inputs(trie, 4), draws=-1)


# --- a cut level keeps the best children ------------------------------------------------------------------
# 11 items over 3 levels (3, 3, 2 codes)
TOY3 = SIDIndex(codes=np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 2, 1], [1, 0, 0], [1, 0, 1], [1, 1, 1],
                                [2, 0, 0], [2, 1, 0], [2, 1, 1], [2, 2, 0]]), level_sizes=(3, 3, 2), prefixes=("a", "b", "c"))


def best_children(index: SIDIndex, prior: dict[tuple[int, ...], float], roots: list[tuple[tuple[int, ...], float]],
                  widths: tuple[int, ...]) -> list[set[tuple]]:
    """Reference drafter: per level, the `w` best (parent score + prior) children of the level above,
    as node paths (root beam, token, ...) with tokens as the vocabulary writes them."""
    offsets = Vocab.for_index(index).level_offsets()
    valid = {tuple(c[:d]) for c in index.codes.tolist() for d in range(1, index.num_levels + 1)}
    level = [((k,), prefix, score) for k, (prefix, score) in enumerate(roots) if np.isfinite(score)]
    out = []
    for w in widths:
        cand = [(path + (offsets[len(prefix)] + c,), prefix + (c,), score + prior[prefix + (c,)])
                for path, prefix, score in level for c in range(max(index.level_sizes)) if prefix + (c,) in valid]
        scores = sorted((s for _, _, s in cand), reverse=True)
        assert len(scores) <= w or scores[w - 1] > scores[w], "a tie at the cut: pick other scores"
        level = sorted(cand, key=lambda x: -x[2])[:w]
        out.append({path for path, _, _ in level})
    return out


@pytest.mark.parametrize("widths,N", [((3, 4), 5), ((2, 2), 2), ((5, 5), 5), ((1, 3), 4)])
def test_a_cut_level_keeps_the_best_children(widths, N):
    """Hand-set beam scores and prior: each tree level holds the best `w` children of the level above."""
    vocab = Vocab.for_index(TOY3)
    trie = build_trie(TOY3, vocab)
    prefixes = sorted({tuple(c[:d]) for c in TOY3.codes.tolist() for d in (1, 2, 3)})
    gen = torch.Generator().manual_seed(0)
    values = -3 * torch.rand(len(prefixes), generator=gen, dtype=torch.float64)  # distinct: no ties
    prior_of = dict(zip(prefixes, values.tolist()))
    prior = torch.zeros(trie.next_state.shape[0])
    for p, v in prior_of.items():
        prior[state_of(trie, vocab, p)] = v
    # user 0: two level-1 beams; user 1: one live level-1 beam (the other dead, -inf)
    beams = [[((0,), -0.3), ((2,), -0.9)], [((1,), -0.2), ((0,), float("-inf"))]]
    states = torch.tensor([[state_of(trie, vocab, p) for p, _ in user] for user in beams])
    scores = torch.tensor([[s for _, s in user] for user in beams], dtype=torch.float32)
    frontier = Frontier(None, None, torch.zeros(2, 2, 3, dtype=torch.long), scores, states, torch.ones(2, dtype=torch.long))
    drafter = TrieDrafter(inputs(trie, N, prior=prior))
    tree = drafter.propose(frontier, len(widths), widths)
    assert tree.tokens.shape == (2, len(widths), N)
    assert tree.fed == (widths if any(w < N for w in widths) else None)
    for b, user in enumerate(beams):
        want = best_children(TOY3, {p: float(prior[state_of(trie, vocab, p)]) for p in prior_of}, user, widths)
        got = node_paths(tree, b)
        assert [set(level) for level in got] == want, f"user {b}"


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_a_sampled_level_carries_the_law_it_was_drawn_from(temperature):
    """sample=True: level j's logq is log-softmax((node score + prior) / temperature) over every child of
    the level above (node score: the beam's score plus the priors on its path), at (parent, token);
    its nodes are distinct valid children, node i being draw i."""
    vocab = Vocab.for_index(TOY3)
    trie = build_trie(TOY3, vocab)
    offsets = vocab.level_offsets()
    valid = {tuple(c[:d]) for c in TOY3.codes.tolist() for d in (1, 2, 3)}
    prior = -3 * torch.rand(trie.next_state.shape[0], generator=torch.Generator().manual_seed(1))
    beams = [((0,), -0.3), ((2,), -0.9)]  # one user, two level-1 beams
    frontier = Frontier(None, None, torch.zeros(1, 2, 3, dtype=torch.long), torch.tensor([[s for _, s in beams]]),
                        torch.tensor([[state_of(trie, vocab, p) for p, _ in beams]]), torch.ones(1, dtype=torch.long))
    N, widths = 5, (3, 4)
    tree = TrieDrafter(inputs(trie, N, prior=prior), draws=None).propose(
        frontier, 2, widths, Sampling(temperature, torch.Generator().manual_seed(2)))
    assert tree.logq.shape == (1, 2, N, trie.vocab_size) and tree.draws.shape == (1, 2, N)
    level = [(prefix, score) for prefix, score in beams]  # (prefix, node score) of the level's parents, by row
    for j, w in enumerate(widths):
        want = torch.full((N, trie.vocab_size), float("-inf"), dtype=torch.float64)
        cand = {(r, offsets[len(p)] + c): (s + float(prior[state_of(trie, vocab, p + (c,))])) / temperature
                for r, (p, s) in enumerate(level) for c in range(3) if p + (c,) in valid}
        norm = torch.logsumexp(torch.tensor(list(cand.values()), dtype=torch.float64), dim=0)
        for (r, t), x in cand.items():
            want[r, t] = x - norm
        torch.testing.assert_close(tree.logq[0, j].double(), want, atol=1e-5, rtol=0)
        assert torch.equal(tree.draws[0, j], torch.tensor(list(range(w)) + [-1] * (N - w)))
        assert tree.valid[0, j, :w].all() and not tree.valid[0, j, w:].any()
        nodes = [(int(tree.parents[0, j, i]), int(tree.tokens[0, j, i])) for i in range(w)]
        assert len(set(nodes)) == w and all(n in cand for n in nodes)
        level = [(level[r][0] + (t - offsets[len(level[r][0])],), cand[r, t] * temperature) for r, t in nodes]


def test_first_round_cut_keeps_the_most_popular_codes(beauty):
    """The root's codes cut to 30, then 12: the kept nodes are the best by prior."""
    trie, N, widths = beauty.trie, 40, (30, 12, 40)
    assert root_codes(trie) > widths[0]  # the cut binds
    prior = popularity_prior(trie, beauty.train)
    drafter = TrieDrafter(inputs(trie, N, prior=prior))
    engine = SpecEngine(beauty.target, drafter, trie, decode(K=10, N=N, gamma=3, widths=widths[:2]))
    engine.load(beauty.batched[0])
    tree = drafter.propose(engine.frontier(first=True), 3, widths)
    assert tree.fed == widths
    B = tree.tokens.shape[0]
    offsets = torch.tensor(beauty.vocab.level_offsets())
    root_children = trie.next_state[trie.ROOT][trie.next_state[trie.ROOT] >= 0]  # (root_codes(trie),)
    best = prior[root_children].topk(widths[0]).values
    level0 = trie.next_state[trie.ROOT, tree.tokens[:, 0, :widths[0]] - offsets[0]]  # (B, 30) states
    assert tree.valid[:, 0, :widths[0]].all() and not tree.valid[:, 0, widths[0]:].any()
    assert (tree.parents[:, 0, :widths[0]] == 0).all()  # all from the one live beam (the root)
    torch.testing.assert_close(prior[level0].sort(dim=1, descending=True).values, best.expand(B, -1))
    # level 1: the 12 best (prior of parent + prior of child) children of those 30
    grand = trie.next_state[level0]  # (B, 30, C)
    cand = torch.where(grand >= 0, prior[level0][..., None] + prior[grand.clamp(min=0)], float("-inf"))
    best1 = cand.reshape(B, -1).topk(widths[1]).values
    par = tree.parents[:, 1, :widths[1]]
    state1 = trie.step(level0.gather(1, par), tree.tokens[:, 1, :widths[1]])
    got1 = prior[level0.gather(1, par)] + prior[state1]
    assert (trie.depth[state1] == 2).all() and tree.valid[:, 1, :widths[1]].all()
    torch.testing.assert_close(got1.sort(dim=1, descending=True).values, best1)


# --- relaxed: the law of sampling beam search -------------------------------------------------------------
@dataclass(frozen=True)
class ToyLaws:
    vocab: Vocab
    trie: SIDTrie
    target: torch.nn.Module
    prompts: Prompts  # one history, TOY_ROWS times
    sampled: np.ndarray  # (U * U,) counts of the target's sampling beam search (K = 2) over the rows
    other: np.ndarray  # the same for another model: a law the test must tell apart


@pytest.fixture(scope="module")
def toy_laws(make_decoder) -> ToyLaws:
    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    target, other = make_decoder(vocab, seed=5, std=0.25, num_layers=2), make_decoder(vocab, seed=6, std=0.25)
    prompts = build_prompts(vocab, TOY, [[0, 4, 5]] * TOY_ROWS)
    sampled = beam_search(target, trie, prompts, 2, sample=True, generator=torch.Generator().manual_seed(8))
    check_items(trie, vocab, sampled)
    counts = lambda m, seed: outcome_counts(  # noqa: E731
        beam_search(m, trie, prompts, 2, sample=True, generator=torch.Generator().manual_seed(seed)), trie.num_sids)
    return ToyLaws(vocab, trie, target, prompts, outcome_counts(sampled, trie.num_sids), counts(other, 9))


RELAXED_CASES = [  # (N, widths, draws): draws = how many of a level's nodes relaxed verification draws on
    (7, (), None),  # every level whole (3 level-1 codes, 7 level-2 prefixes): every round accepted
    (4, (2,), 0), (4, (2,), None),  # level 1 cut to 2 of the root's 3 codes
]


@pytest.mark.parametrize("N,widths,draws", RELAXED_CASES,
                         ids=[f"N{c[0]}-w{'_'.join(map(str, c[1]))}-draws{c[2]}" for c in RELAXED_CASES])
def test_relaxed_follows_sampling_beam_search(toy_laws, N, widths, draws):
    """A level is accepted when the target's K sampled beams are all drafted nodes: always where the
    tree holds every child, sometimes where a level is cut. Either way the output follows the
    target's sampling beam search, whether verification draws on the draft's nodes or not."""
    vocab, trie, K, gamma = toy_laws.vocab, toy_laws.trie, 2, 2
    w = [min(x, N) for x in widths] + [N] * (trie.num_levels - len(widths))
    # the first round's tree (from the root) holds every prefix of every level where each level fits
    whole = all(int((trie.depth == d).sum()) <= w[d - 1] for d in range(1, trie.num_levels + 1))
    drafter = TrieDrafter(inputs(trie, N, prior=popularity_prior(trie, [[0, 0, 1, 6], [3, 5]])), draws=draws)
    engine = SpecEngine(toy_laws.target, drafter, trie, decode(K=K, N=N, gamma=gamma, verify="relaxed", widths=widths), generator=torch.Generator().manual_seed(7))
    spec, stats = engine.run(toy_laws.prompts)
    acc, _ = levels_table(stats, trie.num_levels, gamma)
    if whole:
        assert (stats.target_calls() == 1).all(), "a tree holding every child was rejected"
    else:
        assert int(fan_out(trie)[trie.ROOT]) > w[0]
        assert (acc[:, 0] == trie.num_levels - 1).any() and (acc[:, 0] == 0).any()  # level 1 accepted or rejected
    check_items(trie, vocab, spec)
    assert (spec.sids[:, 0] != spec.sids[:, 1]).all() and (spec.scores[:, 0] >= spec.scores[:, 1]).all()
    a = outcome_counts(spec, trie.num_sids)
    seen = (a + toy_laws.sampled) > 0
    assert chi2_contingency(np.stack([a[seen], toy_laws.sampled[seen]])).pvalue > 1e-3
    assert (a > 0.01 * TOY_ROWS).sum() >= 4  # genuinely sampling
    # the test has power: another model's sampling beam search is told apart
    seen = (a + toy_laws.other) > 0
    assert chi2_contingency(np.stack([a[seen], toy_laws.other[seen]])).pvalue < 1e-12


# --- the registry -------------------------------------------------------------------------------------------
def test_make_drafter_builds_by_name(make_decoder):
    vocab = Vocab.for_index(SHARED)  # HISTORIES name SHARED's 8 items
    trie = build_trie(SHARED, vocab)
    with pytest.raises(ValueError, match="nonsense"):
        make_drafter("nonsense", trie, inputs(trie, 4).shape)
    drafter = make_drafter("trie", trie, inputs(trie, 4).shape, prior=popularity_prior(trie, HISTORIES[:2]))
    assert isinstance(drafter, TrieDrafter) and drafter.N == 4
    assert torch.equal(drafter.prior, popularity_prior(trie, HISTORIES[:2]))
    assert isinstance(make_drafter(make_decoder(vocab), trie, inputs(trie, 4).shape), DraftModelDrafter)


def test_popularity_prior_refuses_unknown_items():
    """An item id outside the catalogue is named, with the history it is in, not silently dropped."""
    from recspec.data.trie import build_trie
    from recspec.data.vocab import Vocab
    from recspec.data.popularity import popularity_prior
    from spec_checks import TOY

    trie = build_trie(TOY, Vocab.for_index(TOY))
    with pytest.raises(ValueError, match=r"history 1 holds item 99"):
        popularity_prior(trie, [[0, 1], [2, 99]])


def test_a_tree_wider_than_the_children_feeds_only_vocabulary_tokens(make_decoder):
    """With the first level the widest (5 codes, then 1-2 per prefix), the id a missing level-2 child
    would have lies past the vocabulary. A tree holding the 5 codes, then 16 nodes (7 children: most
    of its other candidates are such ids) drafts none of them, so the target (fed up to the last valid
    node of any user) reads only real tokens, and strict equals beam search."""
    codes = np.array([[a, b] for a in range(5) for b in range(a % 2 + 1)])
    index = SIDIndex(codes=codes, level_sizes=(5, 2), prefixes=("a", "b"))
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab)
    assert int(trie.level_offset[1]) + trie.next_state.shape[1] > vocab.size  # such ids exist
    target, K, N = make_decoder(vocab, seed=3), 2, 16
    prompts = build_prompts(vocab, index, [[0, 1], [3], [2, 4, 5]])
    drafter = TrieDrafter(inputs(trie, N))
    widths = (int((trie.depth == 1).sum()), N)
    engine = SpecEngine(target, drafter, trie, decode(K=K, N=N, gamma=2, widths=widths))
    engine.load(prompts)
    tree = drafter.propose(engine.frontier(first=True), 2, widths)
    assert (~tree.valid).any() and ((tree.tokens >= 0) & (tree.tokens < vocab.size)).all()
    got, _ = engine.run(prompts)
    want = beam_search(target, trie, prompts, K)
    assert torch.equal(got.sids, want.sids)
