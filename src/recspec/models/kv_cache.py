"""Static KV cache with explicit slots.

Every token's keys and values are written to a slot chosen by the caller; attention masks say which
slots a query may read. Prompts, committed beams and draft trees all live in one fixed-size buffer,
so shapes never change during decoding (the precondition for CUDA graphs), and beams that share a
prefix share its slots instead of copying them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(eq=False)
class KVCache:
    k: torch.Tensor  # (layers, B, Hkv, S, D)
    v: torch.Tensor  # (layers, B, Hkv, S, D)

    @staticmethod
    def empty(num_layers: int, batch: int, num_kv_heads: int, slots: int, head_dim: int,
              dtype=torch.float32, device="cpu") -> "KVCache":
        shape = (num_layers, batch, num_kv_heads, slots, head_dim)
        return KVCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def slots(self) -> int:
        return int(self.k.shape[3])

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """slots (B, Q) int64; k, v (B, Hkv, Q, D): store each query token's keys/values in its slot."""
        idx = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, Hkv, Q, D)
        self.k[layer].scatter_(2, idx, k.to(self.k.dtype))
        self.v[layer].scatter_(2, idx, v.to(self.v.dtype))

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """src, dst (B, M) int64: move entries src -> dst in every layer (compaction of accepted nodes).

        Reads all sources before writing, so overlapping src/dst ranges are safe."""
        n, b, h, _, d = self.k.shape
        gidx = src[None, :, None, :, None].expand(n, b, h, -1, d)  # (layers, B, Hkv, M, D)
        sidx = dst[None, :, None, :, None].expand(n, b, h, -1, d)
        for buf in (self.k, self.v):
            buf.scatter_(3, sidx, buf.gather(3, gidx))

    def select_batch(self, rows: torch.Tensor) -> "KVCache":
        """A cache holding only the given batch rows (B',) (for dropping finished users)."""
        return KVCache(self.k[:, rows].contiguous(), self.v[:, rows].contiguous())
