"""Drafters: one file each, registered by name in `DRAFTERS`; `make_drafter` builds one from what a user names."""

from __future__ import annotations

import torch

from recspec.data.popularity import popularity_prior
from recspec.data.trie import SIDTrie
from recspec.decoding.drafters.base import DRAFTERS, Drafter
from recspec.decoding.drafters.draft_model import DraftModelDrafter
from recspec.decoding.drafters.trie_drafter import TrieDrafter

TRIE = "trie"  # the name that selects the model-free trie drafter wherever a draft checkpoint is asked for


def make_drafter(draft, trie: SIDTrie, N: int, expand: float = 2.0, prior: torch.Tensor | None = None) -> Drafter:
    """draft: a draft `Decoder` (drafts by beam search) or "trie" (the trie's children ranked by `prior`,
    e.g. `Catalog.popularity`; no model)."""
    if isinstance(draft, str):
        if draft != TRIE:
            raise ValueError(f"unknown drafter {draft!r}: give a draft model or {TRIE!r}")
        return TrieDrafter(trie, N, None if prior is None else prior.to(trie.next_state.device))
    return DraftModelDrafter(draft, trie, N, expand)


__all__ = ["DRAFTERS", "Drafter", "DraftModelDrafter", "TrieDrafter", "TRIE", "make_drafter", "popularity_prior"]
