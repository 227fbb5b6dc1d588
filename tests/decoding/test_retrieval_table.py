"""The device retrieval table on hand-built tables: a hit on the full context, the fallback to a shorter
one, misses, groups kept apart, keys sharing a home slot (probing, drops), in-place writes and emptied
slots, one hash on host and device, and a lookup with no host sync (it runs on the meta device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recspec.decoding.retrieval_table import EMPTY, RetrievalTable, TreeRows, build_table, key_hash, key_hashes

D, W = 2, 3  # tree levels, nodes per level


def tree(levels: list[list[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """levels: per level, (token, parent) of each valid node -> tokens, parents (D, W), valid (D, W)."""
    tok, par, val = torch.zeros(D, W, dtype=torch.int64), torch.zeros(D, W, dtype=torch.int64), torch.zeros(D, W,
                                                                                                       dtype=torch.bool)
    for j, nodes in enumerate(levels):
        for n, (t, p) in enumerate(nodes):
            tok[j, n], par[j, n], val[j, n] = t, p, True
    return tok, par, val


def rows(entries: list[tuple[int, tuple[int, ...], list[list[tuple[int, int]]]]]) -> TreeRows:
    """entries: (group, context, tree levels) -> TreeRows."""
    trees = [tree(t) for _, _, t in entries]
    keys = torch.tensor([key_hash(g, c) for g, c, _ in entries], dtype=torch.int64)
    return TreeRows(keys, *(torch.stack(x) for x in zip(*trees)))


A = [[(7, 0), (8, 0)], [(9, 0)]]  # the tree after context (1, 2)
B = [[(5, 0)], [(6, 0), (4, 0)]]  # after (2,)
C = [[(3, 0)], []]  # after (1, 2) in group 1


def lookup(table: RetrievalTable, queries: list[tuple[int, list[int]]]):
    groups = torch.tensor([g for g, _ in queries])
    return table.lookup(groups, torch.tensor([c for _, c in queries]))


def test_longest_context_wins_then_shorter_then_miss():
    table, dropped = build_table(rows([(0, (1, 2), A), (0, (2,), B)]), context=2, budget=4)
    assert dropped == 0 and table.capacity >= 4
    tok, par, val = lookup(table, [(0, [1, 2]), (0, [9, 2]), (0, [-1, 2]), (0, [1, 3])])
    for b, want in enumerate([A, B, B]):
        assert torch.equal(tok[b], tree(want)[0]) and torch.equal(val[b], tree(want)[2])
        assert torch.equal(par[b], tree(want)[1])
    assert not val[3].any() and not tok[3].any() and not par[3].any()  # (1, 3) and (3,) were never seen


def test_groups_are_kept_apart():
    table, _ = build_table(rows([(0, (1, 2), A), (1, (1, 2), C)]), context=2, budget=4)
    tok, _, val = lookup(table, [(0, [1, 2]), (1, [1, 2]), (2, [1, 2])])
    assert torch.equal(tok[0], tree(A)[0]) and torch.equal(tok[1], tree(C)[0])
    assert not val[2].any()


def same_home(H: int, count: int) -> list[tuple[int]]:
    """`count` one-token contexts of group 0 whose keys share a home slot in a table of H slots."""
    by_home: dict[int, list[tuple[int]]] = {}
    for t in range(10_000):
        by_home.setdefault(key_hash(0, (t,)) % H, []).append((t,))
        if len(by_home[key_hash(0, (t,)) % H]) == count:
            return by_home[key_hash(0, (t,)) % H]
    raise AssertionError("no home slot shared")


def test_keys_sharing_a_home_slot_probe_to_the_next_slots():
    ctxs = same_home(16, 3)
    trees = [[[(10 + i, 0)], []] for i in range(3)]
    table, dropped = build_table(rows([(0, c, t) for c, t in zip(ctxs, trees)]), context=1, budget=1, capacity=16,
                                 probes=3)
    assert dropped == 0
    home = key_hash(0, ctxs[0]) % 16
    assert sorted(table.keys.tolist().index(key_hash(0, c)) for c in ctxs) == sorted((home + i) % 16 for i in range(3))
    tok, _, val = lookup(table, [(0, list(c)) for c in ctxs])
    assert tok[:, 0, 0].tolist() == [10, 11, 12] and val[:, 0, 0].all()


def test_a_key_past_its_probe_window_is_dropped_and_misses():
    ctxs = same_home(16, 3)
    table, dropped = build_table(rows([(0, c, [[(10 + i, 0)], []]) for i, c in enumerate(ctxs)]), context=1,
                                 budget=1, capacity=16, probes=2)
    assert dropped == 1
    _, _, val = lookup(table, [(0, list(c)) for c in ctxs])
    assert val[:, 0, 0].tolist() == [True, True, False]


def test_default_capacity_grows_until_nothing_is_dropped():
    ctxs = same_home(8, 4)
    table, dropped = build_table(rows([(0, c, B) for c in ctxs]), context=1, budget=3, probes=2)
    assert dropped == 0 and table.capacity > 8
    assert lookup(table, [(0, list(c)) for c in ctxs])[2][:, 0, 0].all()


def test_writes_and_emptied_slots_are_seen_in_place():
    ctxs = same_home(16, 2)
    table, _ = build_table(rows([(0, c, A) for c in ctxs]), context=1, budget=3, capacity=16, probes=4)
    storage = [t.data_ptr() for t in (table.keys, table.tokens, table.parents, table.valid)]
    first = table.keys.tolist().index(key_hash(0, ctxs[0]))
    new = rows([(0, ctxs[0], B)])
    table.write_rows(torch.tensor([first]), new.keys, new.tokens, new.parents, new.valid)
    assert torch.equal(lookup(table, [(0, list(ctxs[0]))])[0][0], tree(B)[0])
    z = torch.zeros(1, D, W, dtype=torch.int64)
    table.write_rows(torch.tensor([first]), torch.tensor([EMPTY]), z, z, z.bool())  # empty the home slot
    tok, _, val = lookup(table, [(0, list(ctxs[0])), (0, list(ctxs[1]))])
    assert not val[0].any() and torch.equal(tok[1], tree(A)[0])  # the key one slot on is still found
    assert storage == [t.data_ptr() for t in (table.keys, table.tokens, table.parents, table.valid)]


def test_key_hash_agrees_on_host_and_device():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        ctx = rng.integers(0, 2**32, size=(50, n))
        groups = rng.integers(0, 1000, size=50)
        on_device = key_hash(torch.from_numpy(groups), torch.from_numpy(ctx))
        assert on_device.tolist() == key_hash(groups, ctx).tolist()
        assert on_device.tolist() == [key_hash(int(g), c.tolist()) for g, c in zip(groups, ctx)]
        assert (on_device >= 0).all()
    assert len({key_hash(0, (5,)), key_hash(1, (5,)), key_hash(0, (0, 5)), key_hash(0, (5, 0))}) == 4
    mixed = [(1,), (2, 3), (4,), (5, 6, 7)]
    assert key_hashes(7, mixed).tolist() == [key_hash(7, c) for c in mixed]


def test_lookup_has_no_host_sync():
    """On the meta device every .item(), bool(tensor) or nonzero raises: a lookup that finishes there
    reads no device value on the host, so it can be captured in a CUDA graph."""
    table, _ = build_table(rows([(0, (1, 2), A)]), context=2, budget=4)
    meta = table.to("meta")
    out = meta.lookup(torch.zeros(5, dtype=torch.int64, device="meta"), torch.zeros(5, 2, dtype=torch.int64,
                                                                                     device="meta"))
    assert [tuple(o.shape) for o in out] == [(5, D, W)] * 3 and out[2].dtype == torch.bool
    assert meta.nbytes == table.nbytes == table.capacity * (8 + D * W * 17)


def test_shorter_query_than_context_reads_what_it_has():
    table, _ = build_table(rows([(0, (1, 2), A), (0, (2,), B)]), context=2, budget=4)
    tok, _, _ = table.lookup(torch.tensor([0]), torch.tensor([[2]]))
    assert torch.equal(tok[0], tree(B)[0])


@pytest.mark.parametrize("capacity", [8, 64])
def test_empty_table_misses_everything(capacity):
    table = RetrievalTable.empty(context=2, capacity=capacity, depth=D, width=W, budget=4)
    _, _, val = table.lookup(torch.tensor([0, 1]), torch.tensor([[1, 2], [3, 4]]))
    assert not val.any()
