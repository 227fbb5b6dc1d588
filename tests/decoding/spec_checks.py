"""What the speculative decoding tests share: the Beauty test set-up (or the bundled toy catalogue's),
the TOY index, level-1 widths read from the trie, and checks of returned items and acceptance
bookkeeping. The fixtures built from it live in conftest.py."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from recspec.config import DecodeConfig
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie
from recspec.data.vocab import Prompts, Vocab
from recspec.decoding.beam_search import BeamResult
from recspec.decoding.drafters import DrafterInputs
from recspec.decoding.stats import SpecStats
from recspec.decoding.tree_shape import TreeShape

NUM_USERS = 200  # first Beauty test users decoded in batches of BATCH
BATCH = 32
SINGLE_USERS = 10  # users decoded one at a time (batch 1)
ATOL = 1e-4
TARGET = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
DRAFT_NOISE = 0.03  # std of the noise added to the target's weights (std 0.3) for the "noisy" draft

# 7 items over 2 levels of 3 codes (2 of the 9 code pairs unused)
TOY = SIDIndex(codes=np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 2], [2, 1], [2, 2]]),
               level_sizes=(3, 3), prefixes=("a", "b"))
ROWS = 20_000  # rows (one prompt repeated) of the relaxed-mode distribution tests
ROOT = "root"  # in a widths tuple of a test case: as many nodes as the trie's root has children


def root_codes(trie: SIDTrie) -> int:
    """The catalogue's number of level-1 codes: the trie root's children."""
    return int((trie.next_state[trie.ROOT] >= 0).sum())


def root_widths(widths: tuple, trie: SIDTrie) -> tuple[int, ...]:
    """`widths` with ROOT replaced by the trie's number of level-1 codes (every level-1 code drafted)."""
    return tuple(root_codes(trie) if w == ROOT else w for w in widths)


@dataclass(frozen=True)
class Beauty:
    index: SIDIndex
    vocab: Vocab
    trie: SIDTrie
    batched: list[Prompts]  # NUM_USERS test users in batches of BATCH
    single: list[Prompts]  # the first SINGLE_USERS of them, one per batch
    target: torch.nn.Module
    drafts: dict[str, torch.nn.Module]  # "random": untrained 1-layer; "self": the target; "noisy": target + noise
    train: list[list[int]]  # training-period item ids per user (popularity counts)

    def prompts(self, batch: int) -> list[Prompts]:
        return self.batched if batch == BATCH else self.single


def decode(K: int, N: int | None = None, gamma: int | None = None, **fields) -> DecodeConfig:
    """A DecodeConfig with an explicit tree of N nodes per level and depth gamma (None: auto); other
    fields by name, tree and engine ones included (`DecodeConfig.replace`)."""
    return DecodeConfig(K=K).replace(draft_beams=N, gamma=gamma, **fields)


def inputs(trie: SIDTrie, N: int, expand: float = 2.0, model=None, prior: torch.Tensor | None = None) -> DrafterInputs:
    """What a drafter is built from: the trie, a tree of N nodes per level (draft models: extending the
    best expand * K nodes below its first level), and a draft model or a prior."""
    return DrafterInputs(trie, TreeShape(N=N, gamma=0, depths=(), widths=(), expand=expand), model, prior)


def noisy_copy(model: torch.nn.Module, std: float, seed: int) -> torch.nn.Module:
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return out


def check_items(trie: SIDTrie, vocab: Vocab, res: BeamResult) -> None:
    """Every returned item is a real SID row whose codes are the returned tokens."""
    assert (res.sids >= 0).all()
    tokens = torch.as_tensor(vocab.item_tokens(trie.sids[res.sids].numpy()))  # (B, K, L)
    assert torch.equal(res.codes, tokens)


def tie_swapped(got: BeamResult, want: BeamResult, tol: float) -> torch.Tensor:
    """(B,) bool: users whose list differs from the reference's only in the order of tied items. Ranks
    whose reference scores lie within `tol` of the rank above form one run, whose items may come in
    either order (the two searches round differently: an fp32 tie is ordered by rounding); every other
    difference (another item, another run) leaves the user False."""
    gap = (want.scores[:, :-1] - want.scores[:, 1:]).abs() > tol  # (B, K - 1) a new run starts
    run = torch.cat([torch.zeros_like(gap[:, :1]), gap], dim=1).long().cumsum(dim=1)  # (B, K)
    span = int(max(want.sids.max(), got.sids.max())) + 2
    key = lambda sids: (run * span + sids + 1).sort(dim=1).values  # noqa: E731
    return (got.sids != want.sids).any(dim=1) & (key(got.sids) == key(want.sids)).all(dim=1)


def levels_table(stats: SpecStats, L: int, gamma: int, eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Accepted levels (B, R) (-1: user inactive) and each user's level at the start of each round
    (B, R), checking the bookkeeping. A finished user has produced end = L levels (L + 1 with eos: the
    codes and <eos>); 0 <= accepted <= min(gamma, end - 1 - level) (a tree stops one level short of
    the end, the target's own level finishes), every active round advances accepted + 1 levels, every
    user ends at level `end`, and the target calls per user are end - its accepted levels."""
    end = L + int(eos)
    acc = torch.stack(stats.accepted, dim=1).cpu()  # (B, R)
    active = acc >= 0
    level = torch.zeros_like(acc)
    done = torch.zeros(acc.shape[0], dtype=torch.long)
    for r in range(acc.shape[1]):
        level[:, r] = done
        assert torch.equal(active[:, r], done < end), f"round {r}: active users are those not finished"
        done = done + torch.where(active[:, r], acc[:, r] + 1, 0)
    assert (done == end).all()
    remaining = (end - 1 - level).clamp(min=0)
    assert (acc[active] <= torch.minimum(remaining[active], torch.tensor(gamma))).all()
    assert (acc[active] <= gamma).all()
    calls = stats.target_calls()
    assert torch.equal(calls, active.sum(dim=1))
    assert torch.equal(calls, end - torch.where(active, acc, 0).sum(dim=1))
    return acc, level


def outcome_counts(res: BeamResult, U: int) -> np.ndarray:
    """(U * U,) counts of the ordered K = 2 lists (best first) over the rows."""
    return np.bincount((res.sids[:, 0] * U + res.sids[:, 1]).numpy(), minlength=U * U)


# --- tree shapes ------------------------------------------------------------------------------------------
def need(codes: np.ndarray, K: int, l: int, m: int) -> int:
    """Brute force: the most depth-m prefixes under any min(K, P_l) distinct depth-l prefixes."""
    under: dict[tuple, set] = defaultdict(set)
    for c in codes.tolist():
        under[tuple(c[:l])].add(tuple(c[:m]))
    return sum(sorted(map(len, under.values()), reverse=True)[:K])


def path(shape: TreeShape, L: int, eos: bool = False) -> list[tuple[int, int]]:
    """(start level, depth) of the rounds taken when every tree is accepted (the engine's loop)."""
    out, level = [], 0
    while level < (L + 1 if eos else L):
        d = min(shape.depths[level] if level < len(shape.depths) else shape.gamma, L - level)
        out.append((level, d))
        level += d + 1
    return out


def covered(shape: TreeShape, codes: np.ndarray, K: int, eos: bool = False) -> bool:
    """Every level of every round on the path holds the descendants of any K beams of its start level."""
    return all(shape.widths[m - 1] >= need(codes, K, l, m)
               for l, d in path(shape, codes.shape[1], eos) for m in range(l + 1, l + d + 1))
