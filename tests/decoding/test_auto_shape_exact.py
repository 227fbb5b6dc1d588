"""Strict speculative beam search with the default (auto) tree shapes is the target's beam search: on
Office and on a synthetic catalogue with 200+ level-1 codes, the first 200 test users, K in {1, 10, 20},
batch 1 and 16, with the trie drafter and with a trained draft model. Where the planned rounds hold
every descendant of the target's beams, every user takes exactly the planned number of target calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from spec_checks import ATOL, check_items, covered, levels_table, path, tie_swapped

from recspec.config import DecodeConfig, ModelConfig, TrainConfig, TreeConfig
from recspec.data.catalog import Catalog, open_catalog
from recspec.data.datasets import Example, SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import beam_search
from recspec.decoding.drafters import TRIE
from recspec.decoding.engine import build_engine
from recspec.decoding.tree_shape import default_tree_budget, tree_shape
from recspec.models.decoder import Decoder
from recspec.training.train import train

USERS = 200  # first test users of each catalogue
KS, BATCHES = (1, 10, 20), (1, 16)
DRAFT_STEPS = 100  # training steps of the draft model (seeded)
MAX_TIES = 1  # users per case whose list may differ from AR's in the order of two items AR scores within ATOL
SYNTHETIC_CODES = 210  # level-1 codes of the synthetic catalogue (Beauty has 91, Office 256)


def synthetic_catalog(seed: int = 0) -> Catalog:
    """SYNTHETIC_CODES level-1 codes with 1-4 children each and 1-3 below those (unique SIDs), and 400
    users of 6-12 items drawn by a Zipf-like popularity, split leave-one-out (valid: the 2nd last item,
    test: the last)."""
    rng = np.random.default_rng(seed)
    codes = [(a, b, c) for a in range(SYNTHETIC_CODES) for b in range(rng.integers(1, 5)) for c in range(rng.integers(1, 4))]
    index = SIDIndex(codes=np.array(codes, dtype=np.int64), level_sizes=(SYNTHETIC_CODES, 4, 3), prefixes=("a", "b", "c"))
    vocab = Vocab.for_index(index)
    pop = 1.0 / np.arange(1, len(codes) + 1) ** 0.8
    pop = pop[rng.permutation(len(codes))] / pop.sum()
    seqs = [rng.choice(len(codes), size=rng.integers(6, 13), replace=False, p=pop).tolist() for _ in range(400)]
    valid = [Example(str(u), tuple(s[:-2]), (s[-2],)) for u, s in enumerate(seqs)]
    test = [Example(str(u), tuple(s[:-1]), (s[-1],)) for u, s in enumerate(seqs)]
    data = SplitData("synthetic", len(codes), [s[:-2] for s in seqs], valid, test)
    return Catalog(data, index, vocab, build_trie(index, vocab), None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def catalogs(optional_shared_datasets) -> dict[str, Catalog]:
    """The synthetic catalogue, and Office where the shared datasets hold it."""
    cats = {"synthetic": synthetic_catalog()}
    if optional_shared_datasets is not None and (optional_shared_datasets / "office").is_dir():
        cats["office"] = open_catalog(str(optional_shared_datasets / "office"))
    assert int((cats["synthetic"].trie.depth == 1).sum()) >= 200
    return cats


@pytest.fixture(scope="module")
def models(catalogs, make_decoder, tmp_path_factory) -> dict[str, tuple[Decoder, Decoder]]:
    """Per catalogue: a tiny random target (clear margins) and a tiny draft trained on the catalogue for
    DRAFT_STEPS seeded steps."""
    out = {}
    for name, cat in catalogs.items():
        torch.manual_seed(0)
        draft = Decoder(ModelConfig(vocab_size=cat.vocab.size, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                    intermediate_size=64, max_positions=256))
        cfg = TrainConfig(max_steps=DRAFT_STEPS, batch_size=32, warmup_steps=10, eval_users=0, seed=0, threads=1)
        res = train(draft, cat.data, cat.index, cat.vocab, cat.trie, cfg, tmp_path_factory.mktemp(name), role="draft",
                    progress=False)
        assert res.steps == DRAFT_STEPS
        out[name] = (make_decoder(cat.vocab, seed=1), draft.eval())
    return out


@pytest.fixture(scope="module")
def reference(catalogs, models):
    """reference(name, K, batch) -> [(prompts, the target's beam search)] over the first USERS test users."""
    memo = {}

    def ref(name: str, K: int, batch: int):
        if (name, K, batch) not in memo:
            cat, target = catalogs[name], models[name][0]
            hist = [e.history for e in cat.data.test[:USERS]]
            prompts = [build_prompts(cat.vocab, cat.index, hist[i:i + batch]) for i in range(0, USERS, batch)]
            memo[name, K, batch] = [(p, beam_search(target, cat.trie, p, K)) for p in prompts]
        return memo[name, K, batch]

    return ref


# device: whose default budget the auto shape takes (both run here on the CPU): the GPU's drafts wide
# trees (level 1 whole where it fits), the CPU's small ones
CASES = [(name, K, batch, drafter, device) for name in ("office", "synthetic") for K in KS for batch in BATCHES
         for drafter in ("trie", "draft") for device in ("cuda", "cpu")]


@pytest.mark.slow
@pytest.mark.parametrize("name,K,batch,drafter,device", CASES,
                         ids=[f"{c[0]}-K{c[1]}-b{c[2]}-{c[3]}-{c[4]}-budget" for c in CASES])
def test_strict_with_auto_shapes_equals_beam_search(catalogs, models, reference, name, K, batch, drafter, device):
    if name not in catalogs:
        pytest.skip(f"{name} is not in the shared datasets")
    cat, (target, draft) = catalogs[name], models[name]
    cfg = DecodeConfig(K=K, tree=TreeConfig(budget=default_tree_budget(device)))  # auto, at the device's budget
    shape = tree_shape(cfg, cat.trie, device)
    engine = build_engine(target, cat.trie, cfg, TRIE if drafter == "trie" else draft, cat.popularity)
    assert engine.shape == shape
    L = cat.trie.num_levels
    sids = cat.trie.sids.numpy()
    planned = len(path(shape, L)) if covered(shape, sids, K) else None
    users = ties = 0
    for b, (prompts, want) in enumerate(reference(name, K, batch)):
        got, stats = engine.run(prompts)
        check_items(cat.trie, cat.vocab, got)
        torch.testing.assert_close(got.scores, want.scores, atol=ATOL, rtol=0)
        tied = tie_swapped(got, want, ATOL)
        same = (got.sids == want.sids).all(dim=1) | tied
        assert same.all(), f"batch {b}: users {torch.nonzero(~same).flatten().tolist()} differ from beam search"
        ties += int(tied.sum())
        levels_table(stats, L, max((shape.gamma, *shape.depths)))
        if planned is not None:
            calls = stats.target_calls()
            assert (calls == planned).all(), f"batch {b}: covered rounds took {calls.tolist()} calls, planned {planned}"
        users += len(prompts.lengths)
    print(f"[auto-shape exactness] {name} K={K} batch={batch} {drafter} {device}-budget: {users} users, "
          f"{ties} tie swaps")  # shown with -s: the closing note counts them
    assert users == USERS and ties <= MAX_TIES, f"{ties} users' lists differ from beam search in the order of tied items"


def test_tie_swaps_are_told_from_other_differences():
    """Two items the reference scores alike may come in either order; another item, or a swap across
    distinct scores, is a difference."""
    from recspec.decoding.beam_search import BeamResult

    scores = torch.tensor([[-1.0, -2.0, -2.0, -3.0]])
    want = BeamResult(torch.tensor([[4, 5, 6, 7]]), scores, torch.zeros(1, 4, 2, dtype=torch.long))
    as_got = lambda sids: BeamResult(torch.tensor([sids]), scores, want.codes)  # noqa: E731
    assert tie_swapped(as_got([4, 6, 5, 7]), want, ATOL).tolist() == [True]
    assert tie_swapped(as_got([5, 4, 6, 7]), want, ATOL).tolist() == [False]  # -1 and -2 are no tie
    assert tie_swapped(as_got([4, 5, 6, 8]), want, ATOL).tolist() == [False]  # another item
    assert tie_swapped(want, want, ATOL).tolist() == [False]  # equal lists: nothing swapped
