"""List-wise evaluation: the target's greedy list of M items beside its top-M beam search, on the same users.

A greedy list is a ranking in generated order: item 1 is ranked first. Both are scored with the metrics of
`metrics.py` at k = M (Recall@M, NDCG@M over the users with ground truth) and a percentile-bootstrap
interval over users (`intervals.py`); the greedy row also carries, per metric m, `m_vs_beam` = [diff, lo,
hi]: greedy minus beam, paired bootstrap over the same users.

Rows (results JSON, `task: "listwise"`), for M = 10:
    {"task": "listwise", "mode": "greedy-list" | "beam", "M": 10, "split": ..., "users": U,
     "recall@10": mean, "recall@10_ci": [lo, hi], "ndcg@10": ..., "ndcg@10_ci": [...], ...}
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from recspec.evaluation.intervals import bootstrap_ci, paired_difference
from recspec.evaluation.metrics import per_user_metrics

LIST_MODE = "greedy-list"  # the greedy list of M items (ItemList, K = 1)
BEAM_MODE = "beam"  # the target's top-M beam search (K = M beams)


def interval_metrics(ranked: Sequence[Sequence[int]], targets: Sequence[Collection[int]], k: int,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """ranked (U, >= k) ids best first, targets U ground-truth id sets -> {"recall@k": mean,
    "recall@k_ci": [lo, hi], "ndcg@k": ..., "ndcg@k_ci": ...}: the means of `metrics.ranking_metrics`
    and their `level` bootstrap intervals over the users with ground truth."""
    out: dict = {}
    for name, values in per_user_metrics(ranked, targets, k).items():
        out[name] = round(float(values.mean()), 6) if values.size else float("nan")
        out[f"{name}_ci"] = [round(x, 6) for x in bootstrap_ci(values, n_boot, seed, level)] if values.size else None
    return out


def listwise_rows(lists: Sequence[Sequence[int]], beams: Sequence[Sequence[int]], targets: Sequence[Collection[int]],
                  M: int, split: str = "test", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """lists (U, M) each user's greedy list in generated order, beams (U, >= M) her top-M beam search (ids
    comparable with `targets`, e.g. SID rows; -1 never matches) -> [greedy-list row, beam row] (module
    docstring), the greedy row with its paired differences against beam."""
    rows = []
    for mode, ranked in ((LIST_MODE, lists), (BEAM_MODE, beams)):
        rows.append({"task": "listwise", "mode": mode, "M": M, "split": split, "users": len(targets),
                     **interval_metrics(ranked, targets, M, n_boot, seed)})
    greedy, beam = per_user_metrics(lists, targets, M), per_user_metrics(beams, targets, M)
    for name in greedy:
        if greedy[name].size:
            d = paired_difference(greedy[name], beam[name], n_boot, seed)
            rows[0][f"{name}_vs_beam"] = [round(d.diff, 6), round(d.lo, 6), round(d.hi, 6)]
    return rows
