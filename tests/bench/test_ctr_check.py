"""bench/ctr_check.py runs end to end on a tiny catalogue it is handed as files (interactions, two knowledge
JSON-lines files), and writes the rows its docstring names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_ctr_check_writes_arm_difference_and_agreement_rows(tmp_path):
    rng = np.random.default_rng(0)
    inter = {str(u): (u % 3 * 10 + rng.permutation(10)[:6]).tolist() for u in range(60)}
    (tmp_path / "Toy.inter.json").write_text(json.dumps(inter))
    words = ("stapler", "paper", "ink")
    for name, extra in (("a", ""), ("b", " blue")):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for i in range(30):
                f.write(json.dumps({"item": i, "text": f"{words[i // 10]} item {i}{extra if i % 2 else ''}"}) + "\n")
    out = tmp_path / "ctr.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "ctr_check.py"), "--data", str(tmp_path),
                          "--a", str(tmp_path / "a.jsonl"), "--b", str(tmp_path / "b.jsonl"), "--seeds", "0,1",
                          "--epochs", "1", "--n-boot", "20", "--hash-dim", "64", "--out", str(out)],
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = {r["arm"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"greedy", "relaxed", "none", "relaxed-greedy", "greedy-none", "relaxed-none", "agreement"}
    assert rows["agreement"]["share_differing"] == 0.5 and rows["greedy"]["users"] == 60
    assert len(rows["relaxed-greedy"]["t_ci"]) == 2 and len(rows["relaxed-greedy"]["auc_diff_per_seed"]) == 2
