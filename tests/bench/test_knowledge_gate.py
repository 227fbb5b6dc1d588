"""bench/knowledge_gate.py runs end to end on the tiny item corpus (a few steps of the tiny preset) and writes
one row per n-gram order, with the gate's fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from item_corpus import write_item_json

ROOT = Path(__file__).resolve().parents[2]


def test_knowledge_gate_script_writes_a_row_per_order(tmp_path):
    data = write_item_json(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    args = ["--data", str(data), "--size", "tiny", "--steps", "5", "--warmup", "2", "--batch-size", "8",
            "--orders", "2,3", "--threads", "1", "--out", str(tmp_path / "out")]
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "knowledge_gate.py"), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "knowledge_gate.json").read_text())["rows"]
    assert [r["ngram_order"] for r in rows] == [2, 3] and all(r["steps"] == 5 for r in rows)
    assert all(r["passed"] == (r["lm_ppl"] < r["ngram_ppl"]) and r["lo"] <= r["hi"] for r in rows)
    assert rows[0]["lm_ppl"] == rows[1]["lm_ppl"] and rows[0]["items"] > 0
    assert (tmp_path / "out" / "lm" / "last" / "model.safetensors").is_file()
