"""Pools per group: one table holds every group and equals each group's host draft (groups never see
each other's n-grams), `sync` after inserts into several groups equals a fresh compile, sizes per group;
and the cost helpers run on CPU (they return a number; no test reads the clock's value)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ngram_checks import ALPHABET, assert_table_matches, queries

from recspec.retrieval.cost import host_draft_ms, table_lookup_ms
from recspec.retrieval.pools import Pools

FAST = settings(max_examples=50, deadline=None, derandomize=True)  # a fixed seed: the same examples every run
grouped = st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(0, ALPHABET - 1), max_size=12)), min_size=1,
                   max_size=8)


def fill(pools: Pools, items) -> Pools:
    for g, s in items:
        pools.insert(g, s)
    return pools


def every_ask(pools: Pools, groups) -> list[tuple[int, list[int]]]:
    """Each group's contexts asked of every group (and of one group that has no pool)."""
    ctxs = set()
    for g in pools.groups:
        ctxs |= set(pools.pool(g).contexts())
    return [(g, q) for g in groups for q in queries(sorted(ctxs), pools.context)]


@FAST
@given(items=grouped, budget=st.integers(1, 8), width=st.integers(1, 3), depth=st.integers(1, 3))
def test_one_table_answers_for_every_group(items, budget, width, depth):
    pools = fill(Pools(context=2, depth=3), items)
    table = pools.compile(budget, width, depth)
    assert pools.dropped == 0
    asks = every_ask(pools, [*pools.groups, 99])
    assert_table_matches(table, lambda g, c: pools.draft(g, c, budget, width, depth), asks)


@FAST
@given(first=grouped, more=grouped, max_nodes=st.integers(10, 60), budget=st.integers(1, 6))
def test_sync_after_inserts_equals_a_fresh_compile(first, more, max_nodes, budget):
    pools = fill(Pools(context=2, depth=2, max_nodes=max_nodes), first)
    H = 1 << (4 * (ALPHABET + ALPHABET ** 2)).bit_length()  # room for every context of 4 groups
    table = pools.compile(budget, 2, 2, capacity=H, probes=H)
    asks = every_ask(pools, range(4))
    fill(pools, more)
    pools.sync(table)
    assert pools.dropped == 0 and all(not pools.pool(g).dirty for g in pools.groups)
    asks += every_ask(pools, range(4))
    fresh = pools.compile(budget, 2, 2)
    draft = lambda g, c: pools.draft(g, c, budget, 2, 2)  # noqa: E731
    assert_table_matches(table, draft, asks)
    assert_table_matches(fresh, draft, asks)


def test_groups_do_not_share_ngrams():
    pools = fill(Pools(context=1, depth=2), [(0, [1, 2, 3]), (1, [1, 4, 5]), (1, [1, 4, 6])])
    assert pools.draft(0, [1], 4, 2, 2).paths() == [(2,), (2, 3)]
    assert pools.draft(1, [1], 4, 2, 2).paths() == [(4,), (4, 5), (4, 6)]
    assert len(pools.draft(2, [1], 4, 2, 2)) == 0
    assert pools.num_nodes == {0: 6, 1: 9}  # n-grams of <= 3 tokens: 1 2 3 12 23 123; 1 4 5 6 14 45 46 145 146
    assert pools.nbytes > 0


def test_negative_group_is_refused():
    with pytest.raises(ValueError, match="group"):
        Pools().insert(-1, [1, 2])


def test_cost_helpers_return_a_median_per_step():
    pools = fill(Pools(context=2, depth=3), [(0, [1, 2, 3, 1, 2, 4]), (1, [5, 6, 7])])
    table = pools.compile(6, 2, 3)
    contexts = [[[1, 2], [5, 6]], [[2, 3], [6, 7]]]  # (S=2 steps, B=2 rows, c=2)
    host = host_draft_ms(pools, [0, 1], contexts, 6, 2, 3, repeats=3)
    device = table_lookup_ms(table, torch.tensor([0, 1]), torch.tensor(contexts), repeats=3)
    assert all(math.isfinite(x) and x >= 0 for x in (host, device))
