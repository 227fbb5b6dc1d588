"""The Python API: a target (and optionally a draft) over a catalogue, recommending in batches.

    rec = Recommender.load("ml-100k", "runs/demo/target", index_dir="runs/demo")
    recs, stats = rec.recommend([[12, 7, 301]], K=10)   # ids as the dataset's files write them
    recs.items[0]                                       # 10 distinct items, the same kind of ids

Item ids at this edge are the dataset's own, as written in its interaction files: the numbers of
`sequential_*.txt` lines (1-based), LC-Rec `inter.json` ids (0-based), RecBole `.inter` item tokens
(strings; 7 and "7" are the same id). Internal ids (0-based rows of the SID index, what `SplitData`
and `Example` hold) are taken by `recommend_internal` only.

With a draft and `DecodeConfig(verify="strict")` the output is exactly the target's beam search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from recspec.config import DecodeConfig
from recspec.data.catalog import Catalog, open_catalog
from recspec.data.datasets import HISTORY_LEN, Example
from recspec.decoding.beam_search import BeamResult
from recspec.decoding.drafters import TRIE
from recspec.decoding.engine import SpecEngine, build_engine
from recspec.decoding.stats import SpecStats
from recspec.decoding.tree_shape import TreeShape, tree_shape
from recspec.evaluation.evaluate import decode_users, target_sids
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
        ids = self.catalog.data.file_ids()
        names = names if names is not None else [f"history {i}" for i in range(len(histories))]
        if len(names) != len(histories):
            raise ValueError(f"{len(names)} names for {len(histories)} histories")
        internal = [ids.to_internal(h, where=n) for h, n in zip(histories, names)]
        beams, stats = self.recommend_internal(internal, K)
        items = self.catalog.trie.items(beams.sids)  # (U, K)
        written = [[ids.to_file(i) for i in row if i >= 0] for row in items.tolist()]
        return Recommendations(items=written, internal=items, scores=beams.scores, beams=beams), stats

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

    def with_config(self, **changes) -> "Recommender":
        return replace(self, cfg=self.cfg.replace(**changes))


__all__ = ["Recommender", "Recommendations", "HISTORY_LEN"]
