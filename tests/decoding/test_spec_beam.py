"""Speculative beam search: strict mode is the target's own beam search (same items, same order,
same scores) on Beauty users for any draft; its acceptance statistics add up; relaxed mode follows
the target's sampling beam search in distribution; bad arguments and mismatched models are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import beam_search
from recspec.decoding.drafters.draft_model import DraftModelDrafter
from recspec.decoding.engine import spec_beam_search
from recspec.errors import CheckpointError
from spec_checks import (ATOL, BATCH, ROOT, ROWS, TOY, check_items, decode, inputs, levels_table, outcome_counts,
                         root_codes, root_widths)

# Fixtures `beauty` (Beauty test users, target and drafts) and `reference` (the target's beam search)
# come from conftest.py; the constants and checks shared with other decoding tests from spec_checks.py.


def check_self_draft(acc: torch.Tensor, level: torch.Tensor, L: int, gamma: int, exact_width: bool,
                     eos: bool = False) -> None:
    """The target as its own draft. With N = K its beam search is the target's, so every drafted
    level is accepted. With N > K only the first drafted level of a round is sure to be (its top-N
    extensions of the target's beams hold the top-K); deeper levels extend the draft's N beams,
    whose best N children need not hold the children of the target's K beams. A tree drafts up to
    one level short of the end (L, or L + 1 with <eos>)."""
    active = acc >= 0
    full = torch.minimum((L + int(eos) - 1 - level).clamp(min=0), torch.tensor(gamma))[active]
    if exact_width:
        assert torch.equal(acc[active], full), "the target as its own draft (N = K) was rejected"
    else:
        assert (acc[active] >= full.clamp(max=1)).all(), "the target as its own draft lost its first level"


# (K, N, gamma, draft, batch, eos): every K with every draft at both batch sizes; N = K, 2K and 40 and
# gamma 1 and 3 rotate over them so each K meets several (N, gamma); eos (score <eos> as an (L+1)-th
# step) is on in about a third of them, for every draft, both batch sizes and every K.
CASES = [
    (1, 40, 3, "random", BATCH, False), (5, 5, 1, "random", BATCH, True), (10, 20, 3, "random", BATCH, False),
    (20, 40, 3, "random", BATCH, True), (1, 1, 3, "self", BATCH, True), (5, 5, 1, "self", BATCH, False),
    (10, 10, 3, "self", BATCH, False), (20, 20, 1, "self", BATCH, True), (1, 1, 1, "noisy", BATCH, False),
    (5, 40, 3, "noisy", BATCH, False), (10, 20, 1, "noisy", BATCH, True), (20, 20, 3, "noisy", BATCH, True),
    (1, 1, 3, "random", 1, False), (5, 10, 3, "random", 1, True), (10, 40, 1, "random", 1, False),
    (20, 20, 3, "random", 1, False), (1, 2, 1, "self", 1, True), (5, 5, 3, "self", 1, False),
    (10, 20, 3, "self", 1, True), (20, 20, 3, "self", 1, False), (1, 2, 1, "noisy", 1, False),
    (5, 10, 3, "noisy", 1, True), (10, 10, 1, "noisy", 1, False), (20, 40, 3, "noisy", 1, True),
]


@pytest.mark.parametrize("K,N,gamma,draft,batch,eos", CASES,
                         ids=[f"K{c[0]}-N{c[1]}-g{c[2]}-{c[3]}-b{c[4]}-{'eos' if c[5] else 'noeos'}" for c in CASES])
def test_strict_equals_beam_search(beauty, reference, K, N, gamma, draft, batch, eos):
    L = beauty.trie.num_levels
    accepted = []
    for b, (prompts, want) in enumerate(zip(beauty.prompts(batch), reference(K, batch, eos=eos))):
        drafter = DraftModelDrafter(inputs(beauty.trie, N, model=beauty.drafts[draft]))
        got, stats = spec_beam_search(beauty.target, drafter, beauty.trie, prompts, decode(K=K, N=N, gamma=gamma, eos=eos))
        check_items(beauty.trie, beauty.vocab, got)
        same = (got.sids == want.sids).all(dim=1)
        assert same.all(), f"batch {b}: users {torch.nonzero(~same).flatten().tolist()} differ from beam search"
        assert torch.equal(got.codes, want.codes)
        torch.testing.assert_close(got.scores, want.scores, atol=ATOL, rtol=0)
        acc, level = levels_table(stats, L, gamma, eos)
        if draft == "self":
            check_self_draft(acc, level, L, gamma, exact_width=N == K, eos=eos)
        accepted.append(acc[acc >= 0])
    accepted = torch.cat(accepted)
    if draft == "noisy":  # partial acceptance: some rounds reject at once, some accept levels
        assert (accepted == 0).any() and (accepted > 0).any()


DEPTH_CASES = [  # (K, N, depths by starting level, expand, draft, batch)
    (10, 40, (1, 3, 2), 0.0, "noisy", BATCH), (5, 10, (0, 2, 1), 2.0, "random", BATCH),
    (10, 20, (2, 1, 2, 1), 1.0, "noisy", 1), (20, 20, (1, 0, 3), 0.0, "self", 1),
]


@pytest.mark.parametrize("K,N,depths,expand,draft,batch", DEPTH_CASES,
                         ids=[f"K{c[0]}-N{c[1]}-d{''.join(map(str, c[2]))}-e{c[3]}-{c[4]}-b{c[5]}" for c in DEPTH_CASES])
def test_depth_schedule_stays_exact(beauty, reference, K, N, depths, expand, draft, batch):
    """A round's tree depth follows the schedule of the level it starts from; strict stays exact."""
    from recspec.decoding.engine import SpecEngine

    L = beauty.trie.num_levels
    depth_of = lambda lvl: depths[lvl] if lvl < len(depths) else depths[-1]  # noqa: E731
    for prompts, want in zip(beauty.prompts(batch), reference(K, batch)):
        drafter = DraftModelDrafter(inputs(beauty.trie, N, expand, model=beauty.drafts[draft]))
        engine = SpecEngine(beauty.target, drafter, beauty.trie, decode(K=K, N=N, gamma=depths[-1], depths=depths))
        got, stats = engine.run(prompts)
        assert torch.equal(got.sids, want.sids) and torch.equal(got.codes, want.codes)
        torch.testing.assert_close(got.scores, want.scores, atol=ATOL, rtol=0)
        acc, level = levels_table(stats, L, max(depths))
        for r in range(acc.shape[1]):
            on = acc[:, r] >= 0
            lo = int(level[on, r].min())  # the round's depth comes from its slowest user
            assert (acc[on, r] <= depth_of(lo)).all(), f"round {r} accepted more levels than its depth {depth_of(lo)}"


WIDTH_CASES = [  # (K, N, gamma, widths by SID level (ROOT: every level-1 code), expand, draft, batch, fixed shapes)
    (10, 128, 3, (ROOT, 40, 24, 16), 0.0, "noisy", BATCH, False), (10, 128, 3, (ROOT, 40, 24, 16), 0.0, "noisy", BATCH, True),
    (5, 40, 4, (10, 5, 5), 2.0, "random", 1, True), (20, 40, 2, (40, 20), 0.0, "self", 1, False),
    (10, 64, 4, (64, 10, 30, 10), 1.0, "self", BATCH, True),
]


@pytest.mark.parametrize("K,N,gamma,widths,expand,draft,batch,fixed", WIDTH_CASES,
                         ids=[f"K{c[0]}-N{c[1]}-g{c[2]}-w{'_'.join(map(str, c[3]))}-e{c[4]}-{c[5]}-b{c[6]}-{'fixed' if c[7] else 'eager'}"
                              for c in WIDTH_CASES])
def test_tree_widths_stay_exact(beauty, reference, K, N, gamma, widths, expand, draft, batch, fixed):
    """At most widths[l - 1] drafted nodes at SID level l (the target fed only those, also with fixed
    shapes): strict stays exact, and a full first level (every code of the trie root) is always accepted."""
    from recspec.decoding.engine import SpecEngine

    L, codes1, widths = beauty.trie.num_levels, root_codes(beauty.trie), root_widths(widths, beauty.trie)
    width = max(p.tokens.shape[1] for p in beauty.prompts(batch))
    for prompts, want in zip(beauty.prompts(batch), reference(K, batch)):
        drafter = DraftModelDrafter(inputs(beauty.trie, N, expand, model=beauty.drafts[draft]))
        engine = SpecEngine(beauty.target, drafter, beauty.trie, decode(K=K, N=N, gamma=gamma, widths=widths, fixed_shapes=fixed, prompt_width=width if fixed else None))
        got, stats = engine.run(prompts)
        assert torch.equal(got.sids, want.sids) and torch.equal(got.codes, want.codes)
        torch.testing.assert_close(got.scores, want.scores, atol=ATOL, rtol=0)
        acc, _ = levels_table(stats, L, gamma)
        if widths[0] >= codes1 and N >= codes1:
            assert (acc[:, 0] >= 1).all(), "a tree holding every level-1 code must be accepted at level 1"


def test_tree_width_caps_the_drafted_nodes(beauty):
    """The drafter proposes at most widths[j] valid nodes at tree level j, and says so in `fed`."""
    from recspec.decoding.engine import SpecEngine

    drafter = DraftModelDrafter(inputs(beauty.trie, 40, 0.0, model=beauty.drafts["random"]))
    engine = SpecEngine(beauty.target, drafter, beauty.trie, decode(K=10, N=40, gamma=3, widths=(30, 12)))
    assert engine.widths_from(0, 3) == (30, 12, 40) and engine.widths_from(1, 2) == (12, 40)
    assert engine.widths_from(2, 2) is None  # no cap below N
    assert root_codes(beauty.trie) > 30  # the root has more codes than the cap
    engine.load(beauty.batched[0])
    drafter.prefill()
    tree = drafter.propose(engine.frontier(first=True), 3, (30, 12, 40))
    assert tree.fed == (30, 12, 40)
    valid = tree.valid.sum(dim=2)  # (B, d)
    assert (valid[:, 0] <= 30).all() and (valid[:, 1] <= 12).all() and not tree.valid[:, 0, 30:].any()
    assert (valid[:, 0] == 30).all()  # the cap binds
    with pytest.raises(ValueError, match="widths"):
        SpecEngine(beauty.target, drafter, beauty.trie, decode(K=10, N=40, gamma=3, widths=(30, 0)))


@pytest.mark.slow
def test_compiled_rounds_stay_exact(beauty, reference):
    """torch.compile'd rounds (fixed shapes, one graph per round shape) return the target's beam search."""
    from recspec.decoding.engine import SpecEngine

    K, N = 5, 10
    drafter = DraftModelDrafter(inputs(beauty.trie, N, 0.0, model=beauty.drafts["noisy"]))
    engine = SpecEngine(beauty.target, drafter, beauty.trie, decode(K=K, N=N, gamma=2, depths=(1, 2), compile=True, prompt_width=beauty.batched[0].tokens.shape[1]))
    for prompts, want in list(zip(beauty.prompts(BATCH), reference(K, BATCH)))[:2]:
        got, stats = engine.run(prompts)
        assert torch.equal(got.sids, want.sids) and torch.equal(got.codes, want.codes)
        torch.testing.assert_close(got.scores, want.scores, atol=ATOL, rtol=0)
        assert (stats.target_calls() < beauty.trie.num_levels).any()  # some levels were accepted (AR: L calls)
    with pytest.raises(ValueError, match="global RNG"):
        SpecEngine(beauty.target, drafter, beauty.trie, decode(K=K, N=N, gamma=2, compile=True), generator=torch.Generator())


def test_negative_depth_is_refused(beauty):
    from recspec.decoding.engine import SpecEngine

    with pytest.raises(ValueError, match="depths"):
        SpecEngine(beauty.target, DraftModelDrafter(inputs(beauty.trie, 10, model=beauty.drafts["random"])), beauty.trie, decode(K=5, N=10, gamma=2, depths=(1, -1)))


# --- relaxed mode: the law of sampling beam search --------------------------------------------------
# (N, gamma, widths, temperature, eos). TOY has L = 2 levels, 3 codes at level 1: without eos a tree
# drafts level 1 only (level 2 is the target's own), so it is cut below 3 nodes for rejections to occur.
RELAXED_CASES = [(2, 2, (), 1.0, False), (4, 1, (2,), 1.0, False), (4, 2, (3, 2), 1.0, True), (4, 2, (2,), 0.5, False)]


@pytest.mark.parametrize("N,gamma,widths,temperature,eos", RELAXED_CASES)
def test_relaxed_follows_sampling_beam_search(make_decoder, N, gamma, widths, temperature, eos):
    """widths: fewer drafted nodes (and draws) at some levels; the law must not change.
    temperature: the law is that of sampling beam search at that temperature.
    eos: the law is that of sampling beam search scoring <eos> too."""
    from recspec.decoding.engine import SpecEngine

    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    target = make_decoder(vocab, seed=5, std=0.25, num_layers=2)
    draft = make_decoder(vocab, seed=6, std=0.25)
    prompts = build_prompts(vocab, TOY, [[0, 4, 5]] * ROWS)
    K, U = 2, trie.num_sids
    engine = SpecEngine(target, DraftModelDrafter(inputs(trie, N, model=draft)), trie, decode(K=K, N=N, gamma=gamma, verify="relaxed", widths=widths, temperature=temperature, eos=eos), generator=torch.Generator().manual_seed(7))
    spec, stats = engine.run(prompts)
    acc, _ = levels_table(stats, trie.num_levels, gamma, eos)
    assert (acc == 0).any() and (acc > 0).any()  # both accepted drafts and residual sampling occur
    sampled = beam_search(target, trie, prompts, K, sample=True, generator=torch.Generator().manual_seed(8),
                          temperature=temperature, eos=eos)
    top = beam_search(target, trie, build_prompts(vocab, TOY, [[0, 4, 5]]), K, eos=eos)
    for res in (spec, sampled):
        check_items(trie, vocab, res)
        assert (res.sids[:, 0] != res.sids[:, 1]).all()
        assert (res.scores[:, 0] >= res.scores[:, 1]).all()
    a, b = outcome_counts(spec, U), outcome_counts(sampled, U)
    seen = (a + b) > 0
    assert chi2_contingency(np.stack([a[seen], b[seen]])).pvalue > 1e-3
    # genuinely sampling: the deterministic top-K list is far from the only outcome
    top_list = int(top.sids[0, 0] * U + top.sids[0, 1])
    assert a[top_list] / ROWS < 0.8 and (a > 0.01 * ROWS).sum() >= 4
    # the test has power: the draft's own sampling beam search is told apart
    c = outcome_counts(beam_search(draft, trie, prompts, K, sample=True, generator=torch.Generator().manual_seed(9),
                                   temperature=temperature, eos=eos), U)
    seen = (a + c) > 0
    assert chi2_contingency(np.stack([a[seen], c[seen]])).pvalue < 1e-12
    if temperature != 1.0:  # and the temperature took effect: the law at temperature 1 is told apart
        t1 = outcome_counts(beam_search(target, trie, prompts, K, sample=True, generator=torch.Generator().manual_seed(10),
                                        eos=eos), U)
        seen = (a + t1) > 0
        assert chi2_contingency(np.stack([a[seen], t1[seen]])).pvalue < 1e-6


def test_relaxed_on_beauty_returns_real_distinct_items(beauty):
    K, N, gamma = 10, 20, 3
    drafter = DraftModelDrafter(inputs(beauty.trie, N, model=beauty.drafts["random"]))
    got, stats = spec_beam_search(beauty.target, drafter, beauty.trie, beauty.batched[0], decode(K=K, N=N, gamma=gamma, verify="relaxed"), generator=torch.Generator().manual_seed(0))
    check_items(beauty.trie, beauty.vocab, got)
    assert all(len(set(row)) == K for row in got.sids.tolist())
    assert torch.isfinite(got.scores).all() and (got.scores[:, 1:] <= got.scores[:, :-1]).all()
    levels_table(stats, beauty.trie.num_levels, gamma)


# --- refusals -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(make_decoder):
    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    return vocab, trie, make_decoder(vocab, seed=0), build_prompts(vocab, TOY, [[0, 1], [3]])


def test_fewer_draft_beams_than_target_beams_is_refused(toy):
    vocab, trie, model, prompts = toy
    with pytest.raises(ValueError, match="N >= K"):
        spec_beam_search(model, DraftModelDrafter(inputs(trie, 2, model=model)), trie, prompts, decode(K=3, N=2, gamma=2))


def test_more_beams_than_items_is_refused(toy):
    vocab, trie, model, prompts = toy
    with pytest.raises(ValueError, match=r"number of distinct items \(7\)"):
        spec_beam_search(model, DraftModelDrafter(inputs(trie, 8, model=model)), trie, prompts, decode(K=8, N=8, gamma=2))


def test_draft_with_another_vocabulary_is_refused(toy, make_decoder):
    vocab, trie, _, _ = toy
    with pytest.raises(CheckpointError, match="draft vocabulary"):
        DraftModelDrafter(inputs(trie, 4, model=make_decoder(vocab.size + 1)))


def test_target_with_another_vocabulary_is_refused(toy, make_decoder):
    vocab, trie, model, prompts = toy
    with pytest.raises(ValueError, match="target vocabulary"):
        spec_beam_search(make_decoder(vocab.size + 1), DraftModelDrafter(inputs(trie, 4, model=model)), trie, prompts, decode(K=2, N=4, gamma=1))
