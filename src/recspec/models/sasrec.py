"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): a causal transformer
over item ids whose output at position t, dotted with the (tied) item embeddings, scores item t + 1.

Conventions:
- tokens are item ids shifted by one; token 0 is padding. Sequences are left-padded, so the newest
  item is always the last column.
- positions are counted from the right (the newest item has position max_len - 1), and a real item
  never attends to a padding slot, so adding left padding leaves a sequence's outputs unchanged.
- blocks are pre-LN (x + attn(LN(x)), x + ffn(LN(x))) with a final LayerNorm; the feed-forward is the
  paper's point-wise two-layer ReLU network of width `hidden`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0  # the padding token; item i is token i + 1


@dataclass(frozen=True)
class SASRecConfig:
    num_items: int  # I, real items (ids 0..I-1); the embedding table has I + 1 rows (row 0: padding)
    hidden: int = 64  # C, embedding and model width
    layers: int = 2  # transformer blocks
    heads: int = 2  # attention heads (hidden must divide by heads)
    max_len: int = 50  # T_max, newest items of a history the model reads (and positions it has)
    dropout: float = 0.2  # on embeddings, attention weights, and each block's outputs (training only)


def to_tokens(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Item-id histories -> (B, T) int64 tokens (id + 1), the newest max_len items of each, left-padded
    with PAD to the longest kept length T (T >= 1)."""
    kept = [list(h)[-max_len:] for h in histories]
    T = max(1, max((len(h) for h in kept), default=1))
    out = torch.full((len(kept), T), PAD, dtype=torch.int64)
    for b, h in enumerate(kept):
        if h:
            out[b, T - len(h):] = torch.tensor(h, dtype=torch.int64) + 1
    return out


def attention_mask(tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, T) -> (B, 1, T, T) bool, True = may attend: causal, never to a padding key, and
    always to itself (so a padding query has one key and no row is empty)."""
    T = tokens.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()  # (T, T)
    real_key = (tokens != PAD)[:, None, None, :]  # (B, 1, 1, T)
    eye = torch.eye(T, dtype=torch.bool, device=tokens.device)
    return (causal & real_key) | eye


class Block(nn.Module):
    """Pre-LN transformer block: causal multi-head attention, then the point-wise feed-forward."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
        self.heads, self.p = cfg.heads, cfg.dropout
        self.ln1, self.ln2 = nn.LayerNorm(cfg.hidden), nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.hidden))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), mask (B, 1, T, T) -> (B, T, C)."""
        B, T, C = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.hidden, padding_idx=PAD)  # (I + 1, C)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)  # (T_max, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        nn.init.normal_(self.item_emb.weight, std=cfg.hidden ** -0.5)
        nn.init.normal_(self.pos_emb.weight, std=cfg.hidden ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) left-padded, T <= max_len -> hidden (B, T, C); row t predicts the item after t."""
        B, T = tokens.shape
        if T > self.cfg.max_len:
            raise ValueError(f"{T} positions, but the model has max_len={self.cfg.max_len}")
        pos = torch.arange(self.cfg.max_len - T, self.cfg.max_len, device=tokens.device)  # (T,) right-aligned
        x = self.item_emb(tokens) * self.cfg.hidden ** 0.5 + self.pos_emb(pos)  # (B, T, C)
        x = self.drop(x) * (tokens != PAD)[..., None]  # padding slots carry nothing
        mask = attention_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., C) -> (..., I) scores of the real items (tied embeddings, padding row left out)."""
        return hidden @ self.item_emb.weight[1:].T

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) left-padded histories (`to_tokens`) -> (B, I) next-item scores from the last position."""
        return self.logits(self.forward(tokens)[:, -1])
