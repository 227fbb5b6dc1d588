"""The drafter interface: propose a draft tree from the target's current beams, observe the verdict.

A new drafter is one file in this folder plus an entry in `DRAFTERS`; the decoding loops only ever
call `start`, `propose` and `observe`, never ask which drafter they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.tree import DraftTree, Layout


@dataclass(frozen=True)
class Frontier:
    """The target's current beams, handed to the drafter at the start of a round."""

    pending: torch.Tensor | None  # (B, M) tokens of the newest level, in no cache yet (None: first round)
    pending_slots: torch.Tensor | None  # (B, M) committed slots those tokens go to
    path: torch.Tensor  # (B, M, L) committed slots of each beam's tokens, pending ones included; sink-padded
    scores: torch.Tensor  # (B, M) the target's cumulative log-probs
    states: torch.Tensor  # (B, M) trie states
    level: torch.Tensor  # (B,) SID levels produced so far (the pending level's number)
    banned: torch.Tensor | None = None  # (B, S) bool trie states a user may not enter (exclusions; None: none)


@dataclass(frozen=True)
class Verdict:
    """What verification kept: KV entries to compact from tree slots into committed slots."""

    copy_src: torch.Tensor  # (B, C) tree slots of accepted nodes (sink: nothing)
    copy_dst: torch.Tensor  # (B, C) committed slots they move to (sink: nothing)
    accepted: torch.Tensor  # (B,) levels accepted this round


class Drafter(Protocol):
    def start(self, prompts: Prompts, layout: Layout) -> None:
        """Bind the engine's (static) prompt buffers and cache layout; allocate buffers. No model work:
        that is `prefill`, which runs inside the first round (so CUDA graphs capture it)."""

    def prefill(self) -> None:
        """First-round work on the bound prompts (e.g. fill a draft model's cache with them)."""

    def propose(self, frontier: Frontier, depth: int, sample: bool, generator: torch.Generator | None,
                widths: tuple[int, ...] | None = None, temperature: float = 1.0) -> DraftTree:
        """Draft `depth` levels of N nodes from the frontier: top-N (sample=False) or N i.i.d.
        draws from the draft's sequence distribution q (sample=True, with `logq` and `draws` filled).
        widths: at most widths[j] nodes at level j (the rest invalid padding; the tree's `fed`).
        temperature: sampling drafts draw from the cumulative log-probs / temperature."""

    def observe(self, verdict: Verdict) -> None:
        """Learn what the target kept (compact caches, update statistics)."""


DRAFTERS: dict[str, Callable[..., Drafter]] = {}


def register(name: str):
    def deco(factory):
        DRAFTERS[name] = factory
        return factory

    return deco
