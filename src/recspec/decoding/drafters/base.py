"""The drafter interface and its registry.

A new drafter is one file in this folder, a class with the methods below, registered by name with
`@register("name")`; its constructor takes a `DrafterInputs`. The decoding loops only ever call
`start`, `prefill`, `propose`, `observe` and `state_tensors`, and never ask which drafter they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.constraints import Constraint, as_constraint
from recspec.decoding.handoff import Frontier, Sampling, Scores, Verdict
from recspec.decoding.tree import DraftTree, Layout
from recspec.decoding.tree_shape import TreeShape
from recspec.models.decoder import Decoder
from recspec.models.heads import FeatureHead


@dataclass(frozen=True)
class DrafterInputs:
    """Everything a drafter may be built from; each drafter takes what it needs."""

    constraint: Constraint  # what may be decoded (SID trie, item list, text), on the decoding device
    shape: TreeShape  # the tree every round may draft (N nodes per level; expand)
    model: Decoder | None = None  # a draft checkpoint (model drafters)
    prior: torch.Tensor | None = None  # (S,) log P(child state | parent state), e.g. `Catalog.popularity`
    table: object | None = None  # an n-gram table (`drafters.ngram.NGramTable`), for retrieval drafters
    head: FeatureHead | None = None  # a feature-level draft head (`models.heads`), for the feature-head drafter
    target: Decoder | None = None  # the target being drafted for (feature drafters read its embeddings, LM head)

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraint", as_constraint(self.constraint))  # a bare SID trie: one item


class Drafter(Protocol):
    def start(self, prompts: Prompts, layout: Layout) -> None:
        """Bind the engine's (static) prompt buffers and cache layout; allocate buffers. No model work:
        that is `prefill`, which runs inside the first round (so CUDA graphs capture it)."""

    def prefill(self) -> None:
        """First-round work on the bound prompts (e.g. fill a draft model's cache with them)."""

    def propose(self, frontier: Frontier, depth: int, widths: tuple[int, ...] | None = None,
                sampling: Sampling | None = None) -> DraftTree:
        """Draft `depth` levels of N nodes from the frontier: top-N (sampling None) or N draws without
        replacement from the draft's sequence distribution q at sampling.temperature (with `logq` and
        `draws` filled). widths: at most widths[j] nodes at level j (the rest invalid padding; the tree's
        `fed`)."""

    def observe(self, frontier: Frontier, scores: Scores, verdict: Verdict) -> None:
        """Learn what the target kept (compact caches, update statistics): the round started at `frontier`,
        the target's pass gave `scores` (log-probs and hidden states), verification kept `verdict`."""

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        """Tensors a round mutates (restored around CUDA-graph warm-up); () where none."""


DRAFTERS: dict[str, Callable[[DrafterInputs], Drafter]] = {}


def register(name: str):
    """Class decorator: `DRAFTERS[name]` builds the drafter from a `DrafterInputs`."""
    def deco(factory):
        DRAFTERS[name] = factory
        return factory

    return deco
