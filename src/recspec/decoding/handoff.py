"""What the phases of a round hand each other: frontier -> (drafter) tree -> scores -> verdict.

    Beams     the target's K beams per user and each user's level (the engine's state between rounds)
    Frontier  those beams as the drafter and the target's pass see them at the start of a round
    DraftTree what the drafter proposes (decoding/tree.py)
    Scores    the target's one pass over [pending beam tokens | tree nodes]: log-probs and hidden states
    Verdict   what verification accepted: tree nodes per level, and the KV slot copies that commit them
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Beams:
    """The target's K beams per user, and where each user stands."""

    scores: torch.Tensor  # (B, M) cumulative log-probs
    states: torch.Tensor  # (B, M) trie states
    codes: torch.Tensor  # (B, M, L) token ids of the levels produced so far (0-padded)
    path: torch.Tensor  # (B, M, L) committed slots of those tokens (sink-padded)
    level: torch.Tensor  # (B,) levels produced (0..lay.end; lay.end = finished: L, or L + 1 with <eos>)

    def copy_(self, other: "Beams") -> None:
        """In place, so the tensors stay the same objects (static buffers for CUDA graphs)."""
        for name in BEAM_FIELDS:
            getattr(self, name).copy_(getattr(other, name))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in BEAM_FIELDS)


BEAM_FIELDS = ("scores", "states", "codes", "path", "level")


@dataclass(frozen=True)
class Frontier:
    """The target's current beams, handed to the drafter and to the target's pass at the start of a round."""

    pending: torch.Tensor | None  # (B, M) tokens of the newest level, in no cache yet (None: first round)
    pending_slots: torch.Tensor | None  # (B, M) committed slots those tokens go to
    path: torch.Tensor  # (B, M, L) committed slots of each beam's tokens, pending ones included; sink-padded
    scores: torch.Tensor  # (B, M) the target's cumulative log-probs
    states: torch.Tensor  # (B, M) trie states
    level: torch.Tensor  # (B,) SID levels produced so far (the pending level's number)
    banned: torch.Tensor | None = None  # (B, S) the constraint's per-user bans (exclusions; None: none)
    codes: torch.Tensor | None = None  # (B, M, n) tokens of each beam so far (the first `level`; 0-padded)


@dataclass(frozen=True)
class Sampling:
    """How a sampling rule wants the tree drafted: N draws without replacement from the draft's q."""

    temperature: float = 1.0  # draws from the cumulative log-probs / temperature
    generator: torch.Generator | None = None  # None: torch's global RNG (compiled and captured rounds)


@dataclass(frozen=True)
class Scores:
    """The target's one pass of a round."""

    beams: torch.Tensor  # (B, M, V) log-probs of the next token after each current beam
    tree: torch.Tensor | None  # (B, d, N, V) log-probs after each tree node (-inf rows: nodes not fed)
    hidden: torch.Tensor  # (B, Q, C) final hidden states of the Q tokens fed (for feature-level drafters):
    #                       Q - sum(fed) rows of the beams' tokens (the prompt on the first round), then each tree
    #                       level's first fed[j] nodes
    fed: tuple[int, ...] = ()  # tree nodes fed per level (static per round plan; () without a tree)
    prefill: bool = False  # the pass began with the prompt (first round): its rows are the prompt's columns


@dataclass(frozen=True)
class Verdict:
    """What verification kept."""

    nodes: torch.Tensor  # (B, J, K) tree node of each new beam at each verified level j (-1: not a drafted node,
    #                      or not kept); J = levels verified this round (the last one is the target's own)
    copy_src: torch.Tensor  # (B, J * K) tree slots of accepted nodes (sink: nothing)
    copy_dst: torch.Tensor  # (B, J * K) committed slots they move to (sink: nothing)
    accepted: torch.Tensor  # (B,) levels accepted this round
    tokens: torch.Tensor  # (B, J, K) token of each new beam at each verified level (the target's own at the
    #                       last; a user's first accepted + 1 levels are committed this round)
    banned: torch.Tensor | None = None  # (B, S) the bans after the round's committed tokens (None: none)
