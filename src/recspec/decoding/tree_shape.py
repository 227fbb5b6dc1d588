"""Draft-tree shapes: derived from the catalogue's trie, K and a node budget (`auto_shape`), or given.

A shape says, for every SID level a round can start from, how deep its tree is, and for every SID
level how many nodes a tree may draft there. A tree level is *covered* when it holds every
descendant, at that level, of the K beams the round started from: then it holds the children of the
target's new beams whatever the target prefers, and is accepted under strict (and relaxed)
verification with any drafter that ranks the trie's valid children (the trie drafter, a draft model
with expand 0). Where the trie is narrow (deep SID levels) a covered level costs few nodes; where it
is wide (the root) it may not fit the budget at all.

`auto_shape` plans the rounds as a small dynamic programme over the level a round starts from,
minimising expected target calls: a round drafting levels l+1..l+d with widths w (at most `budget`
nodes in all) costs one call and is accepted with probability P(w) (1 where every level is covered),
which advances the beams to level l+d+1; else they reach l+1 at least (the target's own level; the
plan counts l+1). P is estimated from the trie alone (`cover_cdf`); widths are split within the
budget to maximise it, with the fewest nodes among the best splits. The budget is the device's
(config.GPU_TREE_BUDGET, CPU_TREE_BUDGET) unless given: on a GPU a pass of a few hundred tokens costs
about one step, so wide covered trees pay; on a CPU every node costs, so only small trees do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from recspec.config import CPU_TREE_BUDGET, GPU_TREE_BUDGET, DecodeConfig
from recspec.data.trie import SIDTrie


@dataclass(frozen=True)
class TreeShape:
    """The draft tree of every round, resolved from `config.TreeConfig` (auto or given) for one K."""

    N: int  # tree width: most nodes per tree level (>= K); the layout reserves gamma_max * N slots
    gamma: int  # draft depth of rounds that start past the end of `depths`
    depths: tuple[int, ...]  # draft depth by the SID level a round starts from (0: no tree, one AR step)
    widths: tuple[int, ...]  # most drafted nodes by the SID level drafted (widths[l - 1] for level l; N past the end)
    expand: float  # draft model: below a tree's first level extend only its best expand*K nodes (0: all)


# What an explicit shape takes for the fields it does not set (the uniform AtSpeed-style tree).
CLASSIC = TreeShape(N=40, gamma=3, depths=(), widths=(), expand=2.0)


# --- the trie's statistics ---------------------------------------------------------------------------
def prefix_ids(trie: SIDTrie) -> list[np.ndarray]:
    """ids[d] (U,): the id (0..P_d - 1) of each SID's length-d prefix, d = 0..L (ids[0] all 0: the root)."""
    sids = trie.sids.cpu().numpy()
    out = [np.zeros(len(sids), dtype=np.int64)]
    for d in range(1, sids.shape[1] + 1):
        out.append(np.unique(sids[:, :d], axis=0, return_inverse=True)[1].reshape(-1))
    return out


def descendants(ids: list[np.ndarray], l: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(P_l,) the depth-m prefixes under each depth-l prefix (l < m), and (P_l,) the SIDs under it."""
    P = int(ids[l].max()) + 1
    pairs = np.unique(np.stack([ids[l], ids[m]], axis=1), axis=0)  # distinct (depth-l, depth-m) prefix pairs
    return np.bincount(pairs[:, 0], minlength=P), np.bincount(ids[l], minlength=P)


def cover_cdf(counts: np.ndarray, weights: np.ndarray, K: int, cap: int) -> np.ndarray:
    """(cap + 1,) estimated P(the K beams' descendants fit in w nodes) for w = 0..cap.

    counts (P,): descendants at the drafted level under each prefix at the round's start level.
    Exactly 1 from `need` up, the sum of the min(K, P) largest counts (no K distinct prefixes have more);
    where every prefix is a beam (P <= K) exactly 0 below it. Otherwise the K beams are modelled as
    independent draws of prefixes in proportion to the SIDs under them (a target's beams favour large
    prefixes), and P is that of their summed counts, kept below 1 so a covered width is preferred."""
    beams = min(K, len(counts))
    need = int(np.sort(counts)[::-1][:beams].sum())
    w = np.arange(cap + 1)
    if beams == len(counts):
        return (w >= need).astype(np.float64)
    pmf = np.bincount(np.minimum(counts, cap + 1), weights=weights, minlength=cap + 2) / weights.sum()
    total, power, k = np.array([1.0]), pmf, beams
    while k:  # the beams-fold convolution by squaring, truncated past cap + 1
        if k & 1:
            total = np.convolve(total, power)[: cap + 2]
        power, k = np.convolve(power, power)[: cap + 2], k >> 1
    cdf = np.minimum(np.cumsum(total)[: cap + 1], np.nextafter(1.0, 0.0))
    return np.where(w >= need, 1.0, cdf)


# --- one round: widths within the budget --------------------------------------------------------------
def best_widths(cdfs: list[np.ndarray], budget: int) -> tuple[float, tuple[int, ...]]:
    """Widths w_j >= 1 with sum <= budget maximising prod_j cdfs[j][w_j] -> (that product, widths);
    the fewest nodes among the best. cdfs[j] (budget + 1,)."""
    d = len(cdfs)
    if budget < d:
        return 0.0, ()
    val = np.where(np.arange(budget + 1) >= 1, cdfs[0][: budget + 1], 0.0)  # best product for a total of b nodes
    picks = []  # picks[j][b]: width of level j + 1 in the best split of b nodes over levels 0..j + 1
    for cdf in cdfs[1:]:
        b, w = np.meshgrid(np.arange(budget + 1), np.arange(budget + 1), indexing="ij")
        cand = np.where((w >= 1) & (w <= b), val[np.clip(b - w, 0, None)] * cdf[w], -1.0)  # (b, w)
        picks.append(cand.argmax(axis=1))  # first best: the narrowest level j + 1
        val = cand.max(axis=1)
    best = float(val.max())
    if best <= 0.0:
        return 0.0, ()
    b = int(np.flatnonzero(val >= best)[0])
    widths = []
    for pick in reversed(picks):
        widths.append(int(pick[b]))
        b -= widths[-1]
    return best, (b, *reversed(widths))


# --- the plan: depths by start level, widths by SID level ---------------------------------------------
@dataclass(frozen=True)
class Round:
    """The best round from one start level."""

    calls: float  # expected target calls from this start level to the end
    depth: int  # levels drafted
    widths: tuple[int, ...]  # nodes per drafted level


def plan_rounds(cdf: Callable[[int, int], np.ndarray], L: int, levels: int, budget: int) -> list[Round]:
    """rounds[l] for l = 0..levels - 1: the round from start level l minimising expected target calls.

    cdf(l, m): (budget + 1,) coverage of drafted level m in a round from l. levels: levels the engine
    produces (L + 1 when <eos> is scored). A round drafts SID levels only; the target's bonus level
    after them is the round's last, so it drafts at most min(L - l, levels - 1 - l) levels."""
    calls = [0.0] * (levels + 1)
    rounds: list[Round] = [Round(0.0, 0, ())] * levels
    for l in reversed(range(levels)):
        best = Round(1.0 + calls[l + 1], 0, ())  # no tree: one AR step
        for d in range(1, min(L - l, levels - 1 - l) + 1):
            p, widths = best_widths([cdf(l, m) for m in range(l + 1, l + d + 1)], budget)
            if p <= 0.0:
                break  # a deeper tree shares the same budget over more levels: no better
            cost = 1.0 + p * calls[l + d + 1] + (1.0 - p) * calls[l + 1]
            if cost < best.calls - 1e-9:
                best = Round(cost, d, widths)
        rounds[l], calls[l] = best, best.calls
    return rounds


def shape_from_rounds(rounds: list[Round], first_widths: list[int], K: int, budget: int) -> TreeShape:
    """Depths and per-SID-level widths from the planned rounds. The rounds taken when every tree is
    accepted (from level 0 on) set the widths of the levels they draft; a start level reached only
    after a rejection keeps its depth while its widths (those already set, else its own) fit the budget.
    first_widths[m - 1]: the width of SID level m where no round drafts it."""
    widths: dict[int, int] = {}
    l = 0
    while l < len(rounds):  # the path of accepted rounds
        widths.update({l + 1 + j: w for j, w in enumerate(rounds[l].widths)})
        l += rounds[l].depth + 1
    depths = []
    for l, r in enumerate(rounds):
        d = r.depth
        while d and sum(widths.get(l + 1 + j, r.widths[j]) for j in range(d)) > budget:
            d -= 1
        widths.update({l + 1 + j: r.widths[j] for j in range(d) if l + 1 + j not in widths})
        depths.append(d)
    L = len(first_widths)
    N = max([K, *widths.values()])
    by_level = tuple(widths.get(m, min(first_widths[m - 1], N)) for m in range(1, L + 1))
    return TreeShape(N=N, gamma=max(depths[:L], default=0), depths=tuple(depths[:L]), widths=by_level, expand=0.0)


def auto_shape(trie: SIDTrie, K: int, budget: int = GPU_TREE_BUDGET, eos: bool = False) -> TreeShape:
    """The tree shape for this catalogue and K within `budget` tree nodes per target call.

    Level 1 is drafted whole when the root's fan-out fits the budget; a deeper level gets the width
    that covers the descendants of any K beams of the round's start level where that fits, else the
    budget's share that covers most of them. eos: the engine scores <eos> after level L (L + 1 levels
    to decode, the last one a bonus level); False: it stops after level L."""
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if budget < 0:
        raise ValueError(f"tree budget (--tree-budget) must be >= 0, got {budget}")
    L = trie.num_levels
    ids = prefix_ids(trie)
    memo: dict[tuple[int, int], np.ndarray] = {}

    def cdf(l: int, m: int) -> np.ndarray:
        if (l, m) not in memo:
            memo[l, m] = cover_cdf(*descendants(ids, l, m), K, budget)
        return memo[l, m]

    rounds = plan_rounds(cdf, L, L + 1 if eos else L, budget)
    first = [int(np.sort(descendants(ids, m - 1, m)[0])[::-1][:K].sum()) for m in range(1, L + 1)]
    return shape_from_rounds(rounds, [min(w, max(budget, 1)) for w in first], K, budget)


# --- the shape a decoding run uses ---------------------------------------------------------------------
def given_shape(draft_beams: int | None = None, gamma: int | None = None, depths: tuple[int, ...] | None = None,
                widths: tuple[int, ...] | None = None, expand: float | None = None) -> TreeShape | None:
    """The explicit shape these fields set, its unset fields from CLASSIC; None where none is set (auto)."""
    if (draft_beams, gamma, depths, widths, expand) == (None,) * 5:
        return None
    pick = lambda x, default: default if x is None else x  # noqa: E731
    return TreeShape(N=pick(draft_beams, CLASSIC.N), gamma=pick(gamma, CLASSIC.gamma), depths=tuple(pick(depths, ())),
                     widths=tuple(pick(widths, ())), expand=float(pick(expand, CLASSIC.expand)))


def check_shape(shape: TreeShape, K: int) -> None:
    """Refuse an explicit shape the engine cannot honour, naming the flag and its value (ValueError)."""
    joined = lambda xs: ",".join(map(str, xs))  # noqa: E731
    if shape.N < K:
        raise ValueError(f"--draft-beams {shape.N} is below --K {K}: a tree level must hold the target's K beams (N >= K)")
    if shape.gamma < 0:
        raise ValueError(f"--gamma {shape.gamma} is below 0")
    if shape.expand < 0:
        raise ValueError(f"--expand {shape.expand} is below 0")
    bad = next((d for d in shape.depths if d < 0), None)
    if bad is not None:
        raise ValueError(f"--depths {joined(shape.depths)}: {bad} is below 0")
    bad = next((w for w in shape.widths if w < 1 or w > shape.N), None)
    if bad is not None:
        why = "below 1" if bad < 1 else f"above --draft-beams {shape.N} (a tree level holds at most N nodes)"
        raise ValueError(f"--widths {joined(shape.widths)}: {bad} is {why}")


def check_budget(budget: int | None, explicit: bool) -> None:
    """--tree-budget: >= 0, and only for the auto shape (an explicit shape has no budget to apply)."""
    if budget is not None and budget < 0:
        raise ValueError(f"--tree-budget {budget} is below 0")
    if budget is not None and explicit:
        raise ValueError(f"--tree-budget {budget} sizes the auto shape; it cannot apply to an explicit shape "
                         "(--draft-beams / --gamma / --depths / --widths / --expand)")


def default_tree_budget(device) -> int:
    """The auto shape's node budget where the target runs: a GPU's memory-bound pass, or a CPU's."""
    return CPU_TREE_BUDGET if torch.device(device).type == "cpu" else GPU_TREE_BUDGET


def tree_shape(cfg: DecodeConfig, constraint, device="cpu") -> TreeShape:
    """The tree of a run configured by `cfg` (its tree, K and eos) with the target on `device`: auto where
    cfg.tree sets no shape field (budget: cfg.tree.budget, else the device's default; levels: L, or L + 1
    where cfg.eos scores <eos>), else the given shape, checked. constraint: a SID trie (or a constraint
    holding one as `.trie`, whose auto shape is the one item's); other constraints need an explicit shape."""
    t = cfg.tree
    shape = given_shape(t.draft_beams, t.gamma, t.depths, t.widths, t.expand)
    check_budget(t.budget, shape is not None)
    if shape is None:
        trie = constraint if isinstance(constraint, SIDTrie) else getattr(constraint, "trie", None)
        if trie is None or constraint.num_levels != trie.num_levels:
            raise ValueError("the auto tree shape is derived from one item's SID trie: give --draft-beams / --gamma "
                             "(an explicit shape) for lists and text")
        budget = default_tree_budget(device) if t.budget is None else t.budget
        return _cached_auto_shape(trie, cfg.K, budget, cfg.eos)
    check_shape(shape, cfg.K)
    return shape


@functools.lru_cache(maxsize=64)
def _cached_auto_shape(trie: SIDTrie, K: int, budget: int, eos: bool) -> TreeShape:
    """auto_shape, once per (trie object, K, budget, eos): engines are built per K and per mode."""
    return auto_shape(trie, K, budget, eos)


def no_tree(K: int) -> TreeShape:
    """The shape of autoregressive decoding: no tree (one level per target call)."""
    return TreeShape(N=K, gamma=0, depths=(), widths=(), expand=0.0)
