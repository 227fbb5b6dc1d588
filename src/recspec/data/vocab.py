"""Vocabulary (special tokens + one token range per SID level) and prompts.

A prompt is `<bos> item_1 <eos> item_2 <eos> ... item_n <eos>` with each item written as its L code
tokens; the model then generates the next item's L codes and `<eos>`. `<eos>` is both the item
separator and the end token, so one training sequence teaches every next item at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recspec.data.datasets import HISTORY_LEN
from recspec.data.sids import SIDIndex
from recspec.errors import DataError

SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Vocab:
    level_sizes: tuple[int, ...]  # codebook size per SID level
    prefixes: tuple[str, ...]  # token prefix per level ("a", "b", ...)

    @staticmethod
    def for_index(index: SIDIndex) -> "Vocab":
        return Vocab(level_sizes=tuple(index.level_sizes), prefixes=tuple(index.prefixes))

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def size(self) -> int:
        return len(SPECIALS) + sum(self.level_sizes)

    def level_offsets(self) -> tuple[int, ...]:
        """Token id of code 0 of each level."""
        out, off = [], len(SPECIALS)
        for s in self.level_sizes:
            out.append(off)
            off += s
        return tuple(out)

    def item_tokens(self, codes: np.ndarray) -> np.ndarray:
        """(..., L) codes -> (..., L) token ids."""
        return codes + np.asarray(self.level_offsets(), dtype=np.int64)

    def token_strings(self) -> list[str]:
        out = list(SPECIALS)
        for p, s in zip(self.prefixes, self.level_sizes):
            out += [f"<{p}_{c}>" for c in range(s)]
        return out

    def to_dict(self) -> dict:
        return {"level_sizes": list(self.level_sizes), "prefixes": list(self.prefixes)}

    @staticmethod
    def from_dict(d: dict) -> "Vocab":
        return Vocab(level_sizes=tuple(d["level_sizes"]), prefixes=tuple(d["prefixes"]))


def sequence_tokens(vocab: Vocab, index: SIDIndex, items, where: str = "history") -> list[int]:
    """`<bos> item <eos> item <eos> ...` for the given items (no truncation)."""
    items = list(items)
    if not items:
        raise DataError(f"{where}: empty history; at least one item is needed to recommend")
    bad = [i for i in items if not 0 <= int(i) < index.num_items]
    if bad:
        raise DataError(f"{where}: unknown item id {bad[0]} (catalogue has items 0..{index.num_items - 1})")
    toks = vocab.item_tokens(index.codes[np.asarray(items, dtype=np.int64)])  # (n, L)
    eos = np.full((len(items), 1), EOS, dtype=np.int64)
    return [BOS] + np.concatenate([toks, eos], axis=1).reshape(-1).tolist()


@dataclass(frozen=True)
class Prompts:
    """A batch of prompts, left-padded so every prompt ends at the same column."""

    tokens: torch.Tensor  # (B, T) int64, PAD on the left
    lengths: torch.Tensor  # (B,) int64, real tokens per row

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device) -> "Prompts":
        return Prompts(self.tokens.to(device), self.lengths.to(device))


def build_prompts(vocab: Vocab, index: SIDIndex, histories, history_len: int = HISTORY_LEN,
                  where: str = "history") -> Prompts:
    """Histories (lists of item ids) -> left-padded prompts from each one's last `history_len` items."""
    rows = [sequence_tokens(vocab, index, list(h)[-history_len:], where=f"{where} {i}")
            for i, h in enumerate(histories)]
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), PAD, dtype=torch.int64)
    for i, r in enumerate(rows):
        tokens[i, T - len(r):] = torch.tensor(r, dtype=torch.int64)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    return Prompts(tokens=tokens, lengths=lengths)
