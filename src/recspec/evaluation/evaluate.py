"""Offline evaluation: recommend K items per user with beam search and score them against the ground truth.

Everything is compared as SID rows (`trie.sids`). Every item has its own SID (the trie refuses an index
with collisions; loading one appends a disambiguating level), so a list of K SID rows is K distinct
items and a hit is exactly one ground-truth item. Ground-truth items are mapped through
`trie.item_sid`, and the popularity baseline's items the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from recspec.data.catalog import Catalog
from recspec.data.datasets import HISTORY_LEN, Example, SplitData
from recspec.data.exclusion import history_rows
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import BeamResult, beam_search
from recspec.decoding.engine import SpecEngine
from recspec.decoding.stats import SpecStats
from recspec.evaluation.metrics import DEFAULT_KS, dedup, popularity_ranking, ranking_metrics
from recspec.models.decoder import Decoder


@dataclass(frozen=True)
class UserBatch:
    """Recommendations for one batch of users, with the users' positions in the input."""

    users: torch.Tensor  # (b,) int64 positions of these users in the `histories` given
    result: BeamResult  # (b, K) on the CPU, row j belongs to users[j]


def length_batches(histories: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Input positions grouped into batches of users with similar prompt lengths (shortest first)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(histories)), key=lambda i: (min(len(histories[i]), HISTORY_LEN), i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def recommend_batches(model: Decoder, trie: SIDTrie, vocab: Vocab, index: SIDIndex,
                      histories: Sequence[Sequence[int]], K: int, batch_size: int,
                      device: str | torch.device = "cpu", progress: bool = False, eos: bool = False,
                      exclude_history: bool = False) -> Iterator[UserBatch]:
    """Beam-search the top-K unique SIDs of every history, batch by batch (users sorted by length so
    that prompts in a batch need little padding). Each batch says which input users it holds;
    `recommend` puts them back in input order. eos: score <eos> too (`beam_search`); exclude_history:
    never return an item of the user's history (the whole given history, not only the prompt's items)."""
    trie_dev = trie.to(device)
    batches = length_batches(histories, batch_size)
    for users in tqdm(batches, desc="recommend", unit="batch", disable=not progress):
        prompts = build_prompts(vocab, index, [histories[i] for i in users]).to(device)
        exclude = history_rows(trie_dev, [histories[i] for i in users]) if exclude_history else None
        res = beam_search(model, trie_dev, prompts, K, eos=eos, exclude=exclude)
        res = BeamResult(sids=res.sids.cpu(), scores=res.scores.cpu(), codes=res.codes.cpu())
        yield UserBatch(users=torch.tensor(users, dtype=torch.int64), result=res)


def recommend(model: Decoder, trie: SIDTrie, vocab: Vocab, index: SIDIndex, histories: Sequence[Sequence[int]],
              K: int, batch_size: int = 64, device: str | torch.device = "cpu", progress: bool = False,
              eos: bool = False, exclude_history: bool = False) -> BeamResult:
    """Top-K unique SIDs for every history, rows in input order. -> BeamResult (U, K) on the CPU.
    eos, exclude_history: as in `recommend_batches`."""
    U, L = len(histories), trie.num_levels
    sids = torch.full((U, K), -1, dtype=torch.int64)
    scores = torch.full((U, K), float("-inf"))
    codes = torch.zeros((U, K, L), dtype=torch.int64)
    for batch in recommend_batches(model, trie, vocab, index, histories, K, batch_size, device, progress, eos,
                                   exclude_history):
        sids[batch.users] = batch.result.sids
        scores[batch.users] = batch.result.scores
        codes[batch.users] = batch.result.codes
    return BeamResult(sids=sids, scores=scores, codes=codes)


def decode_users(engine: SpecEngine, catalog: Catalog, histories: Sequence[Sequence[int]], batch_size: int,
                 exclude_history: bool = False) -> tuple[BeamResult, SpecStats]:
    """Every history (internal item ids) through `engine`, in batches of similar prompt lengths -> what its
    constraint decodes per history on the CPU, rows in input order, and the run's statistics: top-K SID rows
    (U, K) and codes (U, K, L) under the SID trie; under `ItemList` (K = 1) SID rows (U, 1, M) and tokens
    (U, 1, M * (L + 1)). exclude_history: no output holds an item of its (whole) history."""
    K, n = engine.K, engine.constraint.num_levels
    U, device = len(histories), engine.trie.next_state.device
    per_beam = engine.constraint.outputs(torch.zeros(1, K, n, dtype=torch.long, device=device)).shape[2:]  # () or (M,)
    out = BeamResult(torch.full((U, K, *per_beam), -1), torch.full((U, K), float("-inf")),
                     torch.zeros(U, K, n, dtype=torch.long))
    stats = SpecStats()
    for users in length_batches(histories, batch_size):
        batch = [histories[i] for i in users]
        prompts = build_prompts(catalog.vocab, catalog.index, batch, where="history").to(device)
        res, st = engine.run(prompts, exclude=history_rows(engine.trie, batch) if exclude_history else None)
        rows = torch.tensor(users)
        out.sids[rows], out.scores[rows], out.codes[rows] = res.sids.cpu(), res.scores.cpu(), res.codes.cpu()
        stats = stats.merge(st)
    return out, stats


def target_sids(trie: SIDTrie, examples: Sequence[Example]) -> list[set[int]]:
    """Ground truth per example as unique SID rows."""
    item_sid = trie.item_sid.cpu()
    return [set(item_sid[list(e.targets)].tolist()) for e in examples]


def _check_ks(ks: Sequence[int], K: int) -> None:
    if not ks or min(ks) < 1 or max(ks) > K:
        raise ValueError(f"every k in {tuple(ks)} must be between 1 and K={K}")


@torch.no_grad()
def evaluate(model: Decoder, trie: SIDTrie, vocab: Vocab, index: SIDIndex, examples: Sequence[Example],
             K: int = 20, batch_size: int = 64, ks: Sequence[int] = DEFAULT_KS, progress: bool = False,
             device: str | torch.device | None = None, eos: bool = False,
             exclude_history: bool = False) -> dict[str, float | int]:
    """Recall@k / NDCG@k of the model's beam search (K beams) on `examples`, plus "users" (scored).

    The model is put in eval mode for the run and back into its former mode after; `device`
    defaults to the model's. eos, exclude_history (each example's history): as in `recommend_batches`."""
    _check_ks(ks, K)
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        res = recommend(model, trie, vocab, index, [e.history for e in examples], K, batch_size, device, progress,
                        eos, exclude_history)
    finally:
        model.train(was_training)
    out: dict[str, float | int] = dict(ranking_metrics(res.sids.tolist(), target_sids(trie, examples), ks))
    out["users"] = len(examples)
    return out


def popularity_sids(trie: SIDTrie, train: list[list[int]], num_items: int) -> list[int]:
    """Every SID row (one per item), most popular item first."""
    items = popularity_ranking(train, num_items, num_items)
    return dedup(trie.item_sid.cpu()[items].tolist())


def evaluate_popularity(data: SplitData, trie: SIDTrie, examples: Sequence[Example],
                        ks: Sequence[int] = DEFAULT_KS) -> dict[str, float | int]:
    """The same metrics for recommending the most frequent training items to every user."""
    top = popularity_sids(trie, data.train, data.num_items)[:max(ks)]
    _check_ks(ks, len(top))
    out: dict[str, float | int] = dict(ranking_metrics([top] * len(examples), target_sids(trie, examples), ks))
    out["users"] = len(examples)
    return out


def item_sid_rows(trie: SIDTrie, ranked: Sequence[Sequence[int]]) -> list[list[int]]:
    """Ranked item ids (U lists) -> the same lists as SID rows (`trie.item_sid`), ready for the metrics."""
    item_sid = trie.item_sid.cpu()
    return [item_sid[list(r)].tolist() for r in ranked]


def evaluate_item_rankings(trie: SIDTrie, examples: Sequence[Example], ranked: Sequence[Sequence[int]],
                           ks: Sequence[int] = DEFAULT_KS) -> dict[str, float | int]:
    """The same metrics for ranked item ids (U, >= max(ks)) from any recommender (e.g. `baselines`):
    items are mapped to their SID rows (`trie.item_sid`) and scored against `target_sids`."""
    out: dict[str, float | int] = dict(ranking_metrics(item_sid_rows(trie, ranked), target_sids(trie, examples), ks))
    out["users"] = len(examples)
    return out
