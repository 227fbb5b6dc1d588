"""Brute-force references and strategies for the retrieval tests: n-gram counts by scanning every
sequence, continuations by substring search, and the comparison of a compiled table with host drafts."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np
import torch
from hypothesis import strategies as st

from recspec.decoding.retrieval_table import RetrievalTable
from recspec.retrieval.index import DraftNodes

ALPHABET = 5  # few distinct tokens, so n-grams repeat
token_seqs = st.lists(st.lists(st.integers(0, ALPHABET - 1), max_size=16), min_size=1, max_size=5)
sources = st.sampled_from(["output", "prompt"])


def brute_counts(inserted: Sequence[tuple[Sequence[int], str]], longest: int) -> dict[tuple[int, ...], tuple[int, int]]:
    """{n-gram: (output, prompt) count} over every n-gram of length <= `longest` of the inserted sequences."""
    counts = {"output": Counter(), "prompt": Counter()}
    for seq, source in inserted:
        for i in range(len(seq)):
            for n in range(1, min(longest, len(seq) - i) + 1):
                counts[source][tuple(seq[i:i + n])] += 1
    return {g: (counts["output"][g], counts["prompt"][g]) for g in counts["output"].keys() | counts["prompt"].keys()}


def occurs(seqs: Sequence[Sequence[int]], gram: Sequence[int]) -> bool:
    """Whether `gram` is a contiguous run of some sequence."""
    g = list(gram)
    return any(list(s[i:i + len(g)]) == g for s in seqs for i in range(len(s) - len(g) + 1))


def followed(seqs: Sequence[Sequence[int]], ctx: Sequence[int]) -> bool:
    """Whether `ctx` occurs with at least one token after it."""
    c = list(ctx)
    return any(list(s[i:i + len(c)]) == c for s in seqs for i in range(len(s) - len(c)))


def queries(contexts, context: int, extra: Sequence[Sequence[int]] = ()) -> list[list[int]]:
    """Every context and each extra, left-padded with -1 (no token) to `context` tokens."""
    out = [list(c) for c in contexts] + [list(c) for c in extra]
    return [[-1] * (context - len(c)) + c[-context:] for c in out if c]


def assert_table_matches(table: RetrievalTable, draft: Callable[[int, list[int]], DraftNodes],
                         asks: Sequence[tuple[int, list[int]]]) -> None:
    """The table's lookup of each (group, padded context) equals the host draft's grid."""
    if not asks:
        return
    groups = torch.tensor([g for g, _ in asks], dtype=torch.int64)
    tok, par, val = table.lookup(groups, torch.tensor([c for _, c in asks], dtype=torch.int64))
    for b, (g, c) in enumerate(asks):
        want = draft(g, c).grid(table.depth, table.width)
        got = (tok[b].numpy(), par[b].numpy(), val[b].numpy())
        assert all(np.array_equal(x, y) for x, y in zip(got, want)), f"group {g}, context {c}: {got} != {want}"
