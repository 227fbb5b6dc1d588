"""Quality rows, paired differences and the gate, on hand-built rankings."""

from __future__ import annotations

import pytest

from recspec.evaluation.quality import format_quality, quality_gate, quality_rows

U = 200
TARGETS = [{u % 50} for u in range(U)]  # each user's one ground-truth item


def _ranked(hit_users: int, at_rank: int) -> list[list[int]]:
    """The first `hit_users` users get their item at rank `at_rank` (0-based) of 10; the rest none."""
    out = []
    for u in range(U):
        row = [1000 + j for j in range(10)]
        if u < hit_users:
            row[at_rank] = u % 50
        out.append(row)
    return out


def test_rows_carry_intervals_and_the_target_comes_first():
    rows = quality_rows({"popularity": _ranked(20, 5), "target": _ranked(120, 0)}, TARGETS)
    assert [r["model"] for r in rows] == ["target", "popularity"]
    t, p = rows
    assert t["recall@10"] == pytest.approx(0.6) and p["recall@10"] == pytest.approx(0.1)
    for r in rows:
        lo, hi = r["recall@10_ci"]
        assert lo < r["recall@10"] < hi and hi - lo < 0.3
        assert r["gate"] is True
    diff, lo, hi = t["recall@10_vs_popularity"]
    assert diff == pytest.approx(0.5) and 0 < lo < diff < hi
    assert "better than popularity on recall@10" in t["claims"]


def test_the_gate_needs_both_metrics_at_least_the_best_baselines():
    # same hits as the transition baseline, but lower in the list: recall ties (passes), NDCG is lower (fails)
    rows = quality_rows({"target": _ranked(60, 9), "transition": _ranked(60, 0), "popularity": _ranked(5, 0)},
                        TARGETS)
    gate = quality_gate(rows)
    assert not gate.passed and gate.best == {"recall@10": "transition", "ndcg@10": "transition"}
    assert gate.margins["recall@10"] == 0 and gate.margins["ndcg@10"] < 0
    assert all(r["gate"] is False for r in rows)
    assert rows[0]["claims"] == ["worse than transition on ndcg@10", "better than popularity on recall@10",
                                 "better than popularity on ndcg@10"]
    assert format_quality(rows)[-1].startswith("gate: FAIL")


def test_identical_lists_claim_nothing():
    rows = quality_rows({"target": _ranked(60, 3), "sasrec": _ranked(60, 3)}, TARGETS)
    assert rows[0]["claims"] == [] and rows[0]["gate"] is True
    assert rows[0]["recall@10_vs_sasrec"] == [0.0, 0.0, 0.0]


def test_target_variants_are_not_baselines():
    rows = quality_rows({"target": _ranked(60, 0), "target-bf16": _ranked(100, 0), "popularity": _ranked(30, 0)},
                        TARGETS)
    assert [r["model"] for r in rows] == ["target", "target-bf16", "popularity"]
    assert quality_gate(rows).best == {"recall@10": "popularity", "ndcg@10": "popularity"}
    assert rows[0]["gate"] is True and not any("target-bf16" in k for k in rows[0])
