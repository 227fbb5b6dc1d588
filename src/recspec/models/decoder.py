"""The LLaMA-architecture decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Module and parameter names follow Hugging Face's `LlamaForCausalLM`, so its state dict loads as is.
Two entry points:
  - `forward(tokens, positions, mask, cache, slots)`: any boolean attention mask over the cache
    slots (causal prefill, beams sharing a prompt, tree attention); writes keys/values to `slots`.
  - `forward_train(tokens)`: plain causal attention over right-padded sequences, no cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recspec.config import ModelConfig
from recspec.models.kv_cache import KVCache
from recspec.models.pad import PADModule


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised in fp32 at least; returned in the gain's dtype, which is the next layer's input dtype
        (an fp32 residual stream feeds bf16 projections in bf16; see `Decoder.bf16_inference`)."""
        if x.is_cuda and not torch.is_grad_enabled():  # inference on GPU: one fused kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps).to(self.weight.dtype)
        dtype = self.weight.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, Q) -> cos, sin (B, 1, Q, D) for the rotate-half RoPE convention."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, Q, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, Q, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, Q, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)

    def _qkv(self, x, cos, sin):
        B, Q, _ = x.shape
        hd, H, Hkv = self.cfg.head_dim, self.cfg.num_heads, self.cfg.num_kv_heads
        fused = getattr(self, "qkv_weight", None)
        if fused is not None:  # inference: one GEMM, one RoPE pass over q and k together
            qkv = F.linear(x, fused).view(B, Q, H + 2 * Hkv, hd).transpose(1, 2)  # (B, H + 2Hkv, Q, D)
            qk = apply_rope(qkv[:, : H + Hkv], cos, sin)
            return qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]
        q = self.q_proj(x).view(B, Q, H, hd).transpose(1, 2)  # (B, H, Q, D)
        k = self.k_proj(x).view(B, Q, Hkv, hd).transpose(1, 2)  # (B, Hkv, Q, D)
        v = self.v_proj(x).view(B, Q, Hkv, hd).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, mask: torch.Tensor | None, cache: KVCache | None, slots) -> torch.Tensor:
        """x (B, Q, C); mask (B, Q, S) bool over cache slots, or None for causal attention over x."""
        B, Q, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        gqa = self.cfg.num_heads != self.cfg.num_kv_heads
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            cache.write(self.layer, slots, k, v)
            kc, vc = cache.k[self.layer], cache.v[self.layer]  # (B, Hkv, S, D)
            out = F.scaled_dot_product_attention(q, kc.to(q.dtype), vc.to(q.dtype), attn_mask=mask[:, None],
                                                 enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, Q, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        fused = getattr(self, "gate_up_weight", None)
        if fused is not None:  # inference: one GEMM for gate and up
            gate, up = F.linear(x, fused).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, mask, cache, slots):
        x = x + _drop(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, slots), self.dropout, self.training)
        return x + _drop(self.mlp(self.post_attention_layernorm(x)), self.dropout, self.training)


def _drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout in training only; inference never runs an op for it (graphs and outputs stay as without it)."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


class Body(nn.Module):
    """Named like HF's `LlamaModel` (`model.*` parameters)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init)
        # position-aware drafting after the token embedding (models/pad.py), built last so the other weights
        # draw what they draw without it; None (every checkpoint without it): no module, the forward unchanged
        self.pad = PADModule(cfg.pad, cfg.hidden_size, cfg.vocab_size) if cfg.pad is not None else None
        self.stream_dtype: torch.dtype | None = None  # residual stream dtype (None: the embeddings'); bf16_inference

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def hidden(self, tokens, positions, mask=None, cache: KVCache | None = None, slots=None,
               steps: torch.Tensor | None = None) -> torch.Tensor:
        """tokens, positions (B, Q) -> final hidden states (B, Q, C), in the final norm's dtype. steps (B, Q):
        the tokens' draft depths for a PAD module (None: 0; ignored without one)."""
        x = self.model.embed_tokens(tokens)
        if self.pad is not None:
            x = self.pad(x, tokens, steps)
        x = _drop(x, self.cfg.dropout, self.training)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)  # the layers' dtype
        x = x.to(self.stream_dtype or x.dtype)
        for block in self.model.layers:
            x = block(x, cos, sin, mask, cache, slots)
        return self.model.norm(x)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache,
                slots: torch.Tensor, with_hidden: bool = False, steps: torch.Tensor | None = None):
        """tokens, positions, slots (B, Q); mask (B, Q, S) bool over cache slots -> logits (B, Q, V), and
        with_hidden also the final hidden states (B, Q, C): (logits, hidden). steps: as in `hidden`.

        Keys/values of the Q tokens are written to `slots` before attention, so a query may attend
        to itself and to tokens of the same call (tree attention)."""
        hidden = self.hidden(tokens, positions, mask, cache, slots, steps)
        return (self.head(hidden), hidden) if with_hidden else self.head(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., C) -> logits (..., V), in the LM head's dtype."""
        return self.lm_head(hidden.to(self.lm_head.weight.dtype))

    def forward_train(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T), right-padded -> logits (B, T, V) under causal attention, positions 0..T-1."""
        pos = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        return self.lm_head(self.hidden(tokens, pos))

    @torch.no_grad()
    def fuse_for_inference(self) -> "Decoder":
        """Concatenate q/k/v and gate/up weights into single GEMMs (fewer, larger kernels).

        A snapshot: call again after the weights change; `unfuse()` drops it (training does)."""
        for block in self.model.layers:
            a, m = block.self_attn, block.mlp
            a.qkv_weight = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], dim=0)
            m.gate_up_weight = torch.cat([m.gate_proj.weight, m.up_proj.weight], dim=0)
        return self

    @torch.no_grad()
    def bf16_inference(self) -> "Decoder":
        """In place: bf16 weights for the decoder layers (the bytes a decoding step reads), fp32 for what
        sets the scores' precision: the residual stream, the final norm and the LM head (V x C, small next
        to the layers). Logits rounded to bf16 alone moved beam scores by up to 0.06 nats per level and
        reordered most users' top-10 lists; see evaluation/precision.py. Fused for inference."""
        self.to(torch.bfloat16)
        self.model.norm.float()
        self.lm_head.float()
        self.stream_dtype = torch.float32
        return self.eval().fuse_for_inference()

    def unfuse(self) -> "Decoder":
        for block in self.model.layers:
            block.self_attn.qkv_weight = None
            block.mlp.gate_up_weight = None
        return self

    def new_cache(self, batch: int, slots: int, dtype=None, device=None) -> KVCache:
        p = self.model.embed_tokens.weight  # the layers' dtype (the LM head may be kept in fp32)
        return KVCache.empty(self.cfg.num_layers, batch, self.cfg.num_kv_heads, slots, self.cfg.head_dim,
                             dtype=dtype or p.dtype, device=device or p.device)
