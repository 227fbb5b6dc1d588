"""Position-aware drafting (PAD, spec listwise-and-pad.md section 3): slot and step embeddings for a drafter.

Two facts it builds on: a SID token's meaning depends on its slot inside the item (each level is its own
codebook), and a drafter's uncertainty grows with its draft depth. Right after a drafter's input projection
(the feature head's, models/heads.py) or token embedding (a draft `Decoder`), h (B, Q, C) becomes

    h <- h + alpha * E_item[s]                   (alpha a learnable scalar, 0 at init)
    g  = sigmoid(W_g [h ; E_step[k]] + b_g)      (one scalar gate per token, W_g = 0 and b_g = -2 at init)
    h <- h + g * E_step[k]                       (E_step 0 at init)

s: the slot of the token being predicted (`next_slot_table`); k: the step index, the draft depth of the token
fed (0 for the prompt and the pass over accepted tokens, d for a token drafted at tree level d - 1), clipped at
k_max. Without the gate (PADConfig.gate False) the step term is the plain sum h + E_step[k]. E_step starts at 0
and alpha at 0, so the module starts as the identity in every variant (a closed gate alone would not be:
sigmoid(-2) = 0.12) and cannot hurt a trained drafter it is added to. Cost: two gathers and a 2C-wide dot
product per token.
"""

from __future__ import annotations

import torch
from torch import nn

from recspec.config import PADConfig
from recspec.data.vocab import BOS, EOS, SPECIALS

GATE_BIAS = -2.0  # b_g at init: the gate starts near closed


def next_slot_table(level_sizes: tuple[int, ...], vocab_size: int) -> torch.Tensor:
    """(V,) int64: the slot of the token that follows each token id, a function of that token's own slot.
    A level-l code (0 <= l < L) is followed by level l + 1 (L: the item's <eos>); <eos> and <bos> by level 0
    (a new item); anything else (<pad>, tokens outside the SID vocabulary) by L + 1."""
    L = len(level_sizes)
    table = torch.full((vocab_size,), L + 1, dtype=torch.int64)
    table[EOS] = table[BOS] = 0
    off = len(SPECIALS)
    for level, size in enumerate(level_sizes):
        table[off:off + size] = level + 1
        off += size
    return table


class PADModule(nn.Module):
    def __init__(self, cfg: PADConfig, hidden_size: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("next_slot", next_slot_table(cfg.level_sizes, vocab_size), persistent=False)  # (V,)
        if cfg.slot:
            self.E_item = nn.Embedding(cfg.num_slots, hidden_size)  # (L + 2, C)
            self.alpha = nn.Parameter(torch.zeros(()))
        if cfg.step:
            self.E_step = nn.Embedding(cfg.k_max + 1, hidden_size)  # (k_max + 1, C)
            if cfg.gate:
                self.gate = nn.Linear(2 * hidden_size, 1)  # W_g (1, 2C), b_g (1,)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The identity: alpha = 0, E_step = 0, W_g = 0, b_g = -2 (E_item random, so alpha gets a gradient).
        Owners call it after their own initialisation, which would overwrite these."""
        if self.cfg.slot:
            nn.init.normal_(self.E_item.weight, std=0.02)
            self.alpha.zero_()
        if self.cfg.step:
            self.E_step.weight.zero_()
            if self.cfg.gate:
                self.gate.weight.zero_()
                self.gate.bias.fill_(GATE_BIAS)

    def slots(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, Q) fed -> (B, Q) slot of the token each one predicts."""
        return self.next_slot[tokens]

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, Q, C) after the input projection / embedding; tokens (B, Q) the tokens fed; steps (B, Q) their
        step indices (None: all 0, the pass over accepted tokens) -> h (B, Q, C)."""
        if self.cfg.slot:
            h = h + self.alpha.to(h.dtype) * self.E_item(self.slots(tokens)).to(h.dtype)
        if self.cfg.step:
            k = torch.zeros_like(tokens) if steps is None else steps.clamp(0, self.cfg.k_max)
            e = self.E_step(k).to(h.dtype)  # (B, Q, C)
            if self.cfg.gate:
                g = torch.sigmoid(self.gate(torch.cat([h, e], dim=-1).to(self.gate.weight.dtype))).to(h.dtype)  # (B, Q, 1)
                e = g * e
            h = h + e
        return h
