"""Unrolled drafter training (training/unrolled.py): the losses on hand-built cases, the unrolled passes see
what drafting sees, a fixed number of seeded steps lowers the loss and is reproducible and resumable, and
the target stays frozen."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from recspec.config import PADConfig, UnrollConfig
from recspec.models.heads import FeatureHead, head_config, load_head
from recspec.models.hf import load_checkpoint
from recspec.models.kv_cache import KVCache
from recspec.training import losses
from recspec.training.unrolled import (BATCH_LOSSES, new_drafter, round_steps, train_unrolled, unroll_mask,
                                       unrolled_features)
from test_distill import toy_catalogue

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BASE = UnrollConfig(steps=12, batch_size=4, lr=1e-2, warmup_steps=1, unroll=2, window_items=5, window_stride=2,
                    precision="fp32", threads=1)


def test_unroll_mask_by_hand():
    """n = 4 pairs. Pass 0: causal. Pass 2, pair 3: pass 0's pairs 0..1, pass 1's pair 2, pass 2's pair 3;
    pairs 0, 1 have no two-step chain: themselves only."""
    assert torch.equal(unroll_mask(4, 0), torch.ones(4, 4, dtype=torch.bool).tril())
    m = unroll_mask(4, 2)  # (4, 12): keys are pass * 4 + pair
    assert m[3].nonzero().flatten().tolist() == [0, 1, 4 + 2, 8 + 3]
    assert m[2].nonzero().flatten().tolist() == [0, 4 + 1, 8 + 2]
    assert m[1].nonzero().flatten().tolist() == [8 + 1] and m[0].nonzero().flatten().tolist() == [8]


def test_feature_head_loss_by_hand():
    """SmoothL1 of (0, 0) against (0.5, 3): (0.5 * 0.25 + (3 - 0.5)) / 2 = 1.3125; soft CE of q = (1/4, 3/4)
    against p = (1/2, 1/2): -(ln(1/4) + ln(3/4)) / 2. A position of weight 0 holding inf changes nothing."""
    pred = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    feature = torch.tensor([[0.5, 3.0], [float("inf"), 0.0]])
    student = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    teacher = torch.zeros(2, 2)
    w = torch.tensor([1.0, 0.0])
    want = 1.3125 + 0.1 * -(math.log(0.25) + math.log(0.75)) / 2
    got = losses.feature_head_loss(pred, feature, student, teacher, w)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert losses.feature_head_loss(pred, feature, student, teacher, w, 0.0, 1.0).item() == \
        pytest.approx(-(math.log(0.25) + math.log(0.75)) / 2, rel=1e-6)


def test_soft_ce_is_kl_plus_the_teacher_entropy():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    p, logq = t.softmax(-1), s.log_softmax(-1)
    kl = (p * (p.log() - logq)).sum(-1).mean()
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(losses.soft_ce(s, t), kl + entropy)


def test_round_steps_are_rounds_of_at_most_k_max_drafted_tokens():
    rng = np.random.default_rng(0)
    lengths = torch.tensor([30, 12, 1])
    steps = round_steps(lengths, 30, 3, rng)
    assert steps.shape == (3, 30) and int(steps.max()) == 3
    up = steps[:, 1:] - steps[:, :-1]
    assert bool(((up == 1) | (steps[:, 1:] == 0)).all())  # a step is the one before + 1, or a new round (0)
    assert torch.equal(steps, round_steps(lengths, 30, 3, np.random.default_rng(0)))  # seeded


def test_unrolled_passes_see_what_drafting_sees(make_decoder):
    """Pass k's prediction at pair i equals drafting it: pass 0's pairs 0..i-k through a KV cache (real
    features), then k drafted pairs, each fed the one before's prediction at step j, attending to its chain."""
    cat = toy_catalogue()
    target = make_decoder(cat.vocab, seed=3)
    head = FeatureHead(head_config(target.cfg, PADConfig(cat.vocab.level_sizes, k_max=3))).eval()
    with torch.no_grad():
        for p in head.pad.parameters():
            p.normal_(0, 0.3)  # a PAD module that acts
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, cat.vocab.size, (1, 9), generator=gen)
    pos = torch.arange(9)[None]
    with torch.no_grad():
        f = target.hidden(tokens, pos)
        preds = unrolled_features(head, target, tokens, f, 3)
        for k, i in ((1, 4), (2, 5), (3, 7), (3, 3)):
            n = i - k + 1  # pass 0 pairs 0..i-k at slots 0..n-1, the chain after them
            cache = KVCache.empty(1, 1, head.cfg.num_kv_heads, n + k + 1, head.cfg.head_dim)
            causal = torch.ones(n, n + k + 1, dtype=torch.bool).tril()[None]
            out = head.features(target, tokens[:, 1:n + 1], f[:, :n], pos[:, 1:n + 1], causal, cache,
                                torch.arange(n)[None])[:, -1:]
            for j in range(1, k + 1):
                mask = torch.zeros(1, 1, n + k + 1, dtype=torch.bool)
                mask[..., :n + j] = True
                q = i - k + j  # the chained pair
                out = head.features(target, tokens[:, q + 1:q + 2], out, pos[:, q + 1:q + 2], mask, cache,
                                    torch.tensor([[n + j - 1]]), torch.tensor([[j]]))
            torch.testing.assert_close(out[0, 0], preds[k][0, i], atol=1e-5, rtol=0)


def batch_loss(model, target, cat, cfg) -> float:
    """The objective's loss on a fixed batch (the first 6 training sequences, 3 items each)."""
    from recspec.data.vocab import sequence_tokens

    rows = [sequence_tokens(cat.vocab, cat.index, s[:3]) for s in cat.data.train[:6] if len(s) >= 3]
    T = max(map(len, rows))
    tokens = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        return BATCH_LOSSES[cfg.objective](model, target, tokens, lengths, cfg, 0).item()


@pytest.mark.parametrize("objective,pad", [("feature-head", False), ("feature-head", True), ("draft-unrolled", True)])
def test_fixed_steps_lower_the_loss_reproducibly(objective, pad, make_decoder, tmp_path):
    """12 seeded steps: the loss on a fixed batch falls; a second run from the same seed ends with the same
    weights; the target is untouched and still trainable; last/ loads back as the trained drafter."""
    cat = toy_catalogue()
    target = make_decoder(cat.vocab, seed=3)
    before_target = {k: v.clone() for k, v in target.state_dict().items()}
    cfg = dataclasses.replace(BASE, objective=objective, pad_slot=pad, pad_step=pad)
    runs = []
    for r in range(2):
        model = new_drafter(target, cat.vocab, cfg, "tiny")
        loss0 = batch_loss(model, target, cat, cfg)
        res = train_unrolled(model, target, cat.data, cat.index, cat.vocab, cfg, tmp_path / f"run{r}", progress=False)
        runs.append(model)
        assert res.steps == 12 and res.stop_reason == "done"
    assert batch_loss(model, target, cat, cfg) < loss0
    assert all(torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()))
    assert all(torch.equal(v, before_target[k]) for k, v in target.state_dict().items())
    assert all(p.requires_grad for p in target.parameters())
    loaded = load_head(res.checkpoint)[0] if objective == "feature-head" else load_checkpoint(res.checkpoint)[0]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert (loaded.pad is not None) == pad


def test_resumed_run_ends_like_an_uninterrupted_one(make_decoder, tmp_path):
    """max_steps cuts a feature-head run at 5 of 12 steps; run again without it, it resumes from last/ and
    ends with the weights of a run never cut."""
    cat = toy_catalogue()
    target = make_decoder(cat.vocab, seed=3)
    cfg = dataclasses.replace(BASE, pad_slot=True, pad_step=True)
    straight = new_drafter(target, cat.vocab, cfg, "tiny")
    train_unrolled(straight, target, cat.data, cat.index, cat.vocab, cfg, tmp_path / "a", progress=False)
    cut = new_drafter(target, cat.vocab, cfg, "tiny")
    res = train_unrolled(cut, target, cat.data, cat.index, cat.vocab, dataclasses.replace(cfg, max_steps=5),
                         tmp_path / "b", progress=False)
    assert res.steps == 5 and res.stop_reason == "max_steps"
    resumed = new_drafter(target, cat.vocab, cfg, "tiny")
    assert train_unrolled(resumed, target, cat.data, cat.index, cat.vocab, cfg, tmp_path / "b", progress=False).steps == 12
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
