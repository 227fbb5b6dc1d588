"""The Python API: a target (and optionally a draft) over a catalogue, recommending in batches.

    rec = Recommender.load("ml-100k", "runs/demo/target", index_dir="runs/demo")
    recs, stats = rec.recommend([[12, 7, 301]], K=10)   # ids as the dataset's files write them
    recs.items[0]                                       # 10 distinct items, the same kind of ids

Item ids at this edge are the dataset's own, as written in its interaction files: the numbers of
`sequential_*.txt` lines (1-based), LC-Rec `inter.json` ids (0-based), RecBole `.inter` item tokens
(strings; 7 and "7" are the same id). Internal ids (0-based rows of the SID index, what `SplitData`
and `Example` hold) are taken by `recommend_internal` only.

With a draft and `DecodeConfig(verify="strict")` the output is exactly the target's beam search.

List-wise: `recommend_list(histories, M)` greedily generates one list of M distinct items per history
(the `ItemList` constraint, K = 1), in generated order; with a draft, greedy tree speculation returns
exactly the same lists (strict verification; the tree needs an explicit shape, `cfg.tree` draft_beams /
gamma). `evaluate_list` scores the lists beside the target's top-M beam search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from recspec.config import DecodeConfig
from recspec.data.catalog import Catalog, open_catalog
from recspec.data.datasets import HISTORY_LEN, Example
from recspec.decoding.beam_search import BeamResult
from recspec.decoding.constraints import ItemList
from recspec.decoding.drafters import TRIE
from recspec.decoding.engine import SpecEngine, build_engine
from recspec.decoding.stats import SpecStats
from recspec.decoding.tree_shape import TreeShape, tree_shape
from recspec.evaluation.evaluate import decode_users, target_sids
from recspec.evaluation.listwise import listwise_rows
from recspec.evaluation.metrics import DEFAULT_KS, ranking_metrics
from recspec.models.decoder import Decoder
from recspec.models.hf import check_fits, load_checkpoint


@dataclass(frozen=True)
class Recommendations:
    """Top-K lists, one per history, in input order; every list holds K distinct items."""

    items: list[list[int | str]]  # (U, K) the dataset's own item ids, best first
    internal: torch.Tensor  # (U, K) int64 the same items as internal ids
    scores: torch.Tensor  # (U, K) sequence log-probabilities of the items' SIDs
    beams: BeamResult  # (U, K) what beam search returned: SID rows (`catalog.trie.sids`) and codes


@dataclass(frozen=True)
class ItemLists:
    """Greedy lists, one per history, in input order: M distinct items each, in generated order (fewer only
    where a user may get fewer, e.g. with her history excluded)."""

    items: list[list[int | str]]  # (U, <= M) the dataset's own item ids, first generated first
    internal: torch.Tensor  # (U, M) int64 the same items as internal ids (-1 where a slot holds no item)
    scores: torch.Tensor  # (U,) the list's log-probability: the sum of its tokens' (codes and <eos>)
    lists: BeamResult  # what the engine returned: SID rows (U, 1, M), tokens (U, 1, M * (L + 1)), scores (U, 1)


@dataclass
class Recommender:
    catalog: Catalog
    target: Decoder
    draft: Decoder | str | None = None  # a draft model, or "trie" (the model-free trie drafter)
    cfg: DecodeConfig = DecodeConfig()
    device: str = "cpu"

    @staticmethod
    def load(data: str, target_dir: str, draft_dir: str | None = None, cfg: DecodeConfig = DecodeConfig(),
             index_dir: str | None = None, device: str = "cpu") -> "Recommender":
        cat = open_catalog(data, index_dir=index_dir)
        target, meta = load_checkpoint(target_dir, device=device)
        check_fits(meta, cat.vocab, cat.index.fingerprint(), target_dir)
        draft = TRIE if draft_dir == TRIE else None
        if draft_dir and draft is None:
            draft, dmeta = load_checkpoint(draft_dir, device=device)
            check_fits(dmeta, cat.vocab, cat.index.fingerprint(), draft_dir)
        return Recommender(cat, target, draft, cfg, device)

    def tree_shape(self, K: int) -> TreeShape | None:
        """The draft tree at K: auto (from the catalogue's trie, for the device) unless cfg gives one; None without a draft."""
        return tree_shape(replace(self.cfg, K=K), self.catalog.trie, self.device) if self.draft is not None else None

    def engine(self, K: int | None = None) -> SpecEngine:
        """The engine of this recommender's config (at K, default cfg.K), on its device."""
        return build_engine(self.target, self.catalog.trie, replace(self.cfg, K=K or self.cfg.K), self.draft,
                            self.catalog.popularity)

    def recommend(self, histories: Sequence[Sequence[int | str]], K: int | None = None,
                  names: Sequence[str] | None = None) -> tuple[Recommendations, SpecStats]:
        """Top-K items per history. Ids in and out are the dataset's own (as its interaction files write
        them, see the module docstring); an unknown id is a DataError naming it and its history
        (`names[i]`, default "history i"). For internal ids use `recommend_internal`."""
        beams, stats = self.recommend_internal(self._internal(histories, names), K)
        items = self.catalog.trie.items(beams.sids)  # (U, K)
        return Recommendations(items=self._written(items), internal=items, scores=beams.scores, beams=beams), stats

    def _internal(self, histories: Sequence[Sequence[int | str]], names: Sequence[str] | None) -> list[list[int]]:
        """Histories of the dataset's own ids -> internal ids; an unknown id is a DataError naming `names[i]`."""
        ids = self.catalog.data.file_ids()
        names = names if names is not None else [f"history {i}" for i in range(len(histories))]
        if len(names) != len(histories):
            raise ValueError(f"{len(names)} names for {len(histories)} histories")
        return [ids.to_internal(h, where=n) for h, n in zip(histories, names)]

    def _written(self, items: torch.Tensor) -> list[list[int | str]]:
        """(U, n) internal item ids (-1: none) -> per row the dataset's own ids of its items, in order."""
        ids = self.catalog.data.file_ids()
        return [[ids.to_file(i) for i in row if i >= 0] for row in items.tolist()]

    @torch.no_grad()
    def recommend_internal(self, histories: Sequence[Sequence[int]], K: int | None = None) -> tuple[BeamResult, SpecStats]:
        """Top-K SID rows per history of internal item ids (0-based index rows, as `SplitData` holds
        them), rows in input order, and decoding statistics. `catalog.trie.items(result.sids)` maps
        the SID rows to internal item ids, one item each. With cfg.exclude_history no list holds an item
        of its (whole) history."""
        return decode_users(self.engine(K), self.catalog, histories, self.cfg.batch_size, self.cfg.exclude_history)

    def evaluate(self, examples: Sequence[Example], K: int | None = None, ks: Sequence[int] = DEFAULT_KS) -> dict:
        """Recall@k / NDCG@k (k <= K, default cfg.K) of the top-K lists of `examples`, and the decoding statistics."""
        K = K or self.cfg.K
        res, stats = self.recommend_internal([e.history for e in examples], K)
        metrics = ranking_metrics(res.sids.tolist(), target_sids(self.catalog.trie, examples), [k for k in ks if k <= K])
        return {**metrics, "users": len(examples), **stats.summary()}

    def list_engine(self, M: int) -> SpecEngine:
        """The engine of greedy lists of M items: K = 1 under `ItemList`, this recommender's draft (greedy tree
        speculation, cfg.tree an explicit shape) or none (plain greedy). cfg.eos does not apply: a list
        scores every item's <eos> itself."""
        return build_engine(self.target, ItemList(self.catalog.trie, M), replace(self.cfg, K=1, eos=False), self.draft,
                            self.catalog.popularity)

    def recommend_list(self, histories: Sequence[Sequence[int | str]], M: int = 10,
                       names: Sequence[str] | None = None) -> tuple[ItemLists, SpecStats]:
        """One greedy list of M distinct items per history, in generated order. Ids in and out are the
        dataset's own, as in `recommend` (an unknown id is a DataError naming its history)."""
        res, stats = self.recommend_list_internal(self._internal(histories, names), M)
        items = self.catalog.trie.items(res.sids[:, 0])  # (U, M)
        return ItemLists(items=self._written(items), internal=items, scores=res.scores[:, 0], lists=res), stats

    @torch.no_grad()
    def recommend_list_internal(self, histories: Sequence[Sequence[int]], M: int = 10) -> tuple[BeamResult, SpecStats]:
        """Greedy lists of internal item ids' histories: SID rows (U, 1, M) in generated order (-1 where a
        user may get fewer), tokens (U, 1, M * (L + 1)), scores (U, 1); batches of cfg.batch_size users.
        With cfg.exclude_history no list holds an item of its (whole) history."""
        return decode_users(self.list_engine(M), self.catalog, histories, self.cfg.batch_size, self.cfg.exclude_history)

    def evaluate_list(self, examples: Sequence[Example], M: int = 10, split: str = "test", n_boot: int = 1000,
                      seed: int = 0) -> list[dict]:
        """Recall@M / NDCG@M, with bootstrap intervals, of the greedy lists of `examples` (row "greedy-list",
        with the decoding statistics) beside the target's own top-M beam search (row "beam": K = M, no
        draft): `evaluation.listwise` rows."""
        hist = [e.history for e in examples]
        lists, stats = self.recommend_list_internal(hist, M)
        beams, _ = replace(self, draft=None).recommend_internal(hist, M)
        rows = listwise_rows(lists.sids[:, 0].tolist(), beams.sids.tolist(), target_sids(self.catalog.trie, examples),
                             M, split, n_boot, seed)
        s, common = stats.summary(), {"exclude_history": self.cfg.exclude_history}
        rows[0].update(common, speculative=self.draft is not None, verify=self.cfg.verify,
                       target_calls=round(s["target_calls"], 4), accepted_levels=round(s["accepted_levels"], 4))
        rows[1].update(common, K=M, eos=self.cfg.eos)
        return rows

    def with_config(self, **changes) -> "Recommender":
        return replace(self, cfg=self.cfg.replace(**changes))


__all__ = ["Recommender", "Recommendations", "ItemLists", "HISTORY_LEN"]
