"""bench/gpu_gate_sweep.py runs end to end on the CPU on the tiny item corpus (two candidates, two steps each):
one row per candidate, per n-gram order on validation and per gate, and a selected model `load_text_lm` loads,
its temperature folded in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from item_corpus import write_item_json
from recspec.training.text_lm import load_text_lm

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_selects_by_validation_and_gates_once(tmp_path):
    data = write_item_json(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    args = ["--data", str(data), "--device", "cpu", "--budget", "4", "--evals", "1", "--batch-size", "8",
            "--candidates", "demo-d0.1,small-d0.3-tie", "--val-fraction", "0.3", "--orders", "2,3", "--threads", "1",
            "--out", str(tmp_path / "out")]
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_gate_sweep.py"), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"device", "command", "date", "rows"} <= set(doc)
    cands = [r for r in doc["rows"] if r["kind"] == "candidate"]
    assert [r["steps"] for r in cands] == [2, 2] and sum(r["selected"] for r in cands) == 1
    selected = next(r for r in cands if r["selected"])
    assert selected["val_loss_calibrated"] == min(r["val_loss_calibrated"] for r in cands)
    assert all(r["val_loss_calibrated"] <= r["val_loss"] + 1e-6 for r in cands)  # T = 1 is among those searched
    val = [r for r in doc["rows"] if r["kind"] == "ngram_validation"]
    chosen = next(r["order"] for r in val if r["chosen"])
    assert chosen == min(val, key=lambda r: r["val_ppl"])["order"]
    gates = [r for r in doc["rows"] if r["kind"] == "gate"]
    assert [(r["ngram_order"], r["ngram_fit"]) for r in gates] == [(2, "train"), (3, "train"), (chosen, "old")]
    assert all(r["passed"] == (r["lm_ppl"] < r["ngram_ppl"]) and r["lo"] <= r["hi"] for r in gates)
    assert len({r["lm_ppl"] for r in gates}) == 1  # one model, scored once
    model, _ = load_text_lm(tmp_path / "out" / "model")
    assert model.cfg.tie_embeddings == selected["tie"] and model.cfg.num_layers == (2 if selected["size"] == "demo" else 4)
    norm = model.model.norm.weight  # initialised to ones, then trained 2 steps: the fold dominates
    assert abs(float(norm.detach().mean()) * selected["temperature"] - 1.0) < 0.05
    assert "PASS" in res.stdout or "FAIL" in res.stdout
