"""Where a speculative round's time goes on the GPU: each phase of one round captured as its own CUDA
graph and replayed (median of CUDA-event timings), plus kernels per phase from one eager round.

A round's cost under graph replay depends only on its shapes (first or not, tree depth d, N, K,
batch), not on the weights, so random bf16 models of the benchmark's shapes suffice.

    PYTHONPATH=src python bench/gpu_round_profile.py --data .data/beauty --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import ModelConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.data.datasets import HISTORY_LEN  # noqa: E402
from recspec.data.vocab import build_prompts  # noqa: E402
from recspec.decoding import spec_beam as SB  # noqa: E402
from recspec.decoding.drafters.draft_model import DraftModelDrafter  # noqa: E402
from recspec.decoding.engine import SpecEngine  # noqa: E402
from recspec.decoding.stats import PhaseClock  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402

TARGET = dict(hidden_size=2560, num_layers=8, num_heads=20, num_kv_heads=4, intermediate_size=6912)
DRAFT = dict(hidden_size=512, num_layers=2, num_heads=8, num_kv_heads=4, intermediate_size=1376)


def replay_ms(fn, reps: int = 50) -> float:
    """Capture fn as a CUDA graph (after a warm-up on a side stream), replay it, median ms."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts[5:])


def kernels(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in p.events() if str(e.device_type).endswith("CUDA"))


def profile_round(eng: SpecEngine, first: bool, d: int) -> dict:
    """Phases of one round from the engine's current state: draft, target pass, verify, commit
    (an engine without a drafter is AR: no draft, no tree, nothing to commit)."""
    lay, beams = eng.lay, eng.beams
    frontier = SB._frontier(beams, lay, not first)
    box = {}

    def draft():
        box["tree"] = eng.drafter.propose(frontier, d, False, None) if d else None

    def score():
        box["lp"] = SB._score(eng.target, eng.cache, eng.prompts, eng.keys, lay, frontier, box["tree"])

    def verify():
        box["v"] = SB._verify(eng.trie, lay, beams, *box["lp"], box["tree"], lay.K, "strict", None, False)

    def commit():
        eng.cache.copy_slots(box["v"][1].copy_src, box["v"][1].copy_dst)
        eng.drafter.observe(box["v"][1])

    def whole():
        eng._round(first, d, PhaseClock())

    for fn in (draft, score, verify):  # fills box for the phases that read earlier ones
        fn()
    phases = [("draft", draft), ("target_pass", score), ("verify", verify), ("commit", commit)]
    out = {"first": first, "d": d, "target_tokens": (eng.prompts.tokens.shape[1] if first else lay.K) + d * lay.N}
    for name, fn in phases + [("round", whole)]:
        timed = eng.drafter is not None or name not in ("draft", "commit")
        out[name + "_ms"] = round(replay_ms(fn), 4) if timed else 0.0
        out[name + "_kernels"] = kernels(fn) if timed else 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--N", type=int, nargs="+", default=[16, 40, 128])
    ap.add_argument("--cpu-smoke", action="store_true", help="check the script's logic on the CPU: eager, tiny models")
    args = ap.parse_args()
    dev = "cpu" if args.cpu_smoke else "cuda"
    if args.cpu_smoke:
        global replay_ms, kernels, TARGET, DRAFT
        replay_ms = lambda fn, reps=3: (fn(), 0.0)[1]  # noqa: E731
        kernels = lambda fn: 0  # noqa: E731
        TARGET = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
        DRAFT = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    torch.manual_seed(0)
    cat = open_catalog(args.data)
    trie = cat.trie.to(dev)
    V = cat.vocab.size
    dtype = torch.float32 if args.cpu_smoke else torch.bfloat16
    target = Decoder(ModelConfig(vocab_size=V, **TARGET)).to(dev).to(dtype).eval().fuse_for_inference()
    draft = Decoder(ModelConfig(vocab_size=V, **DRAFT)).to(dev).to(dtype).eval().fuse_for_inference()
    prompts = build_prompts(cat.vocab, cat.index, [list(cat.data.test)[0].history]).to(dev)
    width = 1 + HISTORY_LEN * (trie.num_levels + 1)
    rows = []
    with torch.no_grad():
        ar = SpecEngine(target, None, trie, K=args.K, N=args.K, gamma=0, prompt_width=width, cuda_graphs=not args.cpu_smoke)
        ar._load(prompts)
        ar._round(True, 0, PhaseClock())
        rows.append({"mode": "ar", "N": args.K, **profile_round(ar, False, 0)})
        for N in args.N:
            for d in (1, 2, 4):
                eng = SpecEngine(target, DraftModelDrafter(draft, trie, N), trie, K=args.K, N=N, gamma=4, prompt_width=width, cuda_graphs=not args.cpu_smoke)
                eng._load(prompts)
                r1 = profile_round(eng, True, d)
                eng._round(True, d, PhaseClock())
                r2 = profile_round(eng, False, min(d, 2))
                rows += [{"mode": "spec-strict", "N": N, **r1}, {"mode": "spec-strict", "N": N, **r2}]
                print(rows[-2], "\n", rows[-1], flush=True)
    path = os.path.join(args.out, "gpu_round_profile.json")
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "K": args.K, "target": TARGET, "draft": DRAFT, "rows": rows}, f, indent=1)
    print(f"{'mode':12s} {'N':>4s} {'first':>5s} {'d':>2s} {'tok':>4s} {'draft':>7s} {'target':>7s} {'verify':>7s} "
          f"{'commit':>7s} {'round':>7s}   kernels d/t/v/c")
    for r in rows:
        print(f"{r['mode']:12s} {r['N']:4d} {str(r['first']):>5s} {r['d']:2d} {r['target_tokens']:4d} {r['draft_ms']:7.3f} "
              f"{r['target_pass_ms']:7.3f} {r['verify_ms']:7.3f} {r['commit_ms']:7.3f} {r['round_ms']:7.3f}   "
              f"{r['draft_kernels']}/{r['target_pass_kernels']}/{r['verify_kernels']}/{r['commit_kernels']}")
    print("wrote", path)


if __name__ == "__main__":
    main()
