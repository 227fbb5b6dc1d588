"""Quality tables: the target beside its baselines on the same users, with 95% bootstrap intervals, paired
differences and the quality gate.

Rows (results JSON, `task: "quality"`), one per model ("target", "popularity", "transition", "sasrec"):
    {"task": "quality", "model": ..., "split": ..., "users": U, "recall@k": mean, "recall@k_ci": [lo, hi],
     "ndcg@k": ..., "ndcg@k_ci": [...], ...}
Rows "target-<variant>" (e.g. the target's bf16 lists) are the target's too, never baselines. The
target's row also carries, per baseline b and metric m, `m_vs_b` = [diff, lo, hi] (target minus b,
paired bootstrap over the same users) and `gate`.

The gate: a target passes on a catalogue when its Recall@10 and NDCG@10 on the catalogue's users are at
least the best baseline's from the same command. A difference is claimed (`better` / `worse` in
`claims`) only where the paired interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recspec.evaluation.intervals import bootstrap_ci, paired_difference
from recspec.evaluation.metrics import per_user_metrics

GATE_K = 10  # the gate compares Recall@10 and NDCG@10
TARGET = "target"


@dataclass(frozen=True)
class Gate:
    passed: bool  # target >= the best baseline on both Recall@GATE_K and NDCG@GATE_K
    best: dict[str, str]  # metric -> the baseline with the highest value
    margins: dict[str, float]  # metric -> target minus that baseline


def per_user(ranked: Mapping[str, Sequence[Sequence[int]]], targets: Sequence[Collection[int]],
             ks: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    """model -> metric -> (U',) per-user values (users with ground truth), for every k in ks."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, lists in ranked.items():
        out[name] = {}
        for k in ks:
            out[name].update(per_user_metrics(lists, targets, k))
    return out


def quality_rows(ranked: Mapping[str, Sequence[Sequence[int]]], targets: Sequence[Collection[int]],
                 ks: Sequence[int] = (GATE_K,), split: str = "test", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """ranked: model -> (U, >= max(ks)) ids per user (SID rows, or any ids comparable with `targets`), the
    target under TARGET. -> one row per model, the target's first, with its paired differences and gate."""
    values = per_user(ranked, targets, ks)
    rows = []
    for name, metrics in values.items():
        row: dict = {"task": "quality", "model": name, "split": split, "users": len(targets)}
        for m, v in metrics.items():
            row[m] = round(float(v.mean()), 6)
            row[f"{m}_ci"] = [round(x, 6) for x in bootstrap_ci(v, n_boot, seed)]
        rows.append(row)
    if TARGET in values:
        target = next(r for r in rows if r["model"] == TARGET)
        claims = []
        for name in (n for n in values if is_baseline(n)):
            for m, v in values[TARGET].items():
                d = paired_difference(v, values[name][m], n_boot, seed)
                target[f"{m}_vs_{name}"] = [round(d.diff, 6), round(d.lo, 6), round(d.hi, 6)]
                if d.significant:
                    claims.append(f"{'better' if d.diff > 0 else 'worse'} than {name} on {m}")
        target["claims"] = claims
        if any(map(is_baseline, values)) and f"recall@{GATE_K}" in target:
            gate = quality_gate(rows)
            for r in rows:
                r["gate"] = gate.passed
    rows.sort(key=lambda r: is_baseline(r["model"]))
    return rows


def is_baseline(model: str) -> bool:
    """Rows named "target" or "target-<variant>" (e.g. "target-bf16") are the target's, every other a baseline's."""
    return not (model == TARGET or model.startswith(TARGET + "-"))


def quality_gate(rows: Sequence[dict], k: int = GATE_K) -> Gate:
    """The gate from quality rows of one command (the target's and at least one baseline's)."""
    target = next(r for r in rows if r["model"] == TARGET)
    baselines = [r for r in rows if is_baseline(r["model"])]
    if not baselines:
        raise ValueError("the quality gate needs at least one baseline row")
    best, margins = {}, {}
    for m in (f"recall@{k}", f"ndcg@{k}"):
        top = max(baselines, key=lambda r: r[m])
        best[m], margins[m] = top["model"], target[m] - top[m]
    return Gate(passed=all(v >= 0 for v in margins.values()), best=best, margins=margins)


def format_quality(rows: Sequence[dict], k: int = GATE_K) -> list[str]:
    """An 80-column table: model, Recall@k [CI], NDCG@k [CI]."""
    lines = [f"{'model':<12}{'Recall@' + str(k):>12} {'95% CI':<20}{'NDCG@' + str(k):>10} {'95% CI':<20}"]
    for r in rows:
        rc, nc = r[f"recall@{k}_ci"], r[f"ndcg@{k}_ci"]
        lines.append(f"{r['model']:<12}{r[f'recall@{k}']:>12.4f} [{rc[0]:.4f}, {rc[1]:.4f}]    "
                     f"{r[f'ndcg@{k}']:>10.4f} [{nc[0]:.4f}, {nc[1]:.4f}]")
    target = next((r for r in rows if r["model"] == TARGET), None)
    if target is not None and "gate" in target:
        lines.append(f"gate: {'pass' if target['gate'] else 'FAIL'}"
                     + (f"; significant: {', '.join(target['claims'])}" if target.get("claims") else ""))
    return lines
