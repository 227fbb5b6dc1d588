"""One-command GPU benchmark: train a >= 0.5B target and a small draft on Beauty, then time
transformers' generate, our AR beam search, speculative strict and relaxed, on the same users.

    PYTHONPATH=src python bench/gpu_bench.py --data .data/beauty --out $OUT

Prints a short table last and writes gpu_topk.json (rows as in bench/results) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from recspec.config import ModelConfig, TrainConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.data.vocab import build_prompts  # noqa: E402
from recspec.decoding.beam_search import beam_search  # noqa: E402
from recspec.evaluation.bench import BenchConfig, make_engine, run_bench  # noqa: E402
from recspec.evaluation.evaluate import evaluate  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.models.hf import load_checkpoint  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.training.train import train  # noqa: E402

# 1.24B parameters: LLaMA blocks, wide and shallow (8 layers of 3840). Kernel launches, not weight reads, set a
# decode step's time at this size: a compiled AR round is 1.17 ms against a 0.62 ms floor here, 0.77 ms against
# 0.27 ms for 8 layers of 2560 (556M) (bench/results/gpu_round_profile_h200_compiled.json)
TARGET = dict(hidden_size=3840, num_layers=8, num_heads=30, num_kv_heads=6, intermediate_size=10240)
DRAFT = dict(hidden_size=512, num_layers=2, num_heads=8, num_kv_heads=4, intermediate_size=1376)
DEV = "cuda"  # --cpu-smoke: "cpu", tiny models, eager rounds (checks the script before device time is spent)


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def train_model(cat, shape, out, cfg: TrainConfig, seed: int) -> tuple[Decoder, Decoder]:
    """fp32 training (TF32 matmuls). Not bf16 autocast: models trained under autocast here scored
    ~0 Recall@10 once evaluated outside it (bench/gpu_probe.py), fp32-trained ones do not.
    -> (bf16 fused inference copy, fp32 copy for audits)."""
    torch.manual_seed(seed)
    model = Decoder(ModelConfig(vocab_size=cat.vocab.size, max_positions=256, **shape)).to(DEV)
    res = train(model, cat.data, cat.index, cat.vocab, cat.trie, cfg, out, progress=False,
                on_log=lambda r: log(r) if r.get("event") == "eval" else None)
    log("trained", out, res)
    best32, _ = load_checkpoint(res.checkpoint, device=DEV)
    best32.eval()
    test = list(cat.data.test)[:1000]
    log("test (1000 users) fp32:", evaluate(best32, cat.trie, cat.vocab, cat.index, test, K=10, ks=(10,)))
    best = load_checkpoint(res.checkpoint, device=DEV)[0].to(torch.bfloat16).eval().fuse_for_inference()
    log("test (1000 users) bf16:", evaluate(best, cat.trie, cat.vocab, cat.index, test, K=10, ks=(10,)))
    return best, best32


def fp32_exactness(target32, draft32, cat, examples, K: int, users: int, N: int, gamma: int, expand: float,
                   depths: tuple[int, ...], widths: tuple[int, ...]) -> dict:
    """AR vs strict speculative beam search, both graph-replayed, in fp32 (TF32 off) on the GPU: lists must match."""
    from gpu_exactness import exactness, true_fp32

    cfg = BenchConfig(cuda_graphs=DEV == "cuda", draft_beams=N, gamma=gamma, draft_expand=expand, depths=depths, widths=widths)
    with true_fp32():
        return {"K": K, **exactness(target32, draft32, cat, examples, K, 1, users, cfg, DEV)}


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write counted); nan off the GPU."""
    if DEV != "cuda":
        return float("nan")
    x = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); y.copy_(x); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return 2 * x.numel() / statistics.median(ts)


def ar_step_ms(target, cat, examples, K: int, compile: bool = False) -> float:
    """Median time of one graph-replayed AR decode round (K tokens, batch 1); nan off the GPU."""
    if DEV != "cuda":
        return float("nan")
    eng = make_engine("ar", target, None, cat, K, BenchConfig(cuda_graphs=True, compile=compile), "cuda")
    prompts = build_prompts(cat.vocab, cat.index, [examples[0].history]).to("cuda")
    eng.run(prompts)  # captures (first, 0) and (later, 0)
    from gpu_round_profile import graph_ms

    return graph_ms(eng._graphs[(False, 0, None)], reps=50, skip=10)


def smoke(cat, examples):
    """Graph replay equals eager on a tiny random model before anything big runs."""
    torch.manual_seed(0)
    t = Decoder(ModelConfig(vocab_size=cat.vocab.size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=128)).to(DEV).eval()
    d = Decoder(ModelConfig(vocab_size=cat.vocab.size, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64)).to(DEV).eval()
    prompts = build_prompts(cat.vocab, cat.index, [e.history for e in examples[:8]]).to(DEV)
    ref = beam_search(t, cat.trie.to(DEV), prompts, 10).sids
    for graphs in (False, True) if DEV == "cuda" else (False,):
        eng = make_engine("spec-strict", t, d, cat, 10, BenchConfig(cuda_graphs=graphs, draft_beams=20), DEV)
        for _ in range(2):
            res, _ = eng.run(prompts)
            assert torch.equal(res.sids, ref), f"graphs={graphs}: spec strict != beam search"
    log("smoke ok: eager and graph-replayed strict spec equal beam search")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--target-time", type=float, default=200)
    ap.add_argument("--draft-time", type=float, default=50)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--users-b64", type=int, default=512)
    ap.add_argument("--hf-users", type=int, default=30)
    ap.add_argument("--Ks", default="1,5,10,20")
    ap.add_argument("--N1", type=int, default=96, help="draft beams at batch 1 (a wide tree is cheap there)")
    ap.add_argument("--gamma", type=int, default=3)
    ap.add_argument("--gamma1", type=int, default=2, help="draft depth at batch 1")
    ap.add_argument("--depths1", default="1,2,2", help="batch-1 draft depth by the SID level a round starts from")
    ap.add_argument("--widths1", default="91,24,64,64", help="batch-1 tree widths by SID level (91: every level-1 code)")
    ap.add_argument("--expand1", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=1e-3, help="target learning rate")
    ap.add_argument("--target-epochs", type=int, default=4)
    ap.add_argument("--exact-users", type=int, default=100, help="users of the fp32 exactness check")
    ap.add_argument("--relaxed-beams", type=int, default=20, help="draft beams N for relaxed verification")
    ap.add_argument("--sweep", default="",
                    help="N:gamma:expand tree shapes tried for batch 1 ('' : none, use --N1/--gamma1)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the compiled K=10 batch-1 run (torch.compile'd rounds captured as graphs)")
    ap.add_argument("--tie-tol", type=float, default=0.05, help="bf16 score noise counted as a tie")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the whole script on the CPU with tiny models, few users, eager rounds, no compile")
    args = ap.parse_args()
    if args.cpu_smoke:
        global DEV, TARGET, DRAFT
        DEV = "cpu"
        TARGET = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
        DRAFT = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
        args.target_time, args.draft_time, args.target_epochs = 10, 5, 1
        args.users, args.users_b64, args.hf_users, args.exact_users, args.no_compile = 4, 128, 2, 4, True
        args.Ks = "10"
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.time()
    cat = open_catalog(args.data)
    test = list(cat.data.test)
    smoke(cat, test)
    tcfg = TrainConfig(epochs=args.target_epochs, batch_size=64, lr=args.lr, warmup_steps=100, eval_users=300,
                       time_limit_s=args.target_time)
    target, target32 = train_model(cat, TARGET, "/tmp/rs/target", tcfg, 0)
    dcfg = TrainConfig(epochs=20, batch_size=256, lr=2e-3, warmup_steps=30, eval_users=300, time_limit_s=args.draft_time)
    draft, draft32 = train_model(cat, DRAFT, "/tmp/rs/draft", dcfg, 1)
    from recspec.config import parse_depths

    depths1, widths1 = parse_depths(args.depths1), parse_depths(args.widths1, what="widths")
    exact = fp32_exactness(target32, draft32, cat, test, 10, args.exact_users, args.N1, args.gamma1, args.expand1,
                           depths1, widths1)
    log("fp32 exactness on the GPU (graph replay, b=1):", exact)
    tp, dp = target.cfg.num_parameters(), draft.cfg.num_parameters()
    log(f"target {tp / 1e6:.1f}M params, draft {dp / 1e6:.2f}M ({tp / dp:.0f}x)")
    from recspec.evaluation.hf_baseline import to_transformers

    hf = to_transformers(target)
    rows = []
    Ks = tuple(int(k) for k in args.Ks.split(","))
    N1, gamma1, expand1 = args.N1, args.gamma1, args.expand1
    if args.sweep:  # tree shape for batch 1, chosen on other test users than the ones timed below
        from tree_sweep import parse_grid, sweep

        swept = sweep(target, cat, draft, test[2000:], 10, 1, parse_grid(args.sweep), 60, 3, DEV, DEV == "cuda")
        best = max(swept[1:], key=lambda r: r["speedup_vs_ar"])
        N1, gamma1, expand1 = best["draft_beams"], best["gamma"], best["expand"]
        log(f"tree sweep (K=10, b=1, test users 2000+): best N={N1} gamma={gamma1} expand={expand1} "
            f"x{best['speedup_vs_ar']} vs AR")
        extra_sweep = [{k: r[k] for k in ("mode", "median_ms", "speedup_vs_ar", "target_calls", "draft_beams", "gamma",
                                          "expand") if k in r} for r in swept]
    else:
        extra_sweep = []
    # batch -> draft beams N, gamma, expand, depth schedule, widths
    shapes = {1: (N1, gamma1, expand1, depths1, widths1), 64: (40, args.gamma, 2.0, (), ())}
    runs = [(1, Ks, args.users, args.hf_users, False, BenchConfig.modes), (64, Ks, args.users_b64, 128, False, BenchConfig.modes)]
    if not args.no_compile:  # the acceptance point, compiled: AR and strict (relaxed's draw loop is slow to compile)
        runs.insert(1, (1, (10,), args.users, 0, True, ("ar", "spec-strict")))
    for batch, ks, users, hf_users, compiled, modes in runs:
        N, gamma, expand, depths, widths = shapes[batch]
        cfg = BenchConfig(Ks=ks, batches=(batch,), users=users, warmup=3, draft_beams=N, gamma=gamma, draft_expand=expand,
                          depths=depths, widths=widths, compile=compiled, modes=modes,
                          cuda_graphs=DEV == "cuda", hf_users=hf_users, tie_tol=args.tie_tol, relaxed_beams=args.relaxed_beams)
        t1 = time.time()
        try:
            new = run_bench(target, draft, cat, test, cfg, device=DEV, hf_model=hf, on_row=lambda r: log(r),
                            reference=target32)
        except Exception:  # keep what was measured; say what broke
            traceback.print_exc()
            new = []
        for r in new:
            r["compiled"] = compiled
        rows += new
        log(f"batch {batch} Ks {ks} compiled={compiled}: {time.time() - t1:.0f} s")
        write_results(rows, os.path.join(args.out, "gpu_topk_partial.json"), DEV, command="partial", extra={})
    bw = copy_bandwidth()
    floor_ms = tp * 2 / bw * 1e3
    step = ar_step_ms(target, cat, test, 10, not args.no_compile)
    for r in rows:
        r["drafter"] = "ce" if r["mode"].startswith("spec") else None
        if r["drafter"]:
            N, gamma, expand, depths, widths = shapes[r["batch"]]
            r.update(draft_beams=max(args.relaxed_beams, r["K"]) if r["mode"] == "spec-relaxed" else max(N, r["K"]),
                     gamma=gamma, expand=expand, depths="/".join(map(str, depths)), widths="/".join(map(str, widths)))
        if r["mode"] == "ar" and r["batch"] == 1 and r["K"] == 10 and r["compiled"] == (not args.no_compile):
            r.update(step_ms=round(step, 4), step_floor_ms=round(floor_ms, 4), step_floor_ratio=round(step / floor_ms, 3))
        if r["drafter"] is None:
            del r["drafter"]
    extra = {"target_params": tp, "draft_params": dp, "copy_bandwidth_GBps": round(bw / 1e9, 1), "fp32_exactness": exact,
             "target_shape": TARGET, "draft_shape": DRAFT, "tree_sweep_b1_K10": extra_sweep,
             "seconds": round(time.time() - t0, 1)}
    path = write_results(rows, os.path.join(args.out, "gpu_topk.json"), DEV,
                         command="PYTHONPATH=src python3 " + " ".join(sys.argv), extra=extra)
    log("wrote", path, json.dumps(extra))
    print(f"{'mode':13s} {'c':1s} {'K':>3s} {'b':>3s} {'ms':>9s} {'u/s':>8s} {'xAR':>6s} {'xHF':>6s} {'acc':>5s} {'calls':>5s} {'mis':>4s} {'ties':>4s} {'R@K':>6s}")
    for r in rows:
        k = r["K"]
        print(f"{r['mode']:13s} {int(r['compiled'])} {r['K']:3d} {r['batch']:3d} {r['median_ms']:9.3f} {r['users_per_s']:8.1f} "
              f"{r.get('speedup_vs_ar', 0):6.2f} {r.get('speedup_vs_hf', 0):6.2f} {r.get('accepted_levels', 0):5.2f} "
              f"{r.get('target_calls', 0):5.2f} {r.get('mismatches', -1):4d} {r.get('mismatches_ties', -1):4d} "
              f"{r.get(f'recall@{k}', 0):6.4f}")
    print("fp32 exactness (GPU, graphs):", exact)
    print(f"AR step K=10 b=1: {step:.3f} ms, floor {floor_ms:.3f} ms (weights {tp * 2 / 1e9:.2f} GB at {bw / 1e9:.0f} GB/s)")


if __name__ == "__main__":
    main()
