"""The retrieval drafter (LASER) on text: greedy tree speculation from pools' precomputed trees equals plain
greedy decoding row by row, with a pool that knows the outputs, one that knows nothing, mixed groups in a
batch and a table updated in place between runs; a pool of the outputs saves target calls.

On item lists (`ItemList`, per-user bans that grow as items finish): the Beauty test users' lists, drafted
from pools of OTHER users' greedy lists (two groups), from pools that draft every item twice (trees that
propose items the list already holds) and with the history items excluded, equal plain greedy user by
user at batch 16 and 1."""

from __future__ import annotations

import pytest
import torch

from recspec.data.datasets import load_sequential
from recspec.data.exclusion import history_rows
from recspec.data.vocab import Prompts, build_prompts
from recspec.decoding.constraints import FreeText, ItemList
from recspec.decoding.engine import build_engine
from recspec.decoding.greedy import greedy_decode
from recspec.retrieval.pools import Pools
from spec_checks import decode

V, LENGTH, EOS = 40, 24, 2


def text_case(make_decoder, n_rows: int = 6):
    target = make_decoder(V, seed=11, num_layers=2)
    c = FreeText(vocab_size=V, length=LENGTH, eos=EOS, banned_tokens=(0, 1))
    gen = torch.Generator().manual_seed(0)
    rows = [[1] + torch.randint(3, V, (int(n),), generator=gen).tolist()
            for n in torch.randint(3, 12, (n_rows,), generator=gen)]
    T = max(map(len, rows))
    prompts = Prompts(torch.tensor([[0] * (T - len(r)) + r for r in rows]), torch.tensor([len(r) for r in rows]))
    return target, c, rows, prompts


def outputs(codes: torch.Tensor, i: int) -> list[int]:
    return codes[i, 0].tolist()


def run(target, c, table, prompts, groups=None, N=4):
    engine = build_engine(target, c, decode(K=1, N=N, gamma=4), table)
    engine.drafter.route(groups)
    return engine.run(prompts)


def test_retrieval_speculation_equals_greedy_and_saves_calls(make_decoder):
    target, c, rows, prompts = text_case(make_decoder)
    want = greedy_decode(target, c, prompts)
    pools = Pools(context=2, depth=6)
    for i, r in enumerate(rows):  # the pool knows each row's prompt tail and output
        pools.insert(i % 2, r[-2:] + outputs(want.codes, i))
    table = pools.compile(budget=12, width=4, depth=4)
    groups = torch.tensor([i % 2 for i in range(len(rows))])
    got, stats = run(target, c, table, prompts, groups)
    assert torch.equal(got.codes, want.codes)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=0)
    _, ar = build_engine(target, c, decode(K=1, N=4, gamma=4), None).run(prompts)
    assert (stats.target_calls() < ar.target_calls()).all()  # every row accepted drafted tokens


def test_wrong_or_empty_pools_stay_exact(make_decoder):
    target, c, rows, prompts = text_case(make_decoder)
    want = greedy_decode(target, c, prompts)
    gen = torch.Generator().manual_seed(5)
    noisy = Pools(context=2, depth=6)
    for g in range(3):
        for _ in range(20):
            noisy.insert(g, torch.randint(0, V, (30,), generator=gen).tolist())
    for pools in (noisy, Pools(context=2, depth=6)):
        table = pools.compile(budget=12, width=4, depth=4)
        groups = torch.tensor([i % 3 for i in range(len(rows))])
        got, _ = run(target, c, table, prompts, groups)
        assert torch.equal(got.codes, want.codes)


def test_online_sync_between_runs_is_exact_and_helps(make_decoder):
    """Outputs of one batch inserted into the pool and synced into the same table in place: the next batch
    (the same prompts) stays exact and takes fewer target calls than with the empty pool."""
    target, c, rows, prompts = text_case(make_decoder, n_rows=4)
    want = greedy_decode(target, c, prompts)
    pools = Pools(context=2, depth=6)
    pools.insert(0, [3, 4, 5])
    table = pools.compile(budget=12, width=4, depth=4, capacity=1024)
    first, s1 = run(target, c, table, prompts)
    for i, r in enumerate(rows):
        pools.insert(0, r[-2:] + outputs(first.codes, i))
    assert pools.sync(table) > 0
    second, s2 = run(target, c, table, prompts)
    assert torch.equal(first.codes, want.codes) and torch.equal(second.codes, want.codes)
    assert s2.target_calls().sum() < s1.target_calls().sum()


def test_route_checks_the_batch(make_decoder):
    target, c, rows, prompts = text_case(make_decoder)
    table = Pools(context=2, depth=6).compile(budget=4, width=2, depth=2)
    engine = build_engine(target, c, decode(K=1, N=2, gamma=2), table)
    engine.drafter.route(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="route\\(\\) gave 3 groups for a batch of 6"):
        engine.run(prompts)


def test_own_match_finds_the_latest_earlier_window():
    from recspec.decoding.drafters.retrieval import own_match

    seq = torch.tensor([[5, 6, 7, 8, 5, 6, 9, 4, 5, 6, 0, 0],   # last two (5, 6) seen at 0-1 and 4-5: latest 4-5
                        [3, 4, 5, 6, 7, 8, 9, 3, 4, 0, 0, 0],   # (3, 4) at 0-1: continuation 5, 6, 7
                        [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]])  # (3, 4) never earlier: nothing
    tokens, valid = own_match(seq, torch.tensor([10, 9, 4]), c=2, depth=3)
    assert tokens[0].tolist() == [9, 4, 5] and valid[0].tolist() == [True, True, True]
    assert tokens[1].tolist() == [5, 6, 7] and valid[1].all()
    assert not valid[2].any()
    tokens, valid = own_match(seq[:1], torch.tensor([10]), c=2, depth=6)  # 9 4 5 6, then the row's end
    assert valid[0].tolist() == [True] * 4 + [False] * 2 and tokens[0, :4].tolist() == [9, 4, 5, 6]


@pytest.mark.parametrize("fixed", [False, True])
def test_own_ngrams_with_the_pool_stay_exact_and_help(make_decoder, fixed):
    """N = W + 1: column 0 drafts the row's own n-gram match; a random model's greedy text repeats itself, so
    the own match alone (an empty pool) saves target calls; fixed shapes (graph replay's math) agree."""
    target, c, rows, prompts = text_case(make_decoder)
    want = greedy_decode(target, c, prompts)
    table = Pools(context=2, depth=6).compile(budget=12, width=3, depth=4)
    cfg = decode(K=1, N=4, gamma=4)
    if fixed:
        cfg = cfg.replace(fixed_shapes=True)
    engine = build_engine(target, c, cfg, table)
    got, stats = engine.run(prompts)
    assert torch.equal(got.codes, want.codes)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=0)
    _, ar = build_engine(target, c, decode(K=1, N=4, gamma=4), None).run(prompts)
    assert stats.target_calls().sum() < ar.target_calls().sum()


# --- item lists: bans per user that grow as items finish ------------------------------------------------------
LIST_M = 10  # items per list
POOL_USERS, EVAL_USERS, SINGLE = 96, 32, 6  # Beauty test users: pool lists / decoded at batch 16 / at batch 1


@pytest.fixture(scope="module")
def list_case(beauty, sequential_dataset):
    """The tiny target's greedy lists of POOL_USERS test users (the pool's), and EVAL_USERS other users'
    histories, with their plain greedy lists at batch 16 and 1 (the references), with and without history."""
    data, _ = load_sequential(sequential_dataset)
    hist = [e.history for e in data.test[:EVAL_USERS + POOL_USERS]]
    c = ItemList(beauty.trie, LIST_M)
    prompts = lambda hs: build_prompts(beauty.vocab, beauty.index, hs)  # noqa: E731
    pool_p = prompts(hist[EVAL_USERS:])
    pool_lists = greedy_decode(beauty.target, c, pool_p).codes[:, 0]  # (P, M * (L + 1))
    pool_seqs = [pool_p.tokens[i, -2:].tolist() + pool_lists[i].tolist() for i in range(len(pool_lists))]
    evals = {16: [prompts(hist[i:i + 16]) for i in range(0, EVAL_USERS, 16)],
             1: [prompts(hist[i:i + 1]) for i in range(SINGLE)]}
    rows = {b: [history_rows(beauty.trie, hist[i:i + b]) for i in range(0, len(ps) * b, b)] for b, ps in evals.items()}
    want = {(b, x): [greedy_decode(beauty.target, c, p, exclude=r if x else None).codes for p, r in zip(ps, rows[b])]
            for b, ps in evals.items() for x in (False, True)}
    return c, pool_seqs, evals, rows, want


def doubled(codes: list[int], L: int) -> list[int]:
    """A list's tokens with every item (its L codes and <eos>) written twice in a row."""
    items = [codes[i:i + L + 1] for i in range(0, len(codes), L + 1)]
    return [t for item in items for t in item + item]


def run_lists(beauty, c, table, evals, rows, exclude: bool, group=lambda u: u % 2):
    """Every batch's speculative lists (user u of the evaluated ones routed to pool group(u)) and target calls."""
    engine = build_engine(beauty.target, c, decode(K=1, N=4, gamma=beauty.trie.num_levels + 1), table)
    out, calls = [], []
    for b, (p, r) in enumerate(zip(evals, rows)):
        B = p.tokens.shape[0]
        engine.drafter.route(group(torch.arange(b * B, (b + 1) * B)))
        got, stats = engine.run(p, exclude=r if exclude else None)
        out.append(got.codes)
        calls.append(stats.target_calls())
    return out, torch.cat(calls)


@pytest.mark.parametrize("batch", [16, 1])
def test_lists_from_other_users_pools_equal_greedy(beauty, list_case, batch):
    """Pools of other users' lists (their prompt tail and list tokens, two groups): every user's list is her
    plain greedy list, with and without her history items."""
    c, pool_seqs, evals, rows, want = list_case
    pools = Pools(context=2, depth=8)
    for i, seq in enumerate(pool_seqs):
        pools.insert(i % 2, seq)
    table = pools.compile(budget=16, width=4, depth=6)
    for exclude in (False, True):
        got, calls = run_lists(beauty, c, table, evals[batch], rows[batch], exclude)
        for g, w in zip(got, want[batch, exclude]):
            same = (g == w).all(dim=-1)[:, 0]
            assert same.all(), f"users {(~same).nonzero().flatten().tolist()} differ from greedy"


def test_trees_that_repeat_items_stay_exact(beauty, list_case):
    """One pool per user holding her own list with every item written twice: after an item's <eos> the tree
    proposes that item again (one the list holds, banned since it finished) beside the next one. The target
    never takes the repeat, the lists are greedy's, and every user accepts drafted tokens (the first round's
    tree is her list's first item, under her prompt's tail)."""
    c, _, evals, rows, want = list_case
    L = beauty.trie.num_levels
    pools = Pools(context=2, depth=8)
    for b, p in enumerate(evals[16]):
        for u in range(p.tokens.shape[0]):
            pools.insert(b * 16 + u, p.tokens[u, -2:].tolist() + doubled(want[16, False][b][u, 0].tolist(), L))
    table = pools.compile(budget=16, width=4, depth=6)
    got, calls = run_lists(beauty, c, table, evals[16], rows[16], exclude=False, group=lambda u: u)
    assert all(torch.equal(g, w) for g, w in zip(got, want[16, False]))
    assert (calls < c.num_levels).all()


def test_doubled_writes_each_item_twice():
    assert doubled([7, 8, 2, 9, 10, 2], 2) == [7, 8, 2, 7, 8, 2, 9, 10, 2, 9, 10, 2]
