"""bench/listwise_retrieval.py runs end to end on Beauty at a smoke size (a tiny target, a few seeded steps,
few users) and writes the rows its docstring names: every pool at batch 1 and 16, no list differing from
plain greedy, and the plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_listwise_retrieval_writes_every_pool_exactly(shared_datasets, tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "listwise_retrieval.py"),
                          "--data", str(shared_datasets / "beauty"), "--out", str(tmp_path), "--target", "tiny",
                          "--target-steps", "5", "--eval-users", "16", "--single-users", "2", "--pool-users", "40",
                          "--warmup", "0"],
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads((tmp_path / "listwise_retrieval_beauty_cpu.json").read_text())
    assert {"device", "command", "date", "rows"} <= set(doc)
    rows = doc["rows"]
    assert {(r["pool"], r["batch"]) for r in rows} == {(p, b) for p in ("none", "global", "kmeans", "random")
                                                       for b in (1, 16)}
    for r in rows:
        assert r["task"] == "listwise-retrieval" and r["mode"] == "greedy" and r["mismatches"] == 0
        assert {"tau", "retrieval_ms", "speedup_vs_ar", "pool_size", "recall@10_ci", "ndcg@10_ci"} <= set(r)
    spec = [r for r in rows if r["pool"] != "none"]
    assert all(r["tau"] >= 1.0 and r["pool_size"] > 0 for r in spec)
    assert sum(r["pool_lists"][0] for r in spec if r["pool"] == "global" and r["batch"] == 1) == 40
    assert (tmp_path / "listwise_retrieval_beauty_cpu.png").is_file()
