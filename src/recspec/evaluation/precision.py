"""Do a model's bf16 and fp32 top-K lists agree? Each differing list is audited by fp32 re-scoring.

A user's lists differ when any rank differs. A differing list counts as a tie when, at the first
differing rank, the fp32 re-scores of the two items differ by no more than the bf16 rounding measured
on that user: the largest |beam score - fp32 re-score| over the user's two lists (`bench.audit_ties`
with factor 1). The largest such rounding over all differing users is reported with the counts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from recspec.data.catalog import Catalog
from recspec.data.datasets import Example
from recspec.evaluation.bench import ModeRun, audit_ties
from recspec.evaluation.evaluate import recommend
from recspec.models.decoder import Decoder


def bf16_copy(model: Decoder) -> Decoder:
    """A bf16 inference copy of a model (`Decoder.bf16_inference`), as the benchmarks decode."""
    return copy.deepcopy(model).bf16_inference()


@torch.no_grad()
def precision_agreement(model32: Decoder, model16: Decoder, catalog: Catalog, examples: Sequence[Example], K: int,
                        batch_size: int = 256, device: str | torch.device = "cpu") -> dict:
    """Top-K lists of every example's user under the fp32 and the bf16 model -> {"users", "same",
    "agree" (share), "differ", "differ_ties", "differ_real", "max_rounding", "max_gap"}."""
    histories = [e.history for e in examples]
    runs = []
    for m in (model32.eval(), model16.eval()):
        res = recommend(m, catalog.trie, catalog.vocab, catalog.index, histories, K, batch_size, device)
        runs.append(ModeRun(sids=res.sids.tolist(), scores=res.scores.tolist()))
    a, b = runs
    same = sum(x == y for x, y in zip(a.sids, b.sids))
    ties, max_gap, max_noise = audit_ties(model32, catalog, examples, a, b, device, factor=1.0)
    differ = len(examples) - same
    return {"users": len(examples), "same": same, "agree": same / max(1, len(examples)), "differ": differ,
            "differ_ties": ties, "differ_real": differ - ties, "max_rounding": max_noise, "max_gap": max_gap}
