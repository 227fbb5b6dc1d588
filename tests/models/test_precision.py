"""bf16 inference that keeps the scores' precision (Decoder.bf16_inference)."""

from __future__ import annotations

import copy

import torch

from recspec.config import ModelConfig
from recspec.data.vocab import Prompts
from recspec.decoding.prompt import prefill
from recspec.models.decoder import Decoder


def _weighted_error(model: Decoder, ref: torch.Tensor, prompts: Prompts) -> float:
    """Mean over users of sum_v p_v |log p_v - log p_v(fp32)|: the error where the probability mass is."""
    with torch.no_grad():
        lp = prefill(model, prompts, 16)[1]
    return float(((lp - ref).abs() * ref.exp()).sum(-1).mean())


def test_bf16_inference_keeps_the_scores_precision():
    """bf16 layers with an fp32 residual stream, final norm and LM head: next-token log-probs stay 1.5x (at least)
    as close to fp32 as with every weight in bf16 (logits rounded to bf16 reordered most users' top-10 lists)."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=128)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # confident logits (|logit| ~ 10), as a trained model's
    prompts = Prompts(torch.randint(3, 300, (64, 12)), torch.full((64,), 12))
    with torch.no_grad():
        ref = prefill(model, prompts, 16)[1]
    mixed = copy.deepcopy(model).bf16_inference()
    assert mixed.lm_head.weight.dtype == torch.float32
    assert mixed.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    cache, _ = prefill(mixed, prompts, 16)
    assert cache.k.dtype == torch.bfloat16  # the cache is read every step: it stays in the layers' dtype
    pure = copy.deepcopy(model).to(torch.bfloat16).eval().fuse_for_inference()
    assert _weighted_error(mixed, ref, prompts) < _weighted_error(pure, ref, prompts) / 1.5
