"""Drafters: one file each, registered by name in `DRAFTERS` (`base.register`); `make_drafter` builds one
from what a user names. Nothing outside this package asks which drafter it holds."""

from __future__ import annotations

import torch

from recspec.decoding.constraints import Constraint
from recspec.decoding.drafters.base import DRAFTERS, Drafter, DrafterInputs
from recspec.decoding.drafters.draft_model import DraftModelDrafter
from recspec.decoding.drafters.trie_drafter import TrieDrafter
from recspec.decoding.tree_shape import TreeShape
from recspec.models.decoder import Decoder

TRIE = "trie"  # the name that selects the model-free trie drafter wherever a draft checkpoint is asked for
MODEL = "draft-model"  # the drafter of a draft checkpoint


def make_drafter(draft: Decoder | str, constraint: Constraint, shape: TreeShape, prior: torch.Tensor | None = None) -> Drafter:
    """draft: a draft `Decoder` (the "draft-model" drafter: beam search) or a `DRAFTERS` name, e.g. "trie"
    (the trie's children ranked by `prior`, e.g. `Catalog.popularity`; no model). shape: the tree."""
    name, model = (draft, None) if isinstance(draft, str) else (MODEL, draft)
    if name not in DRAFTERS:
        raise ValueError(f"unknown drafter {name!r}: give a draft model or one of {', '.join(sorted(DRAFTERS))}")
    return DRAFTERS[name](DrafterInputs(constraint=constraint, shape=shape, model=model, prior=prior))


def drafter_name(draft: Decoder | str | None) -> str | None:
    """The registry name of what `make_drafter` builds from `draft` (None: no drafter)."""
    return None if draft is None else draft if isinstance(draft, str) else MODEL


__all__ = ["DRAFTERS", "Drafter", "DrafterInputs", "DraftModelDrafter", "TrieDrafter", "TRIE", "MODEL", "make_drafter",
           "drafter_name"]
