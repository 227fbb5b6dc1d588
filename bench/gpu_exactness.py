"""Strict speculative beam search equals AR beam search on the GPU, in true fp32 (TF32 off): graph-replayed
and compiled rounds, the benchmark's tree shapes, user by user.

    PYTHONPATH=src python bench/gpu_exactness.py --data .data/beauty --out $OUT

Trains a small target and draft on the GPU (fp32), then decodes test users with AR and strict speculative
beam search through the same engine paths the benchmark times. Writes gpu_exactness.json under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import DecodeConfig, ModelConfig, TrainConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.evaluation.bench import BenchConfig, count_mismatches, engine_call, make_engine, time_calls  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.models.hf import load_for_inference  # noqa: E402
from recspec.training.train import train  # noqa: E402

TARGET = dict(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=1376)
DRAFT = dict(hidden_size=128, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=344)
# (label, K, batch, users, DecodeConfig fields): the benchmark's batch-1 tree (auto: from the catalogue's
# trie and K) and its batch-64 tree
CASES = [
    ("b1-auto", 10, 1, 400, dict()),
    ("b1-auto-compiled", 10, 1, 400, dict(compile=True)),
    ("b1-N40", 20, 1, 400, dict(draft_beams=40, gamma=3)),
    ("b32-N40", 10, 32, 1024, dict(draft_beams=40, gamma=3)),
]


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def trained(cat, shape, out, steps, seed) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(ModelConfig(vocab_size=cat.vocab.size, max_positions=256, **shape)).to("cuda")
    cfg = TrainConfig(epochs=20, batch_size=128, lr=2e-3, warmup_steps=50, eval_users=200, max_steps=steps)
    res = train(model, cat.data, cat.index, cat.vocab, cat.trie, cfg, out, progress=False)
    log("trained", out, res.steps, "steps", round(res.best_recall10, 4))
    return load_for_inference(res.checkpoint, "cuda", "fp32")


@contextlib.contextmanager
def true_fp32():
    """TF32 off inside (it rounds fp32 matmul inputs to 10 mantissa bits), the previous settings after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def exactness(target, draft, cat, examples, K: int, batch: int, users: int, cfg: BenchConfig, device="cuda") -> dict:
    """AR vs strict speculative beam search through the engine path `cfg` sets, user by user: users whose
    lists differ, of them within 1e-4 at the first differing rank, the largest score gap, target calls."""
    batches = [list(range(s, s + batch)) for s in range(0, users, batch)]
    runs = {m: time_calls(engine_call(make_engine(m, target, draft, cat, K, cfg, batch), cat, examples, device),
                          batches, 2, device) for m in ("ar", "spec-strict")}
    diff, ties = count_mismatches(runs["ar"], runs["spec-strict"], 1e-4)
    gap = max(abs(a - b) for x, y in zip(runs["ar"].scores, runs["spec-strict"].scores) for a, b in zip(x, y)
              if abs(a) != float("inf"))
    return {"users": len(runs["ar"].sids), "mismatches": diff, "mismatches_ties_1e-4": ties, "max_score_diff": gap,
            "target_calls": round(runs["spec-strict"].stats.summary()["target_calls"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--target-steps", type=int, default=600, help="seeded optimiser steps (no clock)")
    ap.add_argument("--draft-steps", type=int, default=600)
    args = ap.parse_args()
    cat = open_catalog(args.data)
    test = list(cat.data.test)
    target = trained(cat, TARGET, "/tmp/rx/target", args.target_steps, 0)
    draft = trained(cat, DRAFT, "/tmp/rx/draft", args.draft_steps, 1)
    rows = []
    for label, K, batch, users, over in CASES:
        with true_fp32():
            cfg = BenchConfig(decode=DecodeConfig().replace(cuda_graphs=True, **over))
            res = exactness(target, draft, cat, test, K, batch, users, cfg)
        rows.append({"task": "topk-exactness", "case": label, "mode": "spec-strict", "K": K, "batch": batch,
                     "compiled": bool(over.get("compile")), **res})
        log(rows[-1])
    write_results(rows, os.path.join(args.out, "gpu_exactness.json"), "cuda",
                  command="PYTHONPATH=src python3 " + " ".join(sys.argv),
                  extra={"precision": "fp32, TF32 off", "target_shape": TARGET, "draft_shape": DRAFT})
    print(f"{'case':20s} {'K':>3s} {'b':>3s} {'users':>5s} {'mis':>4s} {'ties':>4s} {'max|ds|':>9s} {'calls':>5s}")
    for r in rows:
        print(f"{r['case']:20s} {r['K']:3d} {r['batch']:3d} {r['users']:5d} {r['mismatches']:4d} "
              f"{r['mismatches_ties_1e-4']:4d} {r['max_score_diff']:9.2e} {r['target_calls']:5.2f}")


if __name__ == "__main__":
    main()
