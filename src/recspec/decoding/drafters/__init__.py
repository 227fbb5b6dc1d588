"""Drafters: one file each, registered by name in `DRAFTERS` (`base.register`); `make_drafter` builds one
from what a user names. Nothing outside this package asks which drafter it holds."""

from __future__ import annotations

import torch

from recspec.decoding.constraints import Constraint
from recspec.decoding.drafters.base import DRAFTERS, Drafter, DrafterInputs
from recspec.decoding.drafters.draft_model import DraftModelDrafter
from recspec.decoding.drafters.feature_head import FeatureHeadDrafter
from recspec.decoding.drafters.ngram import NGramDrafter, NGramTable
from recspec.decoding.drafters.retrieval import RetrievalDrafter
from recspec.decoding.drafters.trie_drafter import TrieDrafter
from recspec.decoding.retrieval_table import RetrievalTable
from recspec.decoding.tree_shape import TreeShape
from recspec.models.decoder import Decoder
from recspec.models.heads import FeatureHead

TRIE = "trie"  # the name that selects the model-free trie drafter wherever a draft checkpoint is asked for
MODEL = "draft-model"  # the drafter of a draft checkpoint


NGRAM = "ngram"  # the drafter of an n-gram table
FEATURE_HEAD = "feature-head"  # the drafter of a feature-level draft head (it drafts for its target)
RETRIEVAL = "retrieval"  # the drafter of a retrieval table (LASER pools, `recspec.retrieval`)


def make_drafter(draft: Decoder | FeatureHead | NGramTable | RetrievalTable | str, constraint: Constraint, shape: TreeShape,
                 prior: torch.Tensor | None = None, target: Decoder | None = None) -> Drafter:
    """draft: a draft `Decoder` (the "draft-model" drafter: beam search), a `FeatureHead` (the "feature-head"
    drafter, on `target`'s hidden states), an `NGramTable` (the "ngram" drafter), a `RetrievalTable` (the
    "retrieval" drafter: pools' precomputed trees, rows routed with `drafter.route`) or a `DRAFTERS` name, e.g.
    "trie" (the trie's children ranked by `prior`, e.g. `Catalog.popularity`; no model). shape: the tree."""
    name = drafter_name(draft)
    if name not in DRAFTERS:
        raise ValueError(f"unknown drafter {name!r}: give a draft model, a feature head, an n-gram or retrieval table "
                         f"or one of {', '.join(sorted(DRAFTERS))}")
    model = draft if name == MODEL else None
    table = draft if name in (NGRAM, RETRIEVAL) else None
    head = draft if name == FEATURE_HEAD else None
    return DRAFTERS[name](DrafterInputs(constraint=constraint, shape=shape, model=model, prior=prior, table=table,
                                        head=head, target=target))


def drafter_name(draft: Decoder | FeatureHead | NGramTable | RetrievalTable | str | None) -> str | None:
    """The registry name of what `make_drafter` builds from `draft` (None: no drafter)."""
    if draft is None or isinstance(draft, str):
        return draft
    if isinstance(draft, FeatureHead):
        return FEATURE_HEAD
    if isinstance(draft, RetrievalTable):
        return RETRIEVAL
    return NGRAM if isinstance(draft, NGramTable) else MODEL


__all__ = ["DRAFTERS", "Drafter", "DrafterInputs", "DraftModelDrafter", "FeatureHeadDrafter", "NGramDrafter",
           "NGramTable", "RetrievalDrafter", "RetrievalTable", "TrieDrafter", "TRIE", "MODEL", "NGRAM", "FEATURE_HEAD", "RETRIEVAL", "make_drafter",
           "drafter_name"]
