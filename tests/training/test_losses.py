"""Alignment losses on hand-built logits: zeros, hand-computed values, masks, gradients, weights."""

from __future__ import annotations

import math

import pytest
import torch

from recspec.data.vocab import EOS, Vocab
from recspec.training.losses import (atspeed_r, atspeed_s, ce, level_mask, mix, seq_kd, tvd_kd, weighted_mean,
                                     word_kd)

# Two levels: level 0 codes are tokens 3, 4, 5; level 1 codes tokens 6, 7; level 2 is <eos> (2). V = 8.
VOCAB = Vocab(level_sizes=(3, 2), prefixes=("a", "b"))
V = VOCAB.size
LN = math.log

ALIGN = {"word_kd": word_kd, "tvd_kd": tvd_kd, "atspeed_r": atspeed_r,
         "atspeed_s": lambda s, t, m, w=None: atspeed_s(s, t, m, w, K=2, beta=0.7)}


def logits_at(level1: list[float], noise_seed: int = 0) -> torch.Tensor:
    """(V,) logits: the given values on level 1's tokens (6, 7), large random values elsewhere (masked)."""
    x = 5.0 * torch.randn(V, generator=torch.Generator().manual_seed(noise_seed))
    x[6:8] = torch.tensor(level1)
    return x


# p = [0.5, 0.5] and q = [0.25, 0.75] on level 1's codes; every other token masked (0 in both).
TEACHER = logits_at([0.0, 0.0], noise_seed=1)
STUDENT = logits_at([0.0, LN(3.0)], noise_seed=2)
MASK1 = level_mask(VOCAB, 1)
H_Q = -(0.25 * LN(0.25) + 0.75 * LN(0.75))  # entropy of q = 0.562335


def random_case(seed: int, shape=(4, 3)):
    """Random student / teacher logits (*shape, V); position [..., l] predicts level l."""
    g = torch.Generator().manual_seed(seed)
    s, t = 3 * torch.randn(*shape, V, generator=g), 3 * torch.randn(*shape, V, generator=g)
    levels = torch.arange(shape[-1]).expand(shape)
    return s, t, level_mask(VOCAB, levels)


def test_level_mask_rows():
    assert level_mask(VOCAB, 0).nonzero().reshape(-1).tolist() == [3, 4, 5]
    assert level_mask(VOCAB, 1).nonzero().reshape(-1).tolist() == [6, 7]
    assert level_mask(VOCAB, 2).nonzero().reshape(-1).tolist() == [EOS]
    levels = torch.tensor([[2, 0], [1, 1]])
    m = level_mask(VOCAB, levels)
    assert m.shape == (2, 2, V) and torch.equal(m[0, 1], level_mask(VOCAB, 0))
    with pytest.raises(ValueError):
        level_mask(VOCAB, 3)


@pytest.mark.parametrize("name", sorted(ALIGN))
def test_identical_distributions_give_zero(name):
    s, _, mask = random_case(0)
    fn = ALIGN[name] if name != "atspeed_s" else (lambda a, b, m: atspeed_s(a, b, m, K=2, beta=0.0))
    assert fn(s, s.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_values():
    kl = 0.5 * LN(0.5 / 0.25) + 0.5 * LN(0.5 / 0.75)  # = 0.5 ln(4/3) = 0.143841
    assert word_kd(STUDENT, TEACHER, MASK1).item() == pytest.approx(kl, abs=1e-6)
    assert tvd_kd(STUDENT, TEACHER, MASK1).item() == pytest.approx(0.25, abs=1e-6)  # 0.5 (0.25 + 0.25)
    assert atspeed_r(STUDENT, TEACHER, MASK1).item() == pytest.approx(0.25, abs=1e-6)
    assert ce(STUDENT, torch.tensor(7), MASK1).item() == pytest.approx(-LN(0.75), abs=1e-6)  # 0.287682
    assert seq_kd(STUDENT, torch.tensor(6), MASK1).item() == pytest.approx(LN(4.0), abs=1e-6)  # 1.386294
    assert mix(torch.tensor(1.0), torch.tensor(2.0)).item() == pytest.approx(0.3 * 1.0 + 0.7 * 2.0)


def test_atspeed_s_hand_computed():
    # Two codes: with K = 1 the pooled rest is the other code, so the term is the full reverse KL
    # 0.75 ln(0.75 / 0.5) + 0.25 ln(0.25 / 0.5) = 0.130812 (top token 7: q = 0.75, p = 0.5)
    rkl = 0.75 * LN(1.5) + 0.25 * LN(0.5)
    assert atspeed_s(STUDENT, TEACHER, MASK1, K=1, beta=0.0).item() == pytest.approx(rkl, abs=1e-6)
    # + beta * p(7) * H(q) = 0.5 * 0.562335 = 0.281168
    assert atspeed_s(STUDENT, TEACHER, MASK1, K=1, beta=1.0).item() == pytest.approx(rkl + 0.5 * H_Q, abs=1e-6)
    # K = 2: both codes in Q_K, nothing outside; the K-th token 6 has p = 0.5
    assert atspeed_s(STUDENT, TEACHER, MASK1, K=2, beta=0.0).item() == pytest.approx(rkl, abs=1e-6)
    assert atspeed_s(STUDENT, TEACHER, MASK1, K=2, beta=2.0).item() == pytest.approx(rkl + H_Q, abs=1e-6)
    # K beyond the level (2 codes): the extra top-K tokens are masked (q = 0) and count 0
    assert atspeed_s(STUDENT, TEACHER, MASK1, K=5, beta=0.0).item() == pytest.approx(rkl, abs=1e-6)


def test_atspeed_s_pools_the_students_tail():
    """Three codes, K = 1: q = (0.5, 0.3, 0.2), p = (0.4, 0.4, 0.2): the top token apart, the other two
    pooled (q 0.5, p 0.6): 0.5 ln(0.5 / 0.4) + 0.5 ln(0.5 / 0.6) = 0.020411."""
    vocab = Vocab(level_sizes=(3,), prefixes=("a",))  # level 0: tokens 3, 4, 5
    s, t = torch.zeros(vocab.size), torch.zeros(vocab.size)
    s[3:6], t[3:6] = torch.tensor([0.5, 0.3, 0.2]).log(), torch.tensor([0.4, 0.4, 0.2]).log()
    mask = level_mask(vocab, 0)
    want = 0.5 * LN(0.5 / 0.4) + 0.5 * LN(0.5 / 0.6)
    assert atspeed_s(s, t, mask, K=1, beta=0.0).item() == pytest.approx(want, abs=1e-6)


def test_atspeed_s_is_a_divergence_moving_mass_to_the_tail_does_not_pay():
    """>= 0 everywhere; and a student flatter than the teacher (mass moved off its top-K) scores worse
    than the teacher itself (the truncated sum over Q_K alone rewards it)."""
    for seed in range(5):
        s, t, mask = random_case(seed)
        assert atspeed_s(s, t, mask, K=2, beta=0.0).item() >= -1e-7
    vocab = Vocab(level_sizes=(8,), prefixes=("a",))
    t = torch.full((vocab.size,), -1e9)
    t[3:11] = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    mask = level_mask(vocab, 0)
    assert atspeed_s(t.clone(), t, mask, K=2, beta=0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert atspeed_s(t * 0.5, t, mask, K=2, beta=0.0).item() > 1e-3


@pytest.mark.parametrize("name", sorted(ALIGN))
def test_masked_tokens_do_not_matter(name):
    s, t, mask = random_case(1)
    noise = 50 * torch.randn(s.shape, generator=torch.Generator().manual_seed(9))
    s2, t2 = torch.where(mask, s, noise), torch.where(mask, t, -noise)
    assert ALIGN[name](s2, t2, mask).item() == pytest.approx(ALIGN[name](s, t, mask).item(), abs=1e-6)
    labels = torch.where(mask, s, torch.full_like(s, -1e9)).argmax(-1)
    assert ce(s2, labels, mask).item() == pytest.approx(ce(s, labels, mask).item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(ALIGN))
def test_gradients_reach_the_student_only(name):
    s, t, mask = random_case(2)
    s.requires_grad_(True)
    t.requires_grad_(True)
    ALIGN[name](s, t, mask).backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert (s.grad[~mask] == 0).all()  # tokens outside the level get no gradient


def test_no_nan_gradients_with_zero_probabilities():
    """Teacher p = 0 on some allowed tokens (as sparse storage can give) and K beyond the level."""
    s, t, mask = random_case(3)
    s.requires_grad_(True)
    loss = atspeed_s(s, t, mask, K=5, beta=1.0)  # K beyond every level's size
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    s.grad = None
    t[..., 3] = float("-inf")  # level 0's first code impossible for the teacher
    loss = word_kd(s, t, mask) + tvd_kd(s, t, mask) + atspeed_r(s, t, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # reverse KL is infinite where the student puts mass on a token the teacher rules out
    assert atspeed_s(s.detach(), t, mask, K=3, beta=0.0).item() == float("inf")


def test_atspeed_s_depends_only_on_the_students_top_k():
    """Teacher log p fixed on the student's top-K; the rest of its mass split any way outside: same loss."""
    vocab = Vocab(level_sizes=(6,), prefixes=("a",))  # level 0: tokens 3..8
    g = torch.Generator().manual_seed(4)
    s, t = 3 * torch.randn(5, vocab.size, generator=g), 3 * torch.randn(5, vocab.size, generator=g)
    mask = level_mask(vocab, 0).expand(5, -1)
    K = 2
    in_top = torch.zeros_like(mask).scatter(-1, s.masked_fill(~mask, float("-inf")).topk(K, -1).indices, True)
    outside = mask & ~in_top  # 4 allowed tokens per position outside the student's top-K
    logp = t.masked_fill(~mask, float("-inf")).log_softmax(-1)
    rest = 1 - logp.exp().masked_fill(~in_top, 0).sum(-1, keepdim=True)  # teacher mass outside the top-K
    split = torch.rand(5, vocab.size, generator=g).masked_fill(~outside, 0)
    t2 = torch.where(outside, (rest * split / split.sum(-1, keepdim=True)).log(), logp)
    before = atspeed_s(s, t, mask, K=K, beta=1.0)
    assert not torch.allclose(t2.log_softmax(-1)[outside], logp[outside])  # the teacher did change
    assert atspeed_s(s, t2, mask, K=K, beta=1.0).item() == pytest.approx(before.item(), abs=1e-5)
    t3 = t.clone()
    t3[in_top] += 1.0  # changing the teacher on the top-K changes the loss
    assert abs(atspeed_s(s, t3, mask, K=K, beta=1.0).item() - before.item()) > 1e-3


def test_zero_weights_exclude_positions():
    s, t, mask = random_case(5, shape=(2, 3))
    w = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    t_bad = t.clone()
    t_bad[w == 0] = 1e4 * torch.randn(int((w == 0).sum()), V)  # garbage where the weight is 0
    for name, fn in ALIGN.items():
        keep = w > 0
        expected = weighted_mean(torch.stack([fn(s[i, j], t[i, j], mask[i, j]) for i, j in keep.nonzero().tolist()]),
                                 w[keep])
        assert fn(s, t_bad, mask, w).item() == pytest.approx(expected.item(), abs=1e-5), name
        assert fn(s, t, mask, torch.zeros(2, 3)).item() == 0.0
    labels = torch.where(mask, s, torch.full_like(s, -1e9)).argmax(-1)
    per_position = torch.stack([ce(s[i, j], labels[i, j], mask[i, j]) for i in range(2) for j in range(3)])
    expected = (w.reshape(-1) * per_position).sum() / w.sum()
    assert ce(s, labels, mask, w).item() == pytest.approx(expected.item(), abs=1e-5)
