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
from recspec.data.exclusion import history_rows
from recspec.data.vocab import build_prompts
from recspec.decoding.beam_search import BeamResult
from recspec.decoding.drafters import TRIE, make_drafter
from recspec.decoding.engine import SpecEngine
from recspec.decoding.stats import SpecStats
from recspec.decoding.tree_shape import TreeShape, no_tree, shape_for
from recspec.evaluation.evaluate import length_batches, target_sids
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
        return shape_for(self.cfg, self.catalog.trie, K, self.device) if self.draft is not None else None

    def _engine(self, K: int) -> SpecEngine:
        trie = self.catalog.trie.to(self.device)
        shape = self.tree_shape(K) or no_tree(K)
        drafter = make_drafter(self.draft, trie, shape.N, shape.expand,
                               self.catalog.popularity) if self.draft is not None else None
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        return SpecEngine(self.target, drafter, trie, K=K, N=shape.N, gamma=shape.gamma,
                          verify=self.cfg.verify, generator=gen, depths=shape.depths,
                          widths=shape.widths, temperature=self.cfg.temperature, eos=self.cfg.eos)

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
        K = K or self.cfg.K
        engine, stats = self._engine(K), SpecStats()
        U, L = len(histories), self.catalog.trie.num_levels
        out = BeamResult(torch.full((U, K), -1), torch.full((U, K), float("-inf")), torch.zeros(U, K, L, dtype=torch.long))
        for users in length_batches(histories, self.cfg.batch_size):
            prompts = build_prompts(self.catalog.vocab, self.catalog.index, [histories[i] for i in users],
                                    where="history").to(self.device)
            exclude = history_rows(engine.trie, [histories[i] for i in users]) if self.cfg.exclude_history else None
            res, st = engine.run(prompts, exclude=exclude)
            rows = torch.tensor(users)
            out.sids[rows], out.scores[rows], out.codes[rows] = res.sids.cpu(), res.scores.cpu(), res.codes.cpu()
            stats = stats.merge(st)
        return out, stats

    def evaluate(self, examples: Sequence[Example], K: int = 20, ks: Sequence[int] = DEFAULT_KS) -> dict:
        res, stats = self.recommend_internal([e.history for e in examples], K)
        metrics = ranking_metrics(res.sids.tolist(), target_sids(self.catalog.trie, examples), [k for k in ks if k <= K])
        return {**metrics, "users": len(examples), **{k: v for k, v in stats.summary().items() if k != "times"}}

    def with_config(self, **changes) -> "Recommender":
        return replace(self, cfg=replace(self.cfg, **changes))


__all__ = ["Recommender", "Recommendations", "HISTORY_LEN"]
