"""The host n-gram index against brute force on random token sequences: counts, lookups and their
fallback, drafts (real continuations, within budget / width / depth, closed under ancestors, sorted,
the most frequent kept), the compiled table equal to the host drafts, `sync` equal to a fresh compile,
and pruning (under the cap, the most frequent n-grams kept); then named cases built by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ngram_checks import ALPHABET, assert_table_matches, brute_counts, followed, occurs, queries, sources, token_seqs

from recspec.retrieval.index import NGramIndex

FAST = settings(max_examples=50, deadline=None, derandomize=True)  # a fixed seed: the same examples every run
shapes = st.tuples(st.integers(1, 3), st.integers(1, 4))  # (context, depth)
contexts_st = st.lists(st.integers(0, ALPHABET - 1), max_size=4)


def build(seqs, srcs, context, depth, max_nodes=10_000) -> NGramIndex:
    index = NGramIndex(context, depth, max_nodes)
    for s, src in zip(seqs, srcs):
        index.insert(s, src)
    return index


def with_sources(seqs, data) -> list[str]:
    return [data.draw(sources) for _ in seqs]


@FAST
@given(seqs=token_seqs, shape=shapes, data=st.data())
def test_counts_equal_brute_force(seqs, shape, data):
    srcs = with_sources(seqs, data)
    index = build(seqs, srcs, *shape)
    got = {g: (o, p) for g, o, p in index.items()}
    assert got == brute_counts(list(zip(seqs, srcs)), sum(shape))
    assert index.num_nodes == len(got)


@FAST
@given(seqs=token_seqs, shape=shapes, last=contexts_st, budget=st.integers(0, 12), width=st.integers(1, 4),
       depth=st.integers(1, 4), data=st.data())
def test_draft_is_real_bounded_closed_and_sorted(seqs, shape, last, budget, width, depth, data):
    index = build(seqs, with_sources(seqs, data), *shape)
    d, node = index.draft(last, budget, width, depth), index.lookup(last)
    if node is None:
        assert len(d) == 0
        return
    ctx = index.path(node)
    assert len(d) <= budget and (np.bincount(d.level, minlength=depth) <= width).all() and (d.level < depth).all()
    assert (np.diff(d.level) >= 0).all() and (len(d) == 0 or d.level[0] == 0)
    pos = d.positions()
    for i, path in enumerate(d.paths()):
        assert occurs(seqs, ctx + path)  # a real continuation of the context
        assert (d.output[i], d.prompt[i]) == index.counts(ctx + path) != (0, 0)
        if d.level[i]:  # the parent is a drafted node of the level above
            assert d.parents[i] < (d.level == d.level[i] - 1).sum()
        same = (d.level == d.level[i]) & (pos == pos[i] + 1)
        if same.any():  # the next node of the level is no more frequent
            j = int(np.flatnonzero(same)[0])
            assert (d.output[j], d.prompt[j]) <= (d.output[i], d.prompt[i])


@FAST
@given(seqs=token_seqs, shape=shapes, last=contexts_st, budget=st.integers(1, 12), depth=st.integers(1, 4),
       data=st.data())
def test_draft_keeps_the_most_frequent_nodes(seqs, shape, last, budget, depth, data):
    """Without a width limit, no node of the subtree left out counts more than one kept."""
    index = build(seqs, with_sources(seqs, data), *shape)
    node = index.lookup(last)
    if node is None:
        return
    ctx, d = index.path(node), index.draft(last, budget, budget, depth)
    kept = set(d.paths())
    below = {g[len(ctx):]: (o, p) for g, o, p in index.items()  # the subtree, `depth` levels
             if g[:len(ctx)] == ctx and 0 < len(g) - len(ctx) <= depth}
    left = [c for p, c in below.items() if p not in kept]
    assert len(kept) == min(budget, len(below))
    if left and kept:
        assert max(left) <= min(zip(d.output.tolist(), d.prompt.tolist()))


@FAST
@given(seqs=token_seqs, shape=shapes, last=contexts_st)
def test_lookup_falls_back_exactly_when_the_longer_context_was_never_followed(seqs, shape, last):
    index = build(seqs, ["output"] * len(seqs), *shape)
    tail = last[-shape[0]:] if last else []
    want = next((tuple(tail[len(tail) - n:]) for n in range(len(tail), 0, -1) if followed(seqs, tail[len(tail) - n:])),
                None)
    node = index.lookup(last)
    assert (None if node is None else index.path(node)) == want


@FAST
@given(seqs=token_seqs, shape=shapes, budget=st.integers(1, 10), width=st.integers(1, 4), data=st.data())
def test_compiled_table_equals_host_draft_for_every_context(seqs, shape, budget, width, data):
    index = build(seqs, with_sources(seqs, data), *shape)
    depth = data.draw(st.integers(1, shape[1]))
    table = index.compile(budget, width, depth)
    assert index.dropped == 0 and not index.dirty
    extra = data.draw(st.lists(contexts_st, max_size=5))
    asks = [(0, q) for q in queries(index.contexts(), shape[0], extra)]
    assert_table_matches(table, lambda g, c: index.draft(c, budget, width, depth), asks)


@FAST
@given(first=token_seqs, more=token_seqs, shape=shapes, max_nodes=st.integers(12, 80), budget=st.integers(1, 8),
       width=st.integers(1, 3))
def test_sync_after_inserts_and_prunes_equals_a_fresh_compile(first, more, shape, max_nodes, budget, width):
    context, depth = shape
    index = build(first, ["output"] * len(first), context, depth, max(max_nodes, context + depth + 1))
    H = 1 << sum(ALPHABET ** n for n in range(1, context + 1)).bit_length()  # more slots than contexts can be
    table = index.compile(budget, width, depth, capacity=H, probes=H)  # probes = H: a free slot is always found
    compiled = set(index.contexts())
    for s in more:
        index.insert(s, "prompt")
    assert set(index.contexts()) - compiled <= index.dirty  # every new context is dirty
    seen = compiled | set(index.contexts())
    index.sync(table)
    assert index.dropped == 0 and not index.dirty
    fresh = index.compile(budget, width, depth)
    asks = [(0, q) for q in queries(sorted(seen), context)]
    assert_table_matches(table, lambda g, c: index.draft(c, budget, width, depth), asks)
    assert_table_matches(fresh, lambda g, c: index.draft(c, budget, width, depth), asks)


@FAST
@given(seqs=token_seqs, shape=shapes, max_nodes=st.integers(8, 40))
def test_inserts_keep_num_nodes_under_the_cap(seqs, shape, max_nodes):
    context, depth = shape
    cap = max(max_nodes, context + depth + 1)
    index = NGramIndex(context, depth, cap)
    for s in seqs:
        index.insert(s, "output")
        assert index.num_nodes <= cap
    truth = brute_counts([(s, "output") for s in seqs], context + depth)
    for g, o, p in index.items():  # kept counts: real n-grams, never above their true count
        assert 0 < o <= truth[g][0] and p == 0


@FAST
@given(seqs=token_seqs, shape=shapes, data=st.data())
def test_prune_keeps_the_most_frequent_ngrams(seqs, shape, data):
    index = build(seqs, with_sources(seqs, data), *shape)
    before = {g: o + p for g, o, p in index.items()}
    target = data.draw(st.integers(0, max(len(before), 1)))
    removed = index.prune(target)
    after = {g: o + p for g, o, p in index.items()}
    assert index.num_nodes == len(after) == len(before) - removed == min(target, len(before))
    assert all(after[g] == before[g] for g in after)  # counts of kept n-grams stay exact
    gone = [(c, -len(g)) for g, c in before.items() if g not in after]
    if gone and after:  # rarest first; among equally rare, the longest n-grams first
        assert min((c, -len(g)) for g, c in after.items()) >= max(gone)
    assert all(g[:-1] in after for g in after if len(g) > 1)  # closed under prefixes (ancestors)


# --- named cases ---------------------------------------------------------------------------------------
def test_a_hand_built_draft():
    index = NGramIndex(context=2, depth=3)
    for s in ([1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 6], [9, 2, 7]):
        index.insert(s)
    d = index.draft([0, 1, 2], budget=4, width=2, depth=3)
    assert d.paths() == [(3,), (6,), (3, 4), (3, 5)]  # (1, 2) matched; 3 seen twice, then 6; ties by token
    assert d.parents.tolist() == [0, 0, 0, 0] and d.level.tolist() == [0, 0, 1, 1]
    assert index.draft([8, 2], budget=4, width=2, depth=1).paths() == [(3,), (6,)]  # fallback to (2,): 3 x2, 6, 7
    assert len(index.draft([2, 8], 4, 2, 3)) == 0


def test_output_counts_rank_before_prompt_counts():
    index = NGramIndex(context=1, depth=1)
    index.insert([1, 5], "output")
    for _ in range(3):
        index.insert([1, 4], "prompt")
    d = index.draft([1], budget=2, width=2, depth=1)
    assert d.tokens.tolist() == [5, 4] and d.output.tolist() == [1, 0] and d.prompt.tolist() == [0, 3]


def test_dirty_names_the_contexts_an_insert_touched():
    index = NGramIndex(context=2, depth=2)
    index.insert([1, 2, 3])
    index.compile(4, 2, 2)
    assert not index.dirty
    index.insert([2, 3, 4])
    assert index.dirty == {(2,), (2, 3), (3,), (3, 4), (4,)}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="source"):
        NGramIndex().insert([1], "web")
    with pytest.raises(ValueError, match="tokens"):
        NGramIndex().insert([1, -2])
    with pytest.raises(ValueError, match="max_nodes"):
        NGramIndex(context=2, depth=8, max_nodes=10)
    with pytest.raises(ValueError, match="depth"):
        NGramIndex(context=2, depth=2).compile(4, 2, 3)


def test_nbytes_grows_with_the_trie():
    index = NGramIndex(context=2, depth=4)
    empty = index.nbytes
    index.insert(list(range(200)))
    assert index.nbytes - empty >= 100 * index.num_nodes  # six int64 arrays and a dict entry per node
