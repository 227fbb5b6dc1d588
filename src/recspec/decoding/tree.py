"""Draft trees as tensors, and the cache layout shared by target and draft (pure functions).

A draft tree has d levels of N nodes. Node (j, n) extends node (j - 1, parents[j, n]); level-0
nodes extend the target's current beams. Nodes that are padding or duplicates are marked invalid.

Slots (per user; the same layout in the target's and the draft's cache):
    [0, T)                  prompt
    [T, T + L*K)            committed beams: SID level l (1-based), beam k at T + (l - 1)*K + k
    [T + L*K, ... + d*N)    the tree being verified: node (j, n) at T + L*K + j*N + n
    S                       the sink: a slot nobody attends; padding entries point here
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    T: int  # prompt columns
    L: int  # SID levels that are fed to the models (codes; <eos> is never fed)
    K: int  # target beams
    N: int  # draft nodes per level
    gamma: int  # most tree levels
    eos: bool = False  # beams also take the <eos> step after level L (scored, never fed)

    @property
    def end(self) -> int:
        """Levels a finished user has produced: L codes, and <eos> when it is scored."""
        return self.L + int(self.eos)

    @property
    def tree_base(self) -> int:
        return self.T + self.L * self.K

    @property
    def sink(self) -> int:
        return self.tree_base + self.gamma * self.N

    @property
    def slots(self) -> int:
        return self.sink + 1

    def committed_slots(self, level: torch.Tensor) -> torch.Tensor:
        """level (B,) 1-based SID level -> (B, K) slots of its K beams."""
        return self.T + (level[:, None] - 1) * self.K + torch.arange(self.K, device=level.device)

    def tree_slots(self, j: int, batch: int, device) -> torch.Tensor:
        """(B, N) slots of tree level j."""
        return (self.tree_base + j * self.N + torch.arange(self.N, device=device)).expand(batch, self.N)


@dataclass(frozen=True)
class DraftTree:
    """What a drafter proposes: d levels of N candidate extensions."""

    tokens: torch.Tensor  # (B, d, N) token ids
    parents: torch.Tensor  # (B, d, N) index of the parent: level 0 -> current beam, else node at level j - 1
    valid: torch.Tensor  # (B, d, N) bool: a real, distinct, trie-valid node
    draws: torch.Tensor | None = None  # (B, d, n) node of each of n ordered draws from q (sampling drafts; -1: none)
    logq: torch.Tensor | None = None  # (B, d, P, V) draft log q over extensions of level j's parents (P = max(N, K))
    fed: tuple[int, ...] | None = None  # per level, how many leading nodes can be valid (static; None: all N)

    @property
    def depth(self) -> int:
        return int(self.tokens.shape[1])


def path_mask(prompt_keys: torch.Tensor, path: torch.Tensor, sink: int) -> torch.Tensor:
    """prompt_keys (B, S) bool; path (B, M, t) slots (sink = padding) -> (B, M, S) attention mask."""
    B, M, _ = path.shape
    S = prompt_keys.shape[1]
    mask = torch.cat([prompt_keys, prompt_keys.new_zeros(B, 1)], dim=1) if S == sink else prompt_keys.clone()
    mask = mask[:, None, :].expand(B, M, -1).clone()
    mask.scatter_(2, path, True)
    mask[:, :, sink] = False
    return mask[:, :, :S]


def extend_mask(parent_mask: torch.Tensor, parents: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """parent_mask (B, P, S); parents (B, N); slots (B, N) -> (B, N, S): the parent's view plus itself."""
    S = parent_mask.shape[2]
    mask = parent_mask.gather(1, parents[..., None].expand(-1, -1, S)).clone()
    mask.scatter_(2, slots[..., None], True)
    return mask


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...) -> (B, W, ...) with rows idx (B, W)."""
    full = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return x.gather(1, full)


def dedupe_rows(x: torch.Tensor, fill: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, N) int64 -> (unique (B, N) padded with `fill`, valid (B, N), inverse (B, N)).

    unique[b, inverse[b, i]] == x[b, i]; each row's distinct values come first, ascending."""
    srt, order = x.sort(dim=1)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    rank = first.long().cumsum(dim=1) - 1  # (B, N) unique index of each sorted entry
    uniq = torch.full_like(x, fill)
    uniq.scatter_(1, torch.where(first, rank, torch.full_like(rank, x.shape[1] - 1)), torch.where(first, srt, uniq))
    count = first.sum(dim=1, keepdim=True)
    valid = torch.arange(x.shape[1], device=x.device)[None] < count
    uniq = torch.where(valid, uniq, torch.full_like(uniq, fill))
    inverse = torch.empty_like(rank).scatter_(1, order, rank)
    return uniq, valid, inverse


def stack_levels(levels: tuple[torch.Tensor | None, ...], N: int, first_pad: bool = False) -> torch.Tensor | None:
    """d levels of (B, w_j) -> (B, d, N). Padding is 0 (token, parent) / False (valid); with first_pad
    (draws) it is w_j, the level's first padding node: a draw on an invalid node is no draw."""
    if levels[0] is None:
        return None
    pad = lambda x: x if x.shape[1] == N else torch.cat([x, torch.full_like(x[:, :1], x.shape[1] if first_pad else 0)  # noqa: E731
                                                          .expand(-1, N - x.shape[1])], dim=1)
    return torch.stack([pad(x) for x in levels], dim=1)


def pad_rows(x: torch.Tensor | None, P: int) -> torch.Tensor | None:
    """(B, M, V) -> (B, P, V), padded with -inf rows."""
    if x is None or x.shape[1] == P:
        return x
    pad = x.new_full((x.shape[0], P - x.shape[1], x.shape[2]), float("-inf"))
    return torch.cat([x, pad], dim=1)
