"""Greedy list speculation with the feature head and with a PAD draft model: every user's list equals the
target's greedy list token for token (random and few-step-trained drafters, batch 16 and batch 1, eager and
fixed shapes); the head's roots while decoding are what the head computes causally over the finished
sequence; the PAD slot of a drafted token is its position inside the item; the drafter is refused where it
cannot draft."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from spec_checks import decode

from recspec.config import ModelConfig, PADConfig, UnrollConfig
from recspec.data.datasets import SplitData, load_sequential
from recspec.data.vocab import EOS, build_prompts
from recspec.decoding.constraints import ItemList
from recspec.decoding.engine import build_engine
from recspec.decoding.greedy import greedy_decode
from recspec.models.decoder import Decoder
from recspec.models.heads import FeatureHead, head_config
from recspec.models.pad import next_slot_table
from recspec.training.pad_ablation import VARIANTS, AblationConfig, variant_config
from recspec.training.unrolled import new_drafter, train_unrolled

USERS = 64  # first test users decoded in batches of 16 (the first 8 of them one at a time)
SINGLE = 8
M = 10  # items per list
TRAIN_USERS = 400  # training sequences of the few-step-trained drafters
STEPS = 20


def acting_pad(model) -> None:
    """Move a PAD module's parameters off the identity, so the step and slot ids it is fed change its output."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.pad.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def greedy_batches(beauty, sequential_dataset, plan) -> tuple[ItemList, dict]:
    """plan ((batch, users), ...) -> the list constraint and, per batch size, the first `users` test users'
    prompt batches with the target's greedy lists of M items: {batch: [(prompts, greedy result)]}."""
    data, _ = load_sequential(sequential_dataset)
    hist = [e.history for e in data.test[:max(n for _, n in plan)]]
    c = ItemList(beauty.trie, M)
    out = {}
    for batch, n in plan:
        prompts = [build_prompts(beauty.vocab, beauty.index, hist[i:i + batch]) for i in range(0, n, batch)]
        out[batch] = [(p, greedy_decode(beauty.target, c, p)) for p in prompts]
    return c, out


@pytest.fixture(scope="module")
def lists(beauty, sequential_dataset):
    """The first USERS test users in batches of 16 (and the first SINGLE alone) -> (prompts, greedy lists)."""
    c, out = greedy_batches(beauty, sequential_dataset, ((16, USERS), (1, SINGLE)))
    return c, {b: tuple(map(list, zip(*pairs))) for b, pairs in out.items()}


@pytest.fixture(scope="module")
def drafters(beauty, tmp_path_factory):
    """Random and few-step-trained feature heads (the trained one with a full PAD module), and a PAD draft
    model (random, its PAD acting; and trained with draft-unrolled)."""
    torch.manual_seed(0)
    target, vocab = beauty.target, beauty.vocab
    out = {"head": FeatureHead(head_config(target.cfg)).eval()}
    pad_draft = Decoder(ModelConfig.preset(vocab.size, "tiny", pad=PADConfig(vocab.level_sizes))).eval()
    acting_pad(pad_draft)
    out["pad-draft"] = pad_draft
    data = SplitData("beauty-head", beauty.index.num_items, [s for s in beauty.train if len(s) >= 2][:TRAIN_USERS], [], [])
    for objective in ("feature-head", "draft-unrolled"):
        cfg = UnrollConfig(objective=objective, steps=STEPS, batch_size=16, lr=3e-3, warmup_steps=2, pad_slot=True,
                           pad_step=True, precision="fp32", threads=1)
        model = new_drafter(target, vocab, cfg, "tiny")
        train_unrolled(model, target, data, beauty.index, vocab, cfg, tmp_path_factory.mktemp(objective), progress=False)
        out[f"trained-{objective}"] = model
    return out


CASES = [("head", 4, 3, 16, False), ("head", 8, 5, 1, True), ("trained-feature-head", 4, 4, 16, False),
         ("trained-feature-head", 4, 3, 16, True), ("trained-feature-head", 3, 4, 1, False),
         ("pad-draft", 4, 3, 16, False), ("pad-draft", 4, 4, 1, True), ("trained-draft-unrolled", 4, 3, 16, True),
         ("trained-draft-unrolled", 3, 2, 1, False)]


@pytest.mark.parametrize("draft,N,gamma,batch,fixed", CASES,
                         ids=[f"{c[0]}-N{c[1]}-g{c[2]}-b{c[3]}-{'fixed' if c[4] else 'eager'}" for c in CASES])
def test_speculation_on_lists_equals_greedy(beauty, lists, drafters, draft, N, gamma, batch, fixed):
    c, out = lists
    prompts, refs = out[batch]
    width = max(p.tokens.shape[1] for p in prompts)
    cfg = decode(K=1, N=N, gamma=gamma, fixed_shapes=fixed, prompt_width=width if fixed else None)
    engine = build_engine(beauty.target, c, cfg, drafters[draft])
    accepted = []
    for p, want in zip(prompts, refs):
        got, stats = engine.run(p)
        same = (got.codes == want.codes).all(dim=-1)[:, 0]
        assert same.all(), f"users {(~same).nonzero().flatten().tolist()} differ from greedy"
        torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-6)
        acc = torch.stack(stats.accepted, 1)
        accepted.append(acc[acc >= 0].float().mean())
    assert torch.stack(accepted).mean() > 0  # trees are accepted (forced tokens at least: <eos> after an item)


def test_roots_are_the_heads_causal_predictions(beauty, lists):
    """After each round the drafter's root (its log-probs after the target's bonus token) equals the head run
    causally over the user's whole decoded sequence with the target's features, PAD acting: decoding feeds the
    head the pairs, positions and attention it was trained with."""
    c, out = lists
    prompts = out[16][0][0]
    target = beauty.target
    torch.manual_seed(1)
    head = FeatureHead(head_config(target.cfg, PADConfig(beauty.vocab.level_sizes))).eval()
    acting_pad(head)
    engine = build_engine(target, c, decode(K=1, N=4, gamma=3), head)
    roots, observe = [], engine.drafter.observe

    def record(f, scores, verdict):
        observe(f, scores, verdict)
        roots.append((f.level + verdict.accepted + 1, engine.drafter.root_logp.clone()))

    engine.drafter.observe = record
    got, _ = engine.run(prompts)
    T = prompts.tokens.shape[1]
    for b in range(prompts.tokens.shape[0]):
        n = int(prompts.lengths[b])
        seq = torch.cat([prompts.tokens[b, T - n:], got.codes[b, 0]])[None]
        pos = torch.arange(seq.shape[1])[None]
        with torch.no_grad():
            logits, _ = head(target, seq[:, 1:], target.hidden(seq, pos)[:, :-1], pos[:, 1:])
        want = torch.log_softmax(logits[0].float(), dim=-1)  # (pairs, V): pair i feeds the token at i + 1
        for level, root in roots:
            lv = int(level[b])
            if lv <= c.num_levels:  # rounds after the user finished: nothing to compare
                torch.testing.assert_close(root[b], want[n + lv - 2], atol=1e-4, rtol=0)


def test_pad_slot_is_the_position_inside_the_item(beauty, lists):
    """Along greedy lists the slot PAD gives a token (from the token before it) is the ItemList state's
    position inside the current item: its trie depth, L at a leaf (the item's <eos> comes next)."""
    c, out = lists
    table = next_slot_table(beauty.vocab.level_sizes, beauty.vocab.size)
    S = c.num_states
    for prompts, ref in zip(*out[16]):
        codes = ref.codes[:, 0]  # (B, n)
        state = torch.full((codes.shape[0],), c.ROOT)
        before = prompts.tokens[:, -1]  # each prompt ends with <eos>
        for j in range(codes.shape[1]):
            depth = c.trie.depth[state % S]
            assert torch.equal(table[before], depth), f"token {j}"
            state = c.step(state, codes[:, j])
            before = codes[:, j]
    assert bool((ref.codes[:, 0, beauty.trie.num_levels] == EOS).all())


def test_refused_where_it_cannot_draft(beauty):
    head = FeatureHead(head_config(beauty.target.cfg))
    with pytest.raises(ValueError, match="K = 1"):
        build_engine(beauty.target, beauty.trie, decode(K=2, N=4, gamma=2), head).run(beauty.single[0])
    with pytest.raises(ValueError, match="top-N"):
        build_engine(beauty.target, beauty.trie, decode(K=1, N=4, gamma=2, verify="relaxed"), head).run(beauty.single[0])
    other = Decoder(dataclasses.replace(beauty.target.cfg, hidden_size=32, num_heads=2, num_kv_heads=1))
    with pytest.raises(Exception, match="does not fit a target"):
        build_engine(other, beauty.trie, decode(K=1, N=4, gamma=2), head)


# --- every drafter and PAD variant of the ablation --------------------------------------------------------
VARIANT_USERS = 200  # first test users, batch 32
VARIANT_SINGLE = 40  # of them, one at a time
VARIANT_CASES = [(d, v) for d in ("draft-model", "feature-head") for v in VARIANTS]


@pytest.fixture(scope="module")
def variant_lists(beauty, sequential_dataset):
    """The first VARIANT_USERS test users in batches of 32 (and the first VARIANT_SINGLE alone), with the
    target's greedy lists of M items."""
    return greedy_batches(beauty, sequential_dataset, ((32, VARIANT_USERS), (1, VARIANT_SINGLE)))


@pytest.mark.slow
@pytest.mark.parametrize("drafter,variant", VARIANT_CASES, ids=[f"{d}-{v}" for d, v in VARIANT_CASES])
def test_every_ablation_variant_is_lossless(beauty, variant_lists, tmp_path, drafter, variant):
    """Each (drafter, PAD variant) of `pad-ablation`, trained STEPS seeded steps as the ablation trains it:
    its lists equal greedy's, user by user, at batch 32 and batch 1."""
    c, out = variant_lists
    data = SplitData("beauty-head", beauty.index.num_items, [s for s in beauty.train if len(s) >= 2][:TRAIN_USERS], [], [])
    acfg = AblationConfig(train=UnrollConfig(steps=STEPS, batch_size=16, lr=3e-3, warmup_steps=2, precision="fp32",
                                             threads=1), draft_size="tiny")
    cfg = variant_config(acfg, drafter, variant)
    model = new_drafter(beauty.target, beauty.vocab, cfg, acfg.draft_size)
    train_unrolled(model, beauty.target, data, beauty.index, beauty.vocab, cfg, tmp_path, progress=False)
    assert (model.pad is None) == (variant == "base")
    engine = build_engine(beauty.target, c, decode(K=1, N=4, gamma=4), model.eval())
    for batch in (32, 1):
        for b, (p, want) in enumerate(out[batch]):
            got, _ = engine.run(p)
            same = (got.codes == want.codes).all(dim=-1)[:, 0]
            assert same.all(), f"batch {batch} #{b}: users {(~same).nonzero().flatten().tolist()} differ from greedy"
