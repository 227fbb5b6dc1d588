"""List-wise generation with PAD drafters on the GPU, in one command: train, gate, check, time.

  1. A target trained here (seeded steps, train + valid), and the quality gate on every test user: its
     top-10 beam search against popularity and transition baselines fitted in the same run.
  2. Four drafters trained against it for the same seeded steps: the draft model (unrolled) and the
     feature head, each without and with the full PAD module.
  3. fp32, TF32 off, batch 16, CUDA graphs: every drafter's speculative lists against eager plain greedy on
     `--check-users` test users (0: all): mismatching users must be 0.
  4. bf16, batch 1 and 16, `--users` users: our greedy list decoding graph-replayed (and compiled, where
     torch.compile takes it) and greedy speculation with each drafter: median ms per call, speedup over the
     faster greedy, tau, acceptance per depth and slot, Recall/NDCG@M with intervals, mismatches.
  5. The profile of a round of the best drafter at batch 1: ms and kernel launches per phase.

    PYTHONPATH=src python3 bench/gpu_listwise.py --data .data/beauty --out $OUT
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import DecodeConfig, EngineConfig, ModelConfig, TrainConfig, TreeConfig, UnrollConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.data.vocab import build_prompts  # noqa: E402
from recspec.decoding.constraints import ItemList  # noqa: E402
from recspec.decoding.engine import build_engine  # noqa: E402
from recspec.decoding.greedy import greedy_decode  # noqa: E402
from recspec.evaluation.evaluate import target_sids  # noqa: E402
from recspec.evaluation.listwise import interval_metrics  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.evaluation.timing import kernel_count, measure_phases, phase_ms  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.models.hf import load_checkpoint  # noqa: E402
from recspec.training.fit_baselines import compare_with_baselines  # noqa: E402
from recspec.training.pad_ablation import decode_lists, spec_columns, variant_config, AblationConfig  # noqa: E402
from recspec.training.train import train  # noqa: E402
from recspec.training.unrolled import new_drafter, train_unrolled  # noqa: E402

DRAFTERS = (("draft-model", "base"), ("draft-model", "pad"), ("feature-head", "base"), ("feature-head", "pad"))


def gate(cat, target: Decoder, dev: str) -> list[dict]:
    """The target's top-10 beam search on every test user beside popularity and transitions -> quality rows."""
    engine = build_engine(target, cat.trie, DecodeConfig(K=10, engine=EngineConfig(cuda_graphs=dev == "cuda")))
    hist = [e.history for e in cat.data.test]
    sids = []
    for i in range(0, len(hist), 128):
        res, _ = engine.run(build_prompts(cat.vocab, cat.index, hist[i:i + 128]).to(dev))
        sids += res.sids.tolist()
    rows, _ = compare_with_baselines(cat, "test", sids, (10,), sasrec=None, device=dev)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--target", default="base", help="target preset")
    ap.add_argument("--target-steps", type=int, default=2000)
    ap.add_argument("--drafter-steps", type=int, default=1000, help="every drafter's training steps")
    ap.add_argument("--users", type=int, default=200, help="users timed")
    ap.add_argument("--check-users", type=int, default=0, help="users of the fp32 exactness check (0: all)")
    ap.add_argument("--M", type=int, default=10)
    ap.add_argument("--N", type=int, default=8, help="tree nodes per level")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd greedy")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    dev, t0 = ("cpu" if args.cpu_smoke else "cuda"), time.time()
    if args.cpu_smoke:
        args.target, args.target_steps, args.drafter_steps, args.users, args.check_users = "tiny", 5, 3, 4, 8
    log = lambda *a: print(f"[{time.time() - t0:5.0f} s]", *a, flush=True)  # noqa: E731
    tmp = tempfile.mkdtemp(prefix="recspec-listwise-")
    cat = open_catalog(args.data)
    torch.manual_seed(0)
    tcfg = TrainConfig(steps=args.target_steps, batch_size=64, lr=1e-3, warmup_steps=min(100, args.target_steps),
                       eval_every=args.target_steps, eval_users=300, fit="train+valid", optimizer_state=False, seed=0)
    model = Decoder(ModelConfig.preset(cat.vocab.size, args.target, max_positions=256)).to(dev)
    ckpt = train(model, cat.data, cat.index, cat.vocab, cat.trie, tcfg, os.path.join(tmp, "target"), progress=False).checkpoint
    target = load_checkpoint(ckpt, device=dev)[0].eval()
    quality = gate(cat, target, dev)
    passed = bool(quality[0]["gate"])
    log("target trained; gate", passed, {r["model"]: r["recall@10"] for r in quality})
    ucfg = UnrollConfig(steps=args.drafter_steps, batch_size=32, warmup_steps=min(100, args.drafter_steps), unroll=3)
    acfg = AblationConfig(M=args.M, users=args.users, train=ucfg, tree=TreeConfig(draft_beams=args.N, gamma=args.gamma))
    drafters = {}
    for base, variant in DRAFTERS:
        name = base if variant == "base" else f"{base}+{variant}"
        cfg = variant_config(acfg, base, variant)
        d = new_drafter(target, cat.vocab, cfg, "draft")
        train_unrolled(d, target, cat.data, cat.index, cat.vocab, cfg, os.path.join(tmp, name), progress=False)
        drafters[name] = d.eval()
    log("drafters trained")
    c = ItemList(cat.trie, args.M).to(dev)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = [{"task": "quality", **r} for r in quality]
    rows += exactness(cat, target, drafters, c, args, dev)
    log("fp32 exactness done")
    rows += timing(cat, target, drafters, c, args, dev, passed, acfg, log)
    path = write_results(rows, os.path.join(args.out, f"gpu_listwise_{cat.data.name}.json"), dev,
                         command="PYTHONPATH=src python3 " + " ".join(sys.argv),
                         extra={"target": args.target, "target_steps": args.target_steps,
                                "drafter_steps": args.drafter_steps, "seconds": round(time.time() - t0, 1)})
    print(f"results: {path}")
    print(f"{'mode':8s} {'drafter':20s} {'b':>3s} {'ms':>8s} {'tau':>5s} {'d0':>5s} {'d1':>5s} {'d2':>5s} {'d3':>5s} "
          f"{'x':>5s} {'mis':>4s} {'R@M':>7s}")
    for r in rows:
        if r["task"] == "listwise" and "median_ms" in r:
            a = lambda k: f"{r[k]:5.2f}" if isinstance(r.get(k), float) else "    -"  # noqa: E731
            print(f"{r['mode']:8s} {r.get('drafter', ''):20s} {r['batch']:3d} {r['median_ms']:8.2f} {r['tau']:5.2f} "
                  f"{a('accept_d0')} {a('accept_d1')} {a('accept_d2')} {a('accept_d3')} {a('speedup_vs_ar')} "
                  f"{r.get('mismatches', 0):4d} {r.get(f'recall@{args.M}', float('nan')):7.4f}")


def exactness(cat, target, drafters, c, args, dev) -> list[dict]:
    """fp32, graphs, batch 16: each drafter's lists against eager plain greedy, user by user."""
    tests = cat.data.test[: args.check_users or None]
    hist = [e.history for e in tests]
    prompts = [build_prompts(cat.vocab, cat.index, hist[i:i + 16]).to(dev) for i in range(0, len(hist), 16)]
    ref = [greedy_decode(target, c, p).sids[:, 0].tolist() for p in prompts]
    width = max(p.tokens.shape[1] for p in prompts)
    cfg = DecodeConfig(K=1, engine=EngineConfig(cuda_graphs=dev == "cuda", prompt_width=width),
                       tree=TreeConfig(draft_beams=args.N, gamma=args.gamma))
    rows = []
    for name, d in drafters.items():
        row = {"task": "listwise", "check": "fp32-exact", "precision": "fp32", "drafter": name, "batch": 16,
               "users": len(hist), "graphs": dev == "cuda", "M": args.M}
        try:
            engine = build_engine(target, c, cfg, d)
            row["mismatches"] = sum(engine.run(p)[0].sids[:, 0].tolist() != r for p, r in zip(prompts, ref))
        except Exception as e:  # noqa: BLE001  one failing drafter is recorded, the others still run
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        rows.append(row)
        print(row, flush=True)
    return rows


def timing(cat, target, drafters, c, args, dev, passed, acfg, log) -> list[dict]:
    """bf16, batch 1 and 16: greedy (graphs; compiled) and speculation with each drafter."""
    target = target.bf16_inference()
    for d in drafters.values():
        if isinstance(d, Decoder):
            d.bf16_inference()
    tests = cat.data.test[: args.users]
    hist, truth = [e.history for e in tests], target_sids(cat.trie, tests)
    rows = []
    for batch in (1, 16):
        prompts = [build_prompts(cat.vocab, cat.index, hist[i:i + batch]).to(dev) for i in range(0, len(hist), batch)]
        eng = EngineConfig(cuda_graphs=dev == "cuda", prompt_width=max(p.tokens.shape[1] for p in prompts))
        base = DecodeConfig(K=1, engine=eng)
        common = {"task": "listwise", "precision": "bf16", "M": args.M, "batch": batch, "users": len(hist), "gate": passed}
        greedy, best, best_x = None, None, 0.0
        modes = [("greedy", "graphs", base)] + ([("greedy", "compiled", base.replace(compile=True))] if args.compile else [])
        for mode, how, cfg in modes:
            try:
                got = decode_lists(target, c, None, prompts, cfg, 3)
            except Exception as e:  # noqa: BLE001
                rows.append({**common, "mode": mode, "engine": how, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            ms = statistics.median(got.ms)
            rows.append({**common, "mode": mode, "engine": how, "median_ms": round(ms, 3), "tau": 1.0,
                         "target_calls": float(c.num_levels), **interval_metrics(got.lists, truth, args.M)})
            if greedy is None or ms < statistics.median(greedy.ms):
                greedy = got
        gms = statistics.median(greedy.ms)
        for name, d in drafters.items():
            row = {**common, "mode": "spec", "drafter": name, "engine": "graphs", "baseline": "greedy (fastest above)"}
            try:
                got = decode_lists(target, c, d, prompts, base.replace(tree=acfg.tree), 3)
                row.update({**spec_columns(got, greedy, c, acfg), **interval_metrics(got.lists, truth, args.M)})
                row["speedup_vs_ar"] = round(gms / row["median_ms"], 3)
                if row["speedup_vs_ar"] > best_x:
                    best, best_x = (name, d), row["speedup_vs_ar"]
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            print(row, flush=True)
        log(f"batch {batch} timed")
        if batch == 1 and best is not None:
            rows.append(round_profile(target, c, best, prompts[0], base.replace(tree=acfg.tree), common))
    return rows


def round_profile(target, c, best, prompt, cfg, common) -> dict:
    """ms and kernel launches per phase of a mid-list round of the best drafter, and of a greedy step."""
    row = {**common, "mode": "profile", "drafter": best[0]}
    try:
        for label, d, dcfg in (("spec", best[1], cfg), ("greedy", None, cfg.replace(tree=TreeConfig()))):
            engine = build_engine(target, c, dcfg, d)
            engine.run(prompt)
            plan = engine.plan(c.num_levels // 2, False)
            row[f"{label}_phase_ms"] = {k: round(v, 4) for k, v in phase_ms(engine, prompt, plan).items()}
            row[f"{label}_phase_kernels"] = measure_phases(engine, prompt, plan, kernel_count)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {e}"[:300]
    print(row, flush=True)
    return row


if __name__ == "__main__":
    main()
