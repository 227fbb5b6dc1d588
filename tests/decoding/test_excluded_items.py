"""Excluded items (e.g. a user's history) in every decoding mode: strict speculative beam search with
exclusions is the target's beam search with them, user by user, for both drafters, with and without
<eos>; no list holds an excluded item; drafters never propose a node that leads only to excluded
items; a user who may get fewer than K items gets them and -1 entries; relaxed mode follows the
target's sampling beam search over the allowed items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from recspec.data.exclusion import banned_states, history_rows
from recspec.data.popularity import popularity_prior
from recspec.data.trie import SIDTrie, build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import BeamResult, beam_search
from recspec.decoding.drafters import DraftModelDrafter, TrieDrafter
from recspec.decoding.engine import SpecEngine
from recspec.decoding.handoff import Sampling
from recspec.decoding.tree import DraftTree
from spec_checks import (ATOL, BATCH, ROOT, ROWS, TOY, check_items, decode, inputs, levels_table, outcome_counts,
                         root_widths)

# Fixtures `beauty` (Beauty test users, target and drafts) and `reference` (the target's beam search)
# come from conftest.py.

FULL = (ROOT, 24, 64, 64)  # the trie drafter's widths of test_trie_drafter: every level-1 code


def biting_rows(trie: SIDTrie, plain: BeamResult) -> torch.Tensor:
    """(B, U) exclusions that change each user's list: her plain list's items at ranks 0 and 2, and every
    SID under the length-2 prefix of its rank-1 item (a prefix none of whose items may be returned)."""
    B, U = plain.sids.shape[0], trie.num_sids
    rows = torch.zeros(B, U, dtype=torch.bool)
    rows[torch.arange(B)[:, None], plain.sids[:, [0, 2]]] = True
    prefix = trie.sids[plain.sids[:, 1], :2]  # (B, 2)
    rows |= (trie.sids[None, :, :2] == prefix[:, None]).all(dim=2)
    return rows


def check_allowed(res: BeamResult, rows: torch.Tensor) -> None:
    """No returned SID is excluded; -1 entries (scored -inf) only at the end."""
    got = res.sids
    assert not rows.gather(1, got.clamp(min=0))[got >= 0].any(), "an excluded item was returned"
    assert torch.equal(got < 0, torch.isneginf(res.scores))
    assert not ((got[:, 1:] >= 0) & (got[:, :-1] < 0)).any()


def check_equal(got: BeamResult, want: BeamResult) -> None:
    """User by user: same SIDs in the same order, same scores; codes of the real items."""
    same = (got.sids == want.sids).all(dim=1)
    assert same.all(), f"users {torch.nonzero(~same).flatten().tolist()} differ from beam search"
    real = want.sids >= 0
    assert torch.equal(got.codes[real], want.codes[real])
    torch.testing.assert_close(got.scores[real], want.scores[real], atol=ATOL, rtol=0)


CASES = [  # (drafter, K, N, gamma, depths, widths, fixed shapes, batch, eos)
    ("noisy", 10, 20, 3, (), (), False, BATCH, False), ("noisy", 5, 10, 3, (), (), False, 1, True),
    ("random", 20, 40, 2, (), (), True, BATCH, True), ("self", 5, 5, 3, (), (), False, BATCH, False),
    ("trie", 10, 96, 2, (1, 2, 2), FULL, True, BATCH, True), ("trie", 20, 40, 3, (), (), False, 1, False),
    ("trie", 5, 40, 3, (), (30, 12), False, BATCH, False),
]


@pytest.mark.parametrize("draft,K,N,gamma,depths,widths,fixed,batch,eos", CASES,
                         ids=[f"{c[0]}-K{c[1]}-N{c[2]}-g{c[3]}-{'fixed' if c[6] else 'eager'}-b{c[7]}-"
                              f"{'eos' if c[8] else 'noeos'}" for c in CASES])
def test_strict_with_exclusions_equals_beam_search(beauty, reference, draft, K, N, gamma, depths, widths, fixed,
                                                   batch, eos):
    L = beauty.trie.num_levels
    which = [CASES.index((draft, K, N, gamma, depths, widths, fixed, batch, eos)) % len(beauty.batched)] \
        if batch == BATCH else range(3)
    widths = root_widths(widths, beauty.trie)
    prompts = [beauty.prompts(batch)[b] for b in which]
    width = max(p.tokens.shape[1] for p in beauty.prompts(batch))
    for p, plain in zip(prompts, reference(K, batch, which, eos)):
        rows = biting_rows(beauty.trie, plain)
        want = beam_search(beauty.target, beauty.trie, p, K, eos=eos, exclude=rows)
        assert (want.sids != plain.sids).any(dim=1).all(), "the exclusions changed no list"
        drafter = TrieDrafter(inputs(beauty.trie, N, prior=popularity_prior(beauty.trie, beauty.train))) if draft == "trie" \
            else DraftModelDrafter(inputs(beauty.trie, N, model=beauty.drafts[draft]))
        engine = SpecEngine(beauty.target, drafter, beauty.trie, decode(K=K, N=N, gamma=gamma, depths=depths, widths=widths, fixed_shapes=fixed, prompt_width=width if fixed else None, eos=eos))
        got, stats = engine.run(p, exclude=rows)
        check_items(beauty.trie, beauty.vocab, got)  # K real items each: Beauty has plenty left
        check_allowed(got, rows)
        check_equal(got, want)
        acc, level = levels_table(stats, L, max((gamma, *depths)), eos)
        if draft == "self":  # N = K: the target drafting for itself is always accepted, so it masks what the target does
            assert torch.equal(acc[acc >= 0], torch.minimum(L + int(eos) - 1 - level, torch.tensor(gamma))[acc >= 0])


def node_states(trie: SIDTrie, roots: torch.Tensor, tree: DraftTree) -> torch.Tensor:
    """(B, d, N) trie state of every drafted node, following parents from the beams' states roots (B, M)."""
    out, above = [], roots
    for j in range(tree.depth):
        out.append(trie.step(above.gather(1, tree.parents[:, j].clamp(max=above.shape[1] - 1)), tree.tokens[:, j]))
        above = out[-1]
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("draft", ["trie", "random"])
@pytest.mark.parametrize("sample", [False, True])
def test_drafters_never_propose_an_excluded_node(beauty, draft, sample):
    """Half the SIDs and every SID under one level-1 code excluded: no valid drafted node is a state the
    user may not enter, at any level, top-N or sampled."""
    trie, N, K = beauty.trie, 40, 10
    prompts = beauty.batched[0]
    B, U = prompts.tokens.shape[0], trie.num_sids
    rows = torch.rand(B, U, generator=torch.Generator().manual_seed(3)) < 0.5
    rows |= trie.sids[None, :, 0] == trie.sids[0, 0]
    drafter = TrieDrafter(inputs(trie, N, prior=popularity_prior(trie, beauty.train))) if draft == "trie" \
        else DraftModelDrafter(inputs(trie, N, model=beauty.drafts[draft]))
    engine = SpecEngine(beauty.target, drafter, trie, decode(K=K, N=N, gamma=3))
    engine.load(prompts, rows)
    drafter.prefill()
    tree = drafter.propose(engine.frontier(first=True), 3, None,
                           Sampling(1.0, torch.Generator().manual_seed(4)) if sample else None)
    states = node_states(trie, engine.beams.states, tree)  # (B, 3, N)
    banned = banned_states(trie, rows)
    hit = banned.gather(1, states.flatten(1)).reshape(states.shape) & tree.valid
    assert tree.valid.any(dim=2).all() and not hit.any()


@pytest.fixture(scope="module")
def toy(make_decoder):
    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    return vocab, trie, make_decoder(vocab, seed=5, std=0.25, num_layers=2), make_decoder(vocab, seed=6, std=0.25)


@pytest.mark.parametrize("eos", [False, True])
def test_fewer_allowed_items_than_K_gives_them_then_minus_one(toy, eos):
    """K = the whole catalogue; users whose history covers most of it (one may get nothing): AR returns
    exactly the allowed SIDs, then -1 entries scored -inf, and strict speculation with either drafter
    returns the same lists."""
    vocab, trie, target, draft = toy
    U = trie.num_sids
    histories = [[0, 1, 2, 3, 4], [6, 5, 4, 3, 2, 1], list(range(U)), [3]]  # TOY: item i has SID row i
    prompts = build_prompts(vocab, TOY, histories)
    rows = history_rows(trie, histories)
    want = beam_search(target, trie, prompts, U, eos=eos, exclude=rows)
    check_allowed(want, rows)
    assert ((want.sids >= 0).sum(dim=1) == (~rows).sum(dim=1)).all()  # every allowed SID, and only those
    for drafter in (DraftModelDrafter(inputs(trie, U, model=draft)), TrieDrafter(inputs(trie, U))):
        got, stats = SpecEngine(target, drafter, trie, decode(K=U, N=U, gamma=2, eos=eos)).run(prompts, exclude=rows)
        check_equal(got, want)
        levels_table(stats, trie.num_levels, 2, eos)


def test_most_of_the_catalogue_excluded(beauty):
    """A user whose history holds 95% of the catalogue's items (99%, or all but K for another) still gets
    K items, none of them excluded, the same from AR and from strict speculation with either drafter."""
    trie, K, N = beauty.trie, 20, 40
    items = np.random.default_rng(0).permutation(len(trie.item_sid))
    most = lambda share, left: items[: min(int(share * len(items)), len(items) - left)].tolist()  # noqa: E731
    histories = [most(0.95, 2 * K), most(0.99, K)]  # a small catalogue leaves 2K and K items
    prompts = build_prompts(beauty.vocab, beauty.index, histories)
    rows = history_rows(trie, histories)
    assert int((~rows).sum(dim=1).min()) >= K
    want = beam_search(beauty.target, trie, prompts, K, exclude=rows)
    check_items(trie, beauty.vocab, want)
    check_allowed(want, rows)
    for drafter in (DraftModelDrafter(inputs(trie, N, model=beauty.drafts["noisy"])), TrieDrafter(inputs(trie, N, prior=popularity_prior(trie, beauty.train)))):
        got, _ = SpecEngine(beauty.target, drafter, trie, decode(K=K, N=N, gamma=3)).run(prompts, exclude=rows)
        check_equal(got, want)


def test_one_engine_runs_with_and_without_exclusions(beauty, reference):
    """The static exclusion buffer (fixed shapes) is refilled per run, and a run without exclusions
    masks nothing; a wrongly shaped exclusion is refused."""
    K, N = 10, 20
    prompts = beauty.batched[0]
    width = prompts.tokens.shape[1]
    plain = reference(K, BATCH, [0])[0]
    engine = SpecEngine(beauty.target, DraftModelDrafter(inputs(beauty.trie, N, model=beauty.drafts["noisy"])), beauty.trie, decode(K=K, N=N, gamma=3, fixed_shapes=True, prompt_width=width))
    first = biting_rows(beauty.trie, plain)
    second = torch.roll(first, shifts=1, dims=0)
    for rows in (first, None, second):
        got, _ = engine.run(prompts, exclude=rows)
        check_equal(got, plain if rows is None else beam_search(beauty.target, beauty.trie, prompts, K, exclude=rows))
    with pytest.raises(ValueError, match="exclude has shape"):
        engine.run(prompts, exclude=first[:, :-1])


def test_relaxed_with_exclusions_follows_sampling_beam_search(toy):
    """Relaxed verification over a user's allowed items follows the target's sampling beam search with
    the same exclusions (and never returns an excluded item)."""
    vocab, trie, target, draft = toy
    K, N, rows_n = 2, 2, ROWS // 2
    prompts = build_prompts(vocab, TOY, [[0, 4, 5]] * rows_n)
    rows = history_rows(trie, [[0, 4]] * rows_n)  # excludes one SID of two different level-1 codes
    engine = SpecEngine(target, DraftModelDrafter(inputs(trie, N, model=draft)), trie, decode(K=K, N=N, gamma=2, verify="relaxed"), generator=torch.Generator().manual_seed(7))
    spec, stats = engine.run(prompts, exclude=rows)
    acc, _ = levels_table(stats, trie.num_levels, 2)
    assert (acc == 0).any() and (acc > 0).any()
    check_allowed(spec, rows)
    sampled = beam_search(target, trie, prompts, K, sample=True, generator=torch.Generator().manual_seed(8), exclude=rows)
    U = trie.num_sids
    a, b = outcome_counts(spec, U), outcome_counts(sampled, U)
    seen = (a + b) > 0
    assert chi2_contingency(np.stack([a[seen], b[seen]])).pvalue > 1e-3
    assert (a > 0.01 * rows_n).sum() >= 4  # genuinely sampling
    # the test has power: the sampling beam search without exclusions is told apart
    c = outcome_counts(beam_search(target, trie, prompts, K, sample=True, generator=torch.Generator().manual_seed(9)), U)
    seen = (a + c) > 0
    assert chi2_contingency(np.stack([a[seen], c[seen]])).pvalue < 1e-12
