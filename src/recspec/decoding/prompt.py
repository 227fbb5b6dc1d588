"""Prefill: run the prompts through a model once, writing their keys/values to slots 0..T-1.

Cache layout used by every decoding loop (per user, S slots):
    [0, T)                    the left-padded prompt, stored once per user (not once per beam)
    [T, T + L*K)              committed beam tokens: level j, beam k at slot T + j*K + k
    [T + L*K, S)              scratch for draft trees (speculative modes)
A query's attention mask selects the prompt's real slots plus its own ancestors' slots.
"""

from __future__ import annotations

import torch

from recspec.data.vocab import Prompts
from recspec.models.decoder import Decoder
from recspec.models.kv_cache import KVCache


def prompt_key_mask(prompts: Prompts, slots: int) -> torch.Tensor:
    """(B, S) bool: True on the slots holding real prompt tokens."""
    B, T = prompts.tokens.shape
    col = torch.arange(slots, device=prompts.tokens.device)
    return (col[None] >= T - prompts.lengths[:, None]) & (col[None] < T)


def prompt_positions(prompts: Prompts) -> torch.Tensor:
    """(B, T) position ids: 0 at each prompt's first real token (pads clamped to 0)."""
    B, T = prompts.tokens.shape
    col = torch.arange(T, device=prompts.tokens.device)
    return (col[None] - (T - prompts.lengths[:, None])).clamp(min=0)


def prefill_mask(prompts: Prompts, slots: int) -> torch.Tensor:
    """(B, T, S) causal mask over real prompt slots; pad queries see only themselves (no empty rows)."""
    B, T = prompts.tokens.shape
    dev = prompts.tokens.device
    keys = prompt_key_mask(prompts, slots)  # (B, S)
    q = torch.arange(T, device=dev)[:, None]
    k = torch.arange(slots, device=dev)[None]
    causal = (k <= q)[None] & keys[:, None, :]  # (B, T, S)
    return causal | (k == q)[None]


def prefill(model: Decoder, prompts: Prompts, slots: int, cache: KVCache | None = None) -> tuple[KVCache, torch.Tensor]:
    """Prompts -> (cache with the prompt in slots [0, T), log-probs of the next token (B, V) in fp32)."""
    B, T = prompts.tokens.shape
    cache = cache if cache is not None else model.new_cache(B, slots)
    write = torch.arange(T, device=prompts.tokens.device).expand(B, T)
    logits = model(prompts.tokens, prompt_positions(prompts), prefill_mask(prompts, slots), cache, write)
    return cache, torch.log_softmax(logits[:, -1].float(), dim=-1)


def ancestor_mask(prompt_keys: torch.Tensor, path_slots: torch.Tensor) -> torch.Tensor:
    """prompt_keys (B, S); path_slots (B, M, t) slots of each query's path (itself included)
    -> (B, M, S) bool: the prompt plus the path."""
    B, M, _ = path_slots.shape
    mask = prompt_keys[:, None, :].expand(B, M, -1).clone()
    if path_slots.shape[-1]:
        mask.scatter_(2, path_slots, True)
    return mask
