"""Draft alignment losses (AtSpeed, spec section 5): pure functions of logits, no model.

Terms. At one position the student (draft) has logits s and the teacher (target) logits t, both (V,).
The position predicts SID level l: a code of level l for l < L, `<eos>` for l = L. Both distributions
are softmaxes restricted to that level's codebook, `mask = level_mask(vocab, l)`:

    q = softmax(s | mask),  p = softmax(t | mask)   (q_v = p_v = 0 outside the mask)

so tokens of other levels neither take probability mass nor change a loss. Positions carry weights
w >= 0 (0: padding); every loss is the weighted mean over positions

    loss = sum_i w_i * ell_i / sum_i w_i        (0 where all weights are 0)

with ell_i the per-position value given in each docstring. Teacher tensors are detached: gradients
reach the student only. Shapes: logits (..., V), mask (..., V) bool (or (V,), broadcast), token
ids and weights (...). Computation is in float32 whatever the input dtype.

Where the losses apply (spec section 5): `word_kd` / `tvd_kd` at the L + 1 ground-truth positions;
`seq_kd`, `atspeed_s`, `atspeed_r` at the L + 1 positions of each of the teacher's top-K' beams;
`ce` at the ground truth. `mix` combines CE with one alignment loss.
"""

from __future__ import annotations

import torch

from recspec.data.vocab import EOS, Vocab

NEG_INF = float("-inf")


def level_mask(vocab: Vocab, level: int | torch.Tensor) -> torch.Tensor:
    """Tokens allowed when predicting SID level `level`: the codes of that level (0 <= level < L) or
    only `<eos>` (level == L). int -> (V,) bool; (...,) int64 tensor -> (..., V) bool."""
    L = vocab.num_levels
    table = torch.zeros(L + 1, vocab.size, dtype=torch.bool)  # (L + 1, V)
    for lv, (off, size) in enumerate(zip(vocab.level_offsets(), vocab.level_sizes)):
        table[lv, off:off + size] = True
    table[L, EOS] = True
    if isinstance(level, int):
        if not 0 <= level <= L:
            raise ValueError(f"level {level} is outside 0..{L}")
        return table[level]
    return table.to(level.device)[level]


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits (..., V), mask (..., V) -> log-probabilities (..., V) float32 over the mask, -inf outside."""
    return logits.float().masked_fill(~mask, NEG_INF).log_softmax(dim=-1)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """values (...), weights (...) or None (all 1) -> scalar sum(w * values) / sum(w).

    Positions of weight 0 are selected out (not multiplied by 0), so an inf there does not leak."""
    if weights is None:
        return values.mean()
    w = weights.to(values.dtype).expand_as(values)
    total = torch.where(w > 0, w * values, torch.zeros_like(values)).sum()
    return total / w.sum().clamp(min=torch.finfo(values.dtype).tiny)


def _pair(student_logits, teacher_logits, mask):
    """-> log q, log p (..., V): the student's and the (detached) teacher's masked log-softmax."""
    return masked_log_softmax(student_logits, mask), masked_log_softmax(teacher_logits.detach(), mask)


def _plogp_ratio(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Elementwise p * (log p - log q), 0 where p = 0 (the 0 log 0 = 0 convention).

    The -inf entries are replaced before the product, not only after it, so that their gradient
    is 0 rather than 0 * inf = NaN."""
    live = logp > NEG_INF  # p > 0
    zero = torch.zeros_like(logp)
    logp, logq = torch.where(live, logp, zero), torch.where(live, logq, zero)
    return torch.where(live, logp.exp() * (logp - logq), zero)


def ce(student_logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the target tokens under the masked student: ell = -log q(target).

    student_logits (..., V); target_ids (...) int64 (each inside its mask); mask (..., V)."""
    logq = masked_log_softmax(student_logits, mask)
    return weighted_mean(-logq.gather(-1, target_ids[..., None]).squeeze(-1), weights)


def word_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """WordKD: forward KL, ell = KL(p || q) = sum_v p_v (log p_v - log q_v)."""
    logq, logp = _pair(student_logits, teacher_logits, mask)
    return weighted_mean(_plogp_ratio(logp, logq).sum(-1), weights)


def _tvd(logq: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """(..., V) log-probs -> (...) total variation 0.5 * sum_v |p_v - q_v|."""
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)


def tvd_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """TVD-KD: ell = 0.5 * sum_v |p_v - q_v| (at the ground-truth positions)."""
    return weighted_mean(_tvd(*_pair(student_logits, teacher_logits, mask)), weights)


def seq_kd(student_logits: torch.Tensor, beam_tokens: torch.Tensor, mask: torch.Tensor,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """SeqKD: cross-entropy on the teacher's beams, ell = -log q(y_j | y_<j) for beam token y_j.

    Takes the teacher's beam tokens (...) int64 where the other losses take its logits: the
    teacher's beams, not its distribution, are SeqKD's target. Weights choose how beams count
    (uniform over the top-K' by default)."""
    return ce(student_logits, beam_tokens, mask, weights)


def atspeed_s(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
              weights: torch.Tensor | None = None, K: int = 10, beta: float = 1.0) -> torch.Tensor:
    """AtSpeed-S (strict verification): reverse KL over the student's top-K tokens plus a density term.

    With Q_K the student's K most probable tokens at the position, v_K the K-th of them, and the
    tokens outside Q_K pooled into one outcome R (q_R = 1 - sum_{Q_K} q, p_R likewise):

        ell = sum_{v in Q_K} q_v (log q_v - log p_v) + q_R (log q_R - log p_R)  +  beta * p_{v_K} * H(q),
        H(q) = -sum_v q_v log q_v   (over the level's whole codebook)

    The first term is the reverse KL of the two distributions seen at the resolution of the
    student's top-K: every top-K token kept apart, the rest as one outcome. It is a divergence (>= 0,
    0 iff they agree on Q_K and on the mass outside), so the student cannot lower it by moving mass
    into its tail, as the plain truncated sum over Q_K allows (each q log(q / p) term alone is
    smallest at q = p / e); how the teacher splits the mass outside Q_K does not matter. The second
    term lowers the student's entropy in proportion to how much the teacher values the student's
    K-th choice, concentrating the student's mass on what the teacher ranks high. p_{v_K} is a weight
    (teacher side, no gradient; the choice of v_K is not differentiable). Tokens of Q_K outside the
    mask (K larger than the level) have q = 0 and count 0; their p_{v_K} is 0 too. A token with q > 0
    and p = 0 gives +inf, as reverse KL does."""
    logq, logp = _pair(student_logits, teacher_logits, mask)
    k = min(K, logq.shape[-1])
    top_logq, top = logq.topk(k, dim=-1)  # (..., k) best first
    top_logp = logp.gather(-1, top)  # (..., k)
    outside = torch.ones_like(logq, dtype=torch.bool).scatter(-1, top, False)  # (..., V) tokens not in Q_K
    rest_logq, rest_logp = _log_rest(logq, outside), _log_rest(logp, outside)  # (...) the pooled outside mass
    rkl = _plogp_ratio(top_logq, top_logp).sum(-1) + _plogp_ratio(rest_logq, rest_logp)  # (...)
    entropy = -_plogp_ratio(logq, torch.zeros_like(logq)).sum(-1)  # (...) -sum q log q
    density = top_logp[..., -1].exp() * entropy  # (...) p of the student's K-th token, times H(q)
    return weighted_mean(rkl + beta * density, weights)


def _log_rest(logx: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """log of the mass on the `outside` tokens (..., V) -> (...), exact in the tail (a logsumexp, not
    1 - sum); -inf where there is none (with a 0 gradient there, not NaN)."""
    x = torch.where(outside, logx, torch.full_like(logx, NEG_INF))
    some = (x > NEG_INF).any(-1)
    safe = torch.where(some[..., None], x, torch.zeros_like(x)).logsumexp(-1)
    return torch.where(some, safe, torch.full_like(safe, NEG_INF))


def atspeed_r(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """AtSpeed-R (relaxed verification): ell = TVD(q, p) = 0.5 * sum_v |p_v - q_v| at the positions
    of the teacher's beams. A drafted token is accepted with probability min(1, p/q), so the
    acceptance rate at a position is sum_v min(p_v, q_v) = 1 - TVD: minimising this maximises it."""
    return weighted_mean(_tvd(*_pair(student_logits, teacher_logits, mask)), weights)


def mix(ce_loss: torch.Tensor, align_loss: torch.Tensor, alpha: float = 0.7) -> torch.Tensor:
    """(1 - alpha) * CE(ground truth) + alpha * L_align (the paper's alpha is 0.7)."""
    return (1.0 - alpha) * ce_loss + alpha * align_loss


# --- drafters trained on the target's own outputs (training/unrolled.py): over the whole vocabulary -------
def soft_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy to the teacher's full next-token distribution, ell = -sum_v p_v log q_v with
    p = softmax(t), q = softmax(s) over all V tokens (no level mask: the drafter learns the target's
    distribution as the target computes it). Its gradient is that of KL(p || q)."""
    logq = student_logits.float().log_softmax(dim=-1)
    p = teacher_logits.detach().float().softmax(dim=-1)
    return weighted_mean(-(p * logq).sum(-1), weights)


def feature_head_loss(pred: torch.Tensor, feature: torch.Tensor, student_logits: torch.Tensor,
                      teacher_logits: torch.Tensor, weights: torch.Tensor | None = None,
                      feature_weight: float = 1.0, ce_weight: float = 0.1) -> torch.Tensor:
    """EAGLE's loss for a feature head: ell = feature_weight * SmoothL1(f^, f) + ce_weight * soft CE(p, q).

    pred, feature (..., C): the head's predicted feature and the target's real one (its final hidden state);
    SmoothL1 (beta 1) is averaged over the C channels. student_logits (..., V): the target's LM head on pred;
    teacher_logits (..., V): on feature. weights (...) as everywhere here."""
    l1 = torch.nn.functional.smooth_l1_loss(pred.float(), feature.detach().float(), reduction="none").mean(-1)
    return feature_weight * weighted_mean(l1, weights) + ce_weight * soft_ce(student_logits, teacher_logits, weights)
