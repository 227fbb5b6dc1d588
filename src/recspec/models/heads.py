"""A feature-level draft head in the style of EAGLE: one decoder layer on the target's own hidden states.

Terms. The target's feature f_i (C,) is its final hidden state (after its final norm) at position i: the
input of its LM head, so logits_i = lm_head(f_i) predict token x_{i + 1}. The head is fed pairs: at
position i + 1 the token x_{i + 1} and the feature before it, f_i, and predicts the next feature:

    h      = W_in [embed(x_{i+1}) ; f_i]             (2C -> C; embed is the target's, frozen)
    h      = PAD(h, slot, step)                       (optional, models/pad.py; starts as the identity)
    f^_i+1 = norm(layer(h))                           (one LLaMA decoder layer of the target's shape)
    logits = lm_head(f^_i+1)                          (the target's LM head, frozen: predicts x_{i+2})

While drafting, f^ stands in for the feature the target has not computed yet: a token drafted at tree
depth d is fed with its parent's f^ (step index d), the newest accepted token with the target's real f
(step 0). The head holds no target weight: the target is passed to each call, so a head checkpoint is only
the head (safetensors + json, no pickle; `save_head` / `load_head`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import torch
from safetensors.torch import save_file
from torch import nn

from recspec.config import ModelConfig, PADConfig, to_dict
from recspec.errors import CheckpointError
from recspec.models.decoder import Block, Decoder, RMSNorm, rope_cos_sin
from recspec.models.hf import CheckpointMeta, load_weights, read_json, read_meta, replace_folder, write_meta
from recspec.models.kv_cache import KVCache
from recspec.models.pad import PADModule

HEAD_CONFIG, HEAD_WEIGHTS = "head.json", "head.safetensors"
ROLE = "feature-head"  # CheckpointMeta.role of a head


def head_config(target: ModelConfig, pad: PADConfig | None = None, layers: int = 1) -> ModelConfig:
    """The head's shape: the target's width, heads and vocabulary, `layers` decoder layers, no dropout."""
    return dataclasses.replace(target, num_layers=layers, dropout=0.0, pad=pad)


class FeatureHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        """cfg: `head_config(target.cfg, pad)`; its vocabulary and width must be the target's."""
        super().__init__()
        self.cfg = cfg
        C = cfg.hidden_size
        self.fc = nn.Linear(2 * C, C, bias=False)  # [token embedding ; feature] -> h
        self.pad = PADModule(cfg.pad, C, cfg.vocab_size) if cfg.pad is not None else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(C, cfg.rms_eps)
        self.apply(Decoder._init)
        if self.pad is not None:
            self.pad.reset_parameters()

    def check_fits(self, target: Decoder) -> None:
        """Refuse a target of another width or vocabulary (the head reads its features, embeddings, LM head)."""
        t, c = target.cfg, self.cfg
        if (t.hidden_size, t.vocab_size) != (c.hidden_size, c.vocab_size):
            raise CheckpointError(f"feature head of width {c.hidden_size} and {c.vocab_size} tokens does not fit a "
                                  f"target of width {t.hidden_size} and {t.vocab_size} tokens")

    def features(self, target: Decoder, tokens: torch.Tensor, feats: torch.Tensor, positions: torch.Tensor,
                 mask: torch.Tensor | None = None, cache: KVCache | None = None, slots: torch.Tensor | None = None,
                 steps: torch.Tensor | None = None) -> torch.Tensor:
        """tokens, positions (B, Q) the tokens fed and their positions; feats (B, Q, C) the feature before each
        (the target's, or the head's own prediction); mask (B, Q, S) over `cache` slots, keys/values written to
        `slots` (None, None: causal attention over the Q pairs); steps (B, Q) draft depths (PAD; None: 0)
        -> predicted next features (B, Q, C)."""
        w = self.fc.weight
        with torch.no_grad():
            emb = target.model.embed_tokens(tokens)  # (B, Q, C) frozen
        h = self.fc(torch.cat([emb.to(w.dtype), feats.to(w.dtype)], dim=-1))  # (B, Q, C)
        if self.pad is not None:
            h = self.pad(h, tokens, steps)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache, slots)
        return self.norm(h)

    def forward(self, target: Decoder, tokens: torch.Tensor, feats: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None = None, cache: KVCache | None = None, slots: torch.Tensor | None = None,
                steps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As `features` -> (logits (B, Q, V) from the target's frozen LM head, predicted features (B, Q, C))."""
        f = self.features(target, tokens, feats, positions, mask, cache, slots, steps)
        return target.head(f), f

    def new_cache(self, batch: int, slots: int) -> KVCache:
        p = self.fc.weight
        return KVCache.empty(self.cfg.num_layers, batch, self.cfg.num_kv_heads, slots, self.cfg.head_dim,
                             dtype=p.dtype, device=p.device)


# --- checkpoints ----------------------------------------------------------------------------------
def save_head(head: FeatureHead, meta: CheckpointMeta, folder: str | os.PathLike) -> None:
    """folder/head.json (the head's ModelConfig), head.safetensors, recspec.json; written atomically."""
    folder = os.fspath(folder)
    tmp = folder.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    save_file(state, os.path.join(tmp, HEAD_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(tmp, HEAD_CONFIG), "w") as f:
        json.dump({"role": ROLE, "model": to_dict(head.cfg)}, f, indent=2)
    write_meta(tmp, dataclasses.replace(meta, role=ROLE))
    replace_folder(tmp, folder)


def is_head(folder: str | os.PathLike) -> bool:
    """A folder written by `save_head` (a draft decoder's folder has config.json instead)."""
    return os.path.isfile(os.path.join(os.fspath(folder), HEAD_CONFIG))


def load_head(folder: str | os.PathLike, device="cpu") -> tuple[FeatureHead, CheckpointMeta | None]:
    """The head `save_head` wrote, fp32 on `device`, in eval mode."""
    folder = os.fspath(folder)
    cfg_path = os.path.join(folder, HEAD_CONFIG)
    if not is_head(folder):
        raise CheckpointError(f"{folder}: not a feature head folder ({HEAD_CONFIG} missing)")
    raw = read_json(cfg_path)
    try:
        cfg = ModelConfig(**raw["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: not a feature head config ({type(e).__name__}: {e})") from None
    head = FeatureHead(cfg)
    load_weights(head, os.path.join(folder, HEAD_WEIGHTS), HEAD_CONFIG)
    return head.to(device).eval(), read_meta(folder)
