"""The GPU benchmark scripts run end to end on the CPU (--cpu-smoke: tiny models, eager rounds), so a
broken script is caught here rather than after a GPU machine has been started for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "decoding"))

from spec_checks import covered, path  # noqa: E402


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_gpu_bench_runs_every_mode_and_writes_rows(shared_datasets, tmp_path):
    res = _run("gpu_bench.py", "--cpu-smoke", "--allow-ungated", "--data", str(shared_datasets / "beauty"), "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_topk.json").read_text())
    assert {"device", "command", "date", "rows"} <= set(doc) and all(r["gate"] is False for r in doc["rows"])
    modes = {(r["mode"], r["batch"]) for r in doc["rows"]}
    assert modes == {(m, b) for m in ("ar", "spec-strict", "spec-relaxed", "hf") for b in (1, 4)}  # 4: smoke's big batch
    strict = [r for r in doc["rows"] if r["mode"] == "spec-strict"]
    # fp32 on the CPU: exact, up to near-ties of the smoke's 40-step models (nearly flat, so two candidates can
    # differ by an ulp; the tree pass and the AR pass round differently). Every differing list must be one the
    # script's fp32 audit re-scores as such a tie.
    assert all(r["mismatches"] == r.get("mismatches_ties_fp32", 0) for r in strict), strict
    assert {r["drafter"] for r in strict if r["batch"] == 1} == {"trie", "ce"}
    trie = next(r for r in strict if r["batch"] == 1 and r["drafter"] == "trie")
    from recspec.data.catalog import open_catalog
    from recspec.decoding.tree_shape import auto_shape, default_tree_budget

    # the batch-1 tree is the catalogue's auto shape for a GPU; where its plan covers every level it drafts, the
    # trie drafter's tree is accepted whatever the smoke's models learned: the plan's call count, exactly
    trie_tensors = open_catalog(str(shared_datasets / "beauty")).trie
    shape = auto_shape(trie_tensors, 10, default_tree_budget("cuda"))
    assert trie["widths"] == "/".join(map(str, shape.widths))
    codes, L = trie_tensors.sids.numpy(), trie_tensors.num_levels
    if covered(shape, codes, 10):
        assert trie["target_calls"] == len(path(shape, L))
    else:  # the first call accepts a whole level 1 at least: fewer calls than AR
        assert trie["target_calls"] < next(r["target_calls"] for r in doc["rows"] if r["mode"] == "ar" and r["batch"] == 1)
    assert set(doc["fp32_exactness"]) == {"trie", "ce"}
    assert all(v["mismatches"] == 0 for v in doc["fp32_exactness"].values())


def test_round_profiler_runs(shared_datasets, tmp_path):
    res = _run("gpu_round_profile.py", "--cpu-smoke", "--N", "16", "--widths", "91,24,16", "--phases",
               "--data", str(shared_datasets / "beauty"), "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_round_profile.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"ar", "spec-strict"} and any(r.get("widths") for r in rows)


def test_tree_sweep_times_ar_then_each_tree(shared_datasets, make_decoder):
    sys.path.insert(0, str(ROOT / "bench"))
    from tree_sweep import parse_grid, sweep

    from recspec.data.catalog import open_catalog

    cat = open_catalog(str(shared_datasets / "beauty"))
    target = make_decoder(cat.vocab, seed=1)
    grid = parse_grid("auto,20:1/2:1:20/12")
    rows = sweep(target, cat, "trie", list(cat.data.test), 10, 1, grid, users=2, warmup=0, device="cpu", graphs=False)
    assert [r["mode"] for r in rows] == ["ar", "spec-strict", "spec-strict"]
    assert [r["tree"] for r in rows[1:]] == ["auto", "given"]
    assert (rows[2]["draft_beams"], rows[2]["depths"], rows[2]["widths"]) == (20, "1/2", "20/12")
    assert all(r["mismatches"] == 0 for r in rows[1:])  # strict: AR's lists


def test_greedy_bench_runs_both_tasks_and_is_exact(shared_datasets, tmp_path):
    """bench/gpu_greedy.py on the CPU: lists (Beauty) and text (Office), plain greedy and greedy speculation
    (draft model, n-gram) exact against plain greedy in fp32; the top-k/beta rule's rows in bf16 only;
    ratios named against plain greedy."""
    res = _run("gpu_greedy.py", "--cpu-smoke", "--beauty", str(shared_datasets / "beauty"), "--office",
               str(shared_datasets / "office"), "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_greedy.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r]
    exact = [r for r in rows if r["mode"] != "spec-topk-beta"]
    assert {(r["task"], r["precision"], r["mode"], r.get("drafter")) for r in exact} == \
        {(t, p, "greedy", None) for t in ("list", "text") for p in ("fp32", "bf16")} | \
        {(t, p, "spec-greedy", d) for t in ("list", "text") for p in ("fp32", "bf16") for d in ("draft-model", "ngram")}
    assert all(r["mismatches"] == 0 for r in exact if r["precision"] == "fp32")  # bf16 may round differently
    assert all(r["gate"] is False for r in rows)
    assert {r["precision"] for r in rows if r["mode"] == "spec-topk-beta"} == {"bf16"}
    assert all("speedup_vs_greedy" in r for r in rows if r["mode"] != "greedy")


def test_listwise_bench_runs_and_is_exact(shared_datasets, tmp_path):
    """bench/gpu_listwise.py on the CPU: the gate rows, the fp32 check of all four drafters (0 mismatching
    users), greedy and the four drafters timed at batch 1 and 16 with acceptance per depth, and a profile."""
    res = _run("gpu_listwise.py", "--cpu-smoke", "--data", str(shared_datasets / "beauty"), "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_listwise_beauty.json").read_text())["rows"]
    drafters = {"draft-model", "draft-model+pad", "feature-head", "feature-head+pad"}
    assert {r["model"] for r in rows if r["task"] == "quality"} >= {"target", "popularity", "transition"}
    checks = [r for r in rows if r.get("check") == "fp32-exact"]
    assert {r["drafter"] for r in checks} == drafters and all(r["mismatches"] == 0 for r in checks)
    spec = [r for r in rows if r.get("mode") == "spec"]
    assert {(r["drafter"], r["batch"]) for r in spec} == {(d, b) for d in drafters for b in (1, 16)}
    assert all("accept_d0" in r and "speedup_vs_ar" in r and "recall@10_ci" in r for r in spec)
    assert [r["drafter"] for r in rows if r.get("mode") == "profile"] and not [r for r in rows if "error" in r]
