"""What retrieval costs per decoding step: the research-style host walk of the pools against one lookup
of the compiled table. Measurement only (the data structures hold no timers): a warm-up pass, then
`repeats` timed passes over the same steps; the median pass's milliseconds per step.

A step is one batch: B rows, each a (group, last tokens) query. The host walk drafts the B rows one
after another (as the research code does at batch 1, B times); the table looks all B up at once.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

from recspec.decoding.retrieval_table import RetrievalTable
from recspec.retrieval.pools import Pools


def median_ms_per_step(step: Callable[[int], object], steps: int, repeats: int = 5,
                       sync: Callable[[], None] | None = None) -> float:
    """Median over `repeats` passes of one pass's milliseconds divided by `steps`; step(s) runs step s;
    sync (e.g. torch.cuda.synchronize) waits for queued device work before each clock read."""
    wait = sync or (lambda: None)
    for s in range(steps):  # warm-up
        step(s)
    times = []
    for _ in range(repeats):
        wait()
        t0 = time.perf_counter()
        for s in range(steps):
            step(s)
        wait()
        times.append((time.perf_counter() - t0) * 1e3 / max(steps, 1))
    return statistics.median(times)


def host_draft_ms(pools: Pools, groups: Sequence[int], contexts: Sequence[Sequence[Sequence[int]]], budget: int,
                  width: int, depth: int, repeats: int = 5) -> float:
    """groups (B,) and contexts (S steps, B rows, c tokens) -> ms per step of B host drafts (median)."""
    def step(s: int) -> None:
        for g, ctx in zip(groups, contexts[s]):
            pools.draft(g, ctx, budget, width, depth)
    return median_ms_per_step(step, len(contexts), repeats)


def table_lookup_ms(table: RetrievalTable, groups: torch.Tensor, contexts: torch.Tensor, repeats: int = 5) -> float:
    """groups (B,) int64, contexts (S, B, c) int64 on the table's device -> ms per step of one batched
    lookup (median); on a GPU the device is synchronised around each pass."""
    sync = torch.cuda.synchronize if table.keys.is_cuda else None
    return median_ms_per_step(lambda s: table.lookup(groups, contexts[s]), int(contexts.shape[0]), repeats, sync)
