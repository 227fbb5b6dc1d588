"""Constrained beam search: equal to Hugging Face's `generate` with the same trie on Beauty users (with
the <eos> step and without it, and with a per-user exclusion pruned into the trie), exhaustive when K is
the catalogue, L model calls (L + 1 with <eos>), and its results are real, distinct, sorted items."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from recspec.data.sids import SIDIndex, resolve_collisions
from recspec.data.trie import SIDTrie, build_trie
from recspec.data.vocab import EOS, PAD, Vocab, build_prompts, sequence_tokens
from recspec.decoding.beam_search import BeamResult, beam_search, boundary_gap

NUM_USERS = 200  # Beauty users compared with Hugging Face, for every K
BATCH = 50  # users per beam_search call (left-padded prompts of different lengths)
ATOL = 1e-4


def read_sequential(path: Path) -> dict[str, list[int]]:
    """`USER ITEM ITEM ...` lines, 1-based item ids -> {user: 0-based item ids} (a minimal parser)."""
    out = {}
    for line in path.read_text().splitlines():
        user, *items = line.split()
        out[user] = [int(i) - 1 for i in items]
    return out


@dataclass(frozen=True)
class Beauty:
    index: SIDIndex
    vocab: Vocab
    trie: SIDTrie
    histories: list[list[int]]  # test-time histories (train + valid items) of users spread over the file
    model: torch.nn.Module  # a tiny random decoder over the Beauty vocabulary


@pytest.fixture(scope="module")
def beauty(sequential_dataset, beauty_index, make_decoder) -> Beauty:
    folder = sequential_dataset  # Beauty, or the bundled toy catalogue where ../shared is absent
    train = read_sequential(folder / "sequential_train.txt")
    valid = read_sequential(folder / "sequential_valid.txt")
    histories = [train[u] + valid.get(u, []) for u in train]
    histories = [h for h in histories if h]
    stride = len(histories) // NUM_USERS
    histories = histories[::stride][:NUM_USERS]
    assert len(histories) == NUM_USERS
    assert len({min(len(h), 20) for h in histories[:BATCH]}) > 1  # batches really are left-padded
    vocab = Vocab.for_index(beauty_index)
    trie = build_trie(beauty_index, vocab)
    return Beauty(beauty_index, vocab, trie, histories, make_decoder(vocab, seed=0))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine spinning threads make
    HF's per-step overhead many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_model(beauty):
    transformers = pytest.importorskip("transformers")
    from recspec.models.hf import hf_config

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(beauty.model.cfg)))
    hf.load_state_dict(beauty.model.state_dict())
    return hf.eval()


@pytest.fixture(scope="module")
def allowed_tokens(beauty):
    """HF's prefix_allowed_tokens_fn from our trie: the generated suffix -> trie.walk -> allowed ids.
    Memoised on the suffix (the same beams recur across users and K)."""
    trie = beauty.trie
    memo: dict[tuple[int, ...], torch.Tensor] = {}

    def for_prompt(T: int):
        def fn(batch_id: int, ids: torch.Tensor) -> torch.Tensor:
            suffix = ids[T:]
            key = tuple(suffix.tolist())
            if key not in memo:
                memo[key] = trie.allowed(trie.walk(suffix)).nonzero().reshape(-1)
            return memo[key]

        return fn

    return for_prompt


def ours_batched(beauty: Beauty, K: int, eos: bool, banned: list[set[int]] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per user: (codes (K, L), scores (K,)) from beam_search over batches of users; banned: SID rows
    per user to exclude."""
    out = []
    for start in range(0, len(beauty.histories), BATCH):
        prompts = build_prompts(beauty.vocab, beauty.index, beauty.histories[start:start + BATCH])
        exclude = None
        if banned is not None:
            exclude = torch.zeros(prompts.tokens.shape[0], beauty.trie.num_sids, dtype=torch.bool)
            for b, rows in enumerate(banned[start:start + BATCH]):
                exclude[b, sorted(rows)] = True
        res = beam_search(beauty.model, beauty.trie, prompts, K, eos=eos, exclude=exclude)
        out += list(zip(res.codes, res.scores))
    return out


def check_result(trie: SIDTrie, vocab: Vocab, res: BeamResult, K: int) -> None:
    """Real items (leaves whose codes are the returned tokens), K distinct per user, best first."""
    B = res.sids.shape[0]
    assert res.sids.shape == res.scores.shape == (B, K) and res.codes.shape == (B, K, trie.num_levels)
    assert (res.sids >= 0).all() and torch.isfinite(res.scores).all()
    tokens = torch.as_tensor(vocab.item_tokens(trie.sids[res.sids].numpy()))  # (B, K, L)
    assert torch.equal(res.codes, tokens)
    assert torch.equal(trie.leaf_sid[trie.walk(res.codes)], res.sids)
    for row in res.sids:
        assert len(set(row.tolist())) == K
    assert (res.scores[:, 1:] <= res.scores[:, :-1]).all()


def check_hf(beauty: Beauty, hf_model, allowed_for, K: int, eos: bool, ours, users: int = NUM_USERS) -> None:
    """HF generate (L + 1 new tokens, the last <eos>, with eos; else L) returns our items in our order
    with our scores, user by user. allowed_for(user, T) -> HF's prefix_allowed_tokens_fn."""
    L = beauty.trie.num_levels
    beams = dict(num_beams=K, num_return_sequences=K, length_penalty=0.0) if K > 1 else {}
    for user, (hist, (codes, scores)) in enumerate(zip(beauty.histories[:users], ours)):
        prompt = build_prompts(beauty.vocab, beauty.index, [hist]).tokens  # (1, T) unpadded
        T = prompt.shape[1]
        with torch.no_grad():
            out = hf_model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=L + int(eos), do_sample=False,
                prefix_allowed_tokens_fn=allowed_for(user, T), pad_token_id=PAD, eos_token_id=EOS,
                output_scores=True, return_dict_in_generate=True, **beams)
        seqs = out.sequences[:, T:]  # (K, L + eos)
        assert seqs.shape[1] == L + int(eos) and (seqs[:, L:] == EOS).all(), f"user {user}"
        assert torch.equal(seqs[:, :L], codes), f"user {user}: items or their order differ from HF"
        if K > 1:  # HF's greedy search reports processed logits, not sequence log-probs
            torch.testing.assert_close(out.sequences_scores, scores, atol=ATOL, rtol=0, msg=f"user {user}")


@pytest.mark.parametrize("K", [1, 5, 10, 20])
def test_matches_hf_generate(beauty, hf_model, allowed_tokens, K):
    """With eos: transformers' generate with the <eos> step, as it is usually run."""
    check_hf(beauty, hf_model, lambda _user, T: allowed_tokens(T), K, True, ours_batched(beauty, K, eos=True))


@pytest.mark.parametrize("K", [1, 5, 10, 20])
def test_matches_hf_generate_without_eos(beauty, hf_model, allowed_tokens, K):
    """Without eos: generate stops after the L codes; the ranking is by the codes' log-probs alone."""
    check_hf(beauty, hf_model, lambda _user, T: allowed_tokens(T), K, False, ours_batched(beauty, K, eos=False))


def biting_exclusions(beauty: Beauty, K: int, users: int) -> list[set[int]]:
    """Per user, SID rows to exclude that change her list: her history's, the items at ranks 0 and 2 of
    her plain top-K list, and every SID under the length-2 prefix of her rank-1 item (a prefix all of
    whose items are excluded, which the search must not enter)."""
    plain = ours_batched(beauty, K, eos=False)[:users]
    sids = beauty.trie.sids.tolist()
    out = []
    for hist, (codes, _) in zip(beauty.histories, plain):
        top = beauty.trie.leaf_sid[beauty.trie.walk(codes)].tolist()  # SID rows, best first
        prefix = sids[top[1]][:2]
        out.append(set(beauty.trie.item_sid[hist].tolist()) | {top[0], top[2]} | {u for u, s in enumerate(sids) if s[:2] == prefix})
    return out


def pruned_allowed(beauty: Beauty, allowed_tokens, banned: list[set[int]]):
    """HF's prefix_allowed_tokens_fn for a user who may not get the SID rows `banned[user]`: the trie's
    tokens that keep some allowed SID reachable (a plain Python reading of the pruned trie)."""
    offsets = beauty.vocab.level_offsets()
    sids = [tuple(c + o for c, o in zip(row, offsets)) for row in beauty.trie.sids.tolist()]

    def allowed_for(user: int, T: int):
        live = {s[:j] for u, s in enumerate(sids) if u not in banned[user] for j in range(len(s) + 1)}
        base = allowed_tokens(T)

        def fn(batch_id: int, ids: torch.Tensor):
            prefix = tuple(ids[T:].tolist())
            toks = base(batch_id, ids).tolist()
            return [t for t in toks if t == EOS or prefix + (t,) in live] or [PAD]

        return fn

    return allowed_for


@pytest.mark.parametrize("K,eos", [(10, False), (5, True)])
def test_matches_hf_generate_excluding_items(beauty, hf_model, allowed_tokens, K, eos):
    """Excluded SIDs (ones the plain search returns, and a whole prefix) are pruned from HF's trie per
    user; our search with `exclude` returns what HF returns, and none of them."""
    users = 40
    banned = biting_exclusions(beauty, K, users)
    ours = ours_batched(beauty, K, eos, banned + [set()] * (NUM_USERS - users))[:users]
    for user, (codes, scores) in enumerate(ours):
        got = beauty.trie.leaf_sid[beauty.trie.walk(codes)]
        assert (got >= 0).all() and torch.isfinite(scores).all(), f"user {user}: fewer than K items"
        assert not set(got.tolist()) & banned[user], f"user {user}: an excluded item was returned"
    check_hf(beauty, hf_model, pruned_allowed(beauty, allowed_tokens, banned), K, eos, ours, users)


@pytest.mark.parametrize("K", [1, 5, 20])
def test_results_are_real_distinct_sorted_items(beauty, K):
    prompts = build_prompts(beauty.vocab, beauty.index, beauty.histories[:BATCH])
    check_result(beauty.trie, beauty.vocab, beam_search(beauty.model, beauty.trie, prompts, K), K)


# --- a toy catalogue: K up to the number of distinct SIDs -------------------------------------------
# 7 items on 5 distinct 3-code SIDs (items 4 and 5 repeat items 0 and 1), resolved as loading resolves them:
# a 4th, disambiguating level tells them apart (7 distinct SIDs)
TOY = resolve_collisions(SIDIndex(codes=np.array([[0, 1, 0], [2, 0, 1], [0, 1, 1], [1, 1, 0], [0, 1, 0], [2, 0, 1],
                                                  [1, 0, 0]]), level_sizes=(3, 2, 2), prefixes=("a", "b", "c")))


def exhaustive_scores(model, vocab: Vocab, trie: SIDTrie, history: list[int], eos: bool) -> torch.Tensor:
    """(U,) log-prob of every distinct SID (followed by <eos>, with eos), from one causal forward per SID."""
    prompt = sequence_tokens(vocab, TOY, history)
    tokens = vocab.item_tokens(trie.sids.numpy())  # (U, L)
    seqs = torch.tensor([prompt + row.tolist() + [EOS] for row in tokens])  # (U, T + L + 1)
    with torch.no_grad():
        logp = torch.log_softmax(model.forward_train(seqs)[:, len(prompt) - 1:-1].float(), dim=-1)
    steps = logp.gather(-1, seqs[:, len(prompt):, None]).squeeze(-1)  # (U, L + 1): the codes, then <eos>
    return steps[:, : trie.num_levels + int(eos)].sum(-1)


@pytest.mark.parametrize("eos", [False, True])
def test_full_width_is_exhaustive(make_decoder, eos):
    """With K = every distinct SID, beam search keeps everything: it must return all SIDs ranked by
    their exact sequence log-probs (the codes', plus <eos>'s with eos)."""
    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    model = make_decoder(vocab, seed=11, num_layers=2, num_heads=4, num_kv_heads=2)
    histories = [[0, 3], [6], [1, 2, 4, 5, 6, 0]]
    res = beam_search(model, trie, build_prompts(vocab, TOY, histories), trie.num_sids, eos=eos)
    check_result(trie, vocab, res, trie.num_sids)
    for b, hist in enumerate(histories):
        want = exhaustive_scores(model, vocab, trie, hist, eos)  # (U,)
        order = want.argsort(descending=True)
        assert torch.equal(res.sids[b], order)
        torch.testing.assert_close(res.scores[b], want[order], atol=ATOL, rtol=0)


@pytest.mark.parametrize("eos", [False, True])
def test_full_width_with_exclusions_ranks_the_allowed_items(make_decoder, eos):
    """K = every distinct SID, some excluded per user (all but one for the last user): the allowed SIDs
    come first, ranked by their exact log-probs, then -1 entries scored -inf."""
    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    model = make_decoder(vocab, seed=11, num_layers=2, num_heads=4, num_kv_heads=2)
    histories = [[0, 3], [6], [1, 2, 4, 5, 6, 0]]
    U = trie.num_sids
    banned = [{0}, {1, 3}, set(range(U)) - {2}]  # SID rows
    exclude = torch.tensor([[u in rows for u in range(U)] for rows in banned])
    res = beam_search(model, trie, build_prompts(vocab, TOY, histories), U, eos=eos, exclude=exclude)
    for b, hist in enumerate(histories):
        want = exhaustive_scores(model, vocab, trie, hist, eos)  # (U,)
        order = [u for u in want.argsort(descending=True).tolist() if u not in banned[b]]
        n = len(order)
        assert res.sids[b].tolist() == order + [-1] * (U - n), f"user {b}"
        torch.testing.assert_close(res.scores[b, :n], want[order], atol=ATOL, rtol=0)
        assert torch.isneginf(res.scores[b, n:]).all()


def test_k_outside_the_catalogue_is_refused(make_decoder):
    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    model = make_decoder(vocab)
    prompts = build_prompts(vocab, TOY, [[0]])
    assert trie.num_sids == TOY.num_items  # one SID per item
    for K in (0, trie.num_sids + 1):
        with pytest.raises(ValueError, match=rf"K={K} must be between 1 and the number of distinct items \({trie.num_sids}\)"):
            beam_search(model, trie, prompts, K)


def test_boundary_gap_by_hand():
    """Two users, one beam each, V=4: kept scores vs the best dropped allowed candidate."""
    scores = torch.tensor([[0.0], [-1.0]])
    logp = torch.tensor([[[-0.1, -0.5, -0.5001, -3.0]], [[-0.2, -0.3, -9.0, -0.25]]])
    allowed = torch.tensor([[[True, True, True, True]], [[True, False, True, True]]])
    kept = torch.tensor([[-0.1, -0.5], [-1.2, -1.25]])  # top-2 of each user
    gap = boundary_gap(scores, logp, allowed, kept)
    torch.testing.assert_close(gap, torch.tensor([0.0001, 8.75]), atol=1e-6, rtol=0)
    everything = torch.tensor([[-1.2, -1.25, -10.0]])  # nothing dropped: no near-tie possible
    assert boundary_gap(scores[1:], logp[1:], allowed[1:], everything).item() == float("inf")


def test_audit_leaves_the_search_unchanged(make_decoder):
    vocab = Vocab.for_index(TOY)
    trie = build_trie(TOY, vocab)
    model = make_decoder(vocab, seed=5)
    prompts = build_prompts(vocab, TOY, [[0, 3], [6], [1, 2, 4]])
    plain, audited = beam_search(model, trie, prompts, 3), beam_search(model, trie, prompts, 3, audit=True)
    assert torch.equal(plain.sids, audited.sids) and torch.equal(plain.scores, audited.scores)
    assert plain.margin is None and audited.margin.shape == (3,) and bool((audited.margin >= 0).all())


@pytest.mark.parametrize("eos", [False, True])
def test_ar_takes_one_model_call_per_level(beauty, eos):
    """Plain beam search and the engine's AR mode: the prefill, then one call per further level, so L
    calls (the trie's levels) without eos and L + 1 with the <eos> step."""
    from recspec.decoding.engine import SpecEngine
    from spec_checks import decode

    calls = []
    hook = beauty.model.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    try:
        prompts = build_prompts(beauty.vocab, beauty.index, beauty.histories[:BATCH])
        beam_search(beauty.model, beauty.trie, prompts, 5, eos=eos)
        searched = len(calls)
        _, stats = SpecEngine(beauty.model, None, beauty.trie, decode(K=5, N=5, gamma=0, eos=eos)).run(prompts)
        engine = len(calls) - searched
    finally:
        hook.remove()
    want = beauty.trie.num_levels + int(eos)
    assert searched == want and engine == want
    assert (stats.target_calls() == want).all()
