"""What may be decoded: a constraint gives the tokens each state allows and the state after a token.

The engine and the drafters see only this protocol, never a SID: a sequence is `num_levels` tokens, the
state before the first is `ROOT`, and `allowed` / `step` decide everything else. Per-user bans (a
(B, num_states) bool mask: states a user may not enter) start from exclusions (`initial_bans`) and may
grow as tokens are committed (`advance_bans`: a list never repeats an item). A ban state is whatever the
constraint reads in `allowed` (a bool mask for one SID, item counts for a list); the engine only stores it.

    SIDConstraint  one item: its L codes (the SID trie; top-K beam search over items)
    ItemList       M items, each its L codes then <eos>, no item twice, optionally none of the history
    FreeText       text over a vocabulary: any token but the special ones; after <eos>, only <eos>
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from recspec.data.exclusion import banned_states, live_counts, prefix_states
from recspec.data.trie import SIDTrie
from recspec.data.vocab import EOS


class Constraint(Protocol):
    vocab_size: int  # V: token ids 0..V-1
    num_levels: int  # tokens a finished sequence has (the engine's levels)
    num_states: int  # states (the width of a ban mask)
    ROOT: int  # the state before the first token
    unit: str  # what one sequence is, in messages ("items", "lists", "texts")

    def allowed(self, state: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """(B, ...) states -> (B, ..., V) bool: the tokens each state allows; banned (B, num_states): states
        user b may not enter."""

    def step(self, state: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """(...,) states, (...,) tokens -> (...,) next states (a token not allowed leads to a dead state)."""

    def advance_bans(self, banned: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor | None:
        """After a committed step to `state` (B, K): the bans from now on (pure; None stays None)."""

    def initial_bans(self, exclude: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """exclude (B, U) bool SID rows a user may not get (or None) -> the first ban mask (None: none)."""

    def outputs(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, num_levels) decoded tokens -> what they mean (SID rows, item lists, or the tokens)."""

    def max_beams(self) -> int:
        """The most distinct sequences (K may not exceed it)."""

    def finished(self, state: torch.Tensor) -> torch.Tensor | None:
        """(...,) states -> (...,) bool: the sequence is complete and the rest is `filler` (text after <eos>);
        None where sequences always run their num_levels tokens. A user whose beams are all finished stops."""

    def to(self, device) -> "Constraint":
        ...


@dataclass(frozen=True, eq=False)
class SIDConstraint:
    """One item per sequence: the SID trie's L codes (top-K recommendation). Its states are the trie's."""

    trie: SIDTrie

    ROOT = SIDTrie.ROOT
    unit = "items"

    @property
    def vocab_size(self) -> int:
        return self.trie.vocab_size

    @property
    def num_levels(self) -> int:
        return self.trie.num_levels

    @property
    def num_states(self) -> int:
        return int(self.trie.next_state.shape[0])

    def allowed(self, state, banned=None):
        return self.trie.allowed(state, banned)

    def step(self, state, token):
        return self.trie.step(state, token)

    def advance_bans(self, banned, state):
        return banned

    def initial_bans(self, exclude, batch, device):
        return None if exclude is None else banned_states(self.trie, exclude.to(device))

    def outputs(self, codes):
        """(B, K, L) codes -> (B, K) SID rows (-1 where the codes are no SID)."""
        return self.trie.leaf_sid[self.trie.walk(codes)]

    def max_beams(self) -> int:
        return self.trie.num_sids

    def finished(self, state):
        return None

    def to(self, device) -> "SIDConstraint":
        return SIDConstraint(self.trie.to(device))


@dataclass(frozen=True, eq=False)
class ItemList:
    """M items in a row, each its L codes then <eos> (the end-of-item token the targets are trained with),
    no item twice, optionally none of a user's history (`initial_bans`). Greedy (K = 1): bans are per user.

    State = m * S + s: m items finished, s the trie state inside the current one (S trie states); a trie
    leaf allows only <eos>, which starts item m + 1 at the root. m = M (or a token not allowed) is done:
    nothing is allowed there. The per-user ban state is `live` (B, S) int32, the items a user may still
    get below each trie state: an item reached is taken off its leaf and every prefix above it
    (`advance_bans`), and a state with none left is never entered, so a list never walks into a prefix
    whose items it already holds."""

    trie: SIDTrie
    M: int  # items per list

    ROOT = SIDTrie.ROOT
    unit = "lists (greedy: one per user)"

    def __post_init__(self) -> None:
        if self.M < 1:
            raise ValueError(f"a list holds M >= 1 items, got {self.M}")
        object.__setattr__(self, "_ancestors", prefix_states(self.trie))  # (U, L + 1) states above each SID row

    @property
    def vocab_size(self) -> int:
        return self.trie.vocab_size

    @property
    def num_levels(self) -> int:
        return self.M * (self.trie.num_levels + 1)

    @property
    def num_states(self) -> int:
        return int(self.trie.next_state.shape[0])  # bans are on trie states (leaves: items)

    def _split(self, state):
        S = self.num_states
        return state // S, state % S

    def allowed(self, state, banned=None):
        m, s = self._split(state)
        blocked = None
        if banned is not None:
            blocked = banned == 0
            blocked[:, self.trie.end_state] = False
        return self.trie.allowed(s, blocked) & (m < self.M)[..., None]

    def step(self, state, token):
        S, L = self.num_states, self.trie.num_levels
        m, s = self._split(state)
        nxt = self.trie.step(s, token)
        finished = (self.trie.depth[s] == L) & (token == EOS)  # a leaf's <eos>: the next item starts
        dead = (nxt == self.trie.end_state) & ~finished
        state = torch.where(finished, (m + 1) * S + self.ROOT, m * S + nxt)
        return torch.where(dead | (m >= self.M), torch.full_like(state, self.M * S + self.trie.end_state), state)

    def advance_bans(self, banned, state):
        """Take the item each user's beam has just reached off `live` (once: a user waiting on a leaf
        does not take it twice)."""
        _, s = self._split(state[:, 0])  # (B,) greedy: one beam per user
        row = self.trie.leaf_sid[s]  # (B,) the SID row of a leaf, -1 elsewhere
        fresh = (row >= 0) & (banned.gather(1, s[:, None])[:, 0] > 0)
        above = self._ancestors[row.clamp(min=0)]  # (B, L + 1)
        return banned.scatter_add(1, above, -fresh.int()[:, None].expand_as(above))

    def initial_bans(self, exclude, batch, device):
        rows = exclude.to(device) if exclude is not None else \
            torch.zeros(batch, self.trie.num_sids, dtype=torch.bool, device=device)
        return live_counts(self.trie, rows)

    def outputs(self, codes):
        """(B, K, M * (L + 1)) tokens -> (B, K, M) item SID rows (-1 where a slot holds no item)."""
        L = self.trie.num_levels
        items = codes.reshape(*codes.shape[:-1], self.M, L + 1)[..., :L]  # (B, K, M, L)
        return self.trie.leaf_sid[self.trie.walk(items)]

    def max_beams(self) -> int:
        return 1

    def finished(self, state):
        return None

    def to(self, device) -> "ItemList":
        return ItemList(self.trie.to(device), self.M)


@dataclass(frozen=True, eq=False)
class FreeText:
    """Text of `length` tokens over a vocabulary: any token but `banned_tokens` (padding, <bos>); after
    `eos`, only `eos` (the text has ended; the rest is filler). State = 0 (open) or 1 (ended)."""

    vocab_size: int
    length: int  # tokens decoded (the engine's levels)
    eos: int  # the end-of-text token id
    banned_tokens: tuple[int, ...] = ()  # never generated (e.g. <pad>, <bos>)

    ROOT = 0
    num_states = 2
    unit = "texts"

    @property
    def num_levels(self) -> int:
        return self.length

    def __post_init__(self) -> None:
        self._masks(torch.device("cpu"))

    def _masks(self, device) -> None:
        """The (V,) allowed-token masks of an open and an ended text, on `device` (built once: nothing is
        copied from the host inside a round, which CUDA graph capture refuses)."""
        open_ = torch.ones(self.vocab_size, dtype=torch.bool)
        open_[list(self.banned_tokens)] = False
        object.__setattr__(self, "_open", open_.to(device))
        object.__setattr__(self, "_ended", (torch.arange(self.vocab_size) == self.eos).to(device))

    def allowed(self, state, banned=None):
        return torch.where((state == 1)[..., None], self._ended, self._open)  # (..., V)

    def step(self, state, token):
        return torch.where(token == self.eos, torch.ones_like(state), state)

    def advance_bans(self, banned, state):
        return banned

    def initial_bans(self, exclude, batch, device):
        return None

    def outputs(self, codes):
        return codes

    def max_beams(self) -> int:
        return 2 ** 31 - 1

    def finished(self, state):
        return state == 1

    @property
    def filler(self) -> int:
        return self.eos

    def to(self, device) -> "FreeText":
        moved = FreeText(self.vocab_size, self.length, self.eos, self.banned_tokens)
        moved._masks(device)
        return moved


def as_constraint(c: "Constraint | SIDTrie") -> "Constraint":
    """A SID trie means top-K over single items (`SIDConstraint`); any other constraint is itself."""
    return SIDConstraint(c) if isinstance(c, SIDTrie) else c


def settle(constraint: Constraint, states: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """states (...,), logp (..., V) -> logp with finished sequences' rows set to 0: the filler after a text's
    <eos> adds nothing to its score, whether decoded token by token or skipped (`round.finish`)."""
    done = constraint.finished(states)
    return logp if done is None else torch.where(done[..., None], torch.zeros_like(logp), logp)
