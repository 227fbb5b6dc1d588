"""The Python API: a target (and optionally a draft) over a catalogue, recommending in batches.

    rec = Recommender.load("ml-100k", "runs/demo/target", index_dir="runs/demo")
    result, stats = rec.recommend([[12, 7, 301]], K=10)

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
from recspec.evaluation.evaluate import length_batches, target_sids
from recspec.evaluation.metrics import DEFAULT_KS, ranking_metrics
from recspec.models.decoder import Decoder
from recspec.models.hf import check_fits, load_checkpoint


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

    def _engine(self, K: int) -> SpecEngine:
        trie = self.catalog.trie.to(self.device)
        drafter = make_drafter(self.draft, trie, max(self.cfg.draft_beams, K), self.cfg.draft_expand,
                               self.catalog.popularity) if self.draft is not None else None
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        return SpecEngine(self.target, drafter, trie, K=K, N=max(self.cfg.draft_beams, K), gamma=self.cfg.gamma,
                          verify=self.cfg.verify, generator=gen, depths=self.cfg.depths,
                          widths=self.cfg.widths, temperature=self.cfg.temperature, eos=self.cfg.eos)

    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[int]], K: int | None = None) -> tuple[BeamResult, SpecStats]:
        """Top-K unique SIDs per history (rows in input order) and decoding statistics. With
        cfg.exclude_history no list holds an item of its (whole) history."""
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
        res, stats = self.recommend([e.history for e in examples], K)
        metrics = ranking_metrics(res.sids.tolist(), target_sids(self.catalog.trie, examples), [k for k in ks if k <= K])
        return {**metrics, "users": len(examples), **{k: v for k, v in stats.summary().items() if k != "times"}}

    def items_of(self, sid: int) -> tuple[int, ...]:
        return self.catalog.trie.sid_items[sid] if sid >= 0 else ()

    def with_config(self, **changes) -> "Recommender":
        return replace(self, cfg=replace(self.cfg, **changes))


__all__ = ["Recommender", "HISTORY_LEN"]
