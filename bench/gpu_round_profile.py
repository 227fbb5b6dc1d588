"""Where a speculative round's time goes on the GPU: each round shape the engine captures, replayed (median
of CUDA-event timings), and with --phases each phase of one round (propose, score, verify, commit) captured
as its own CUDA graph and replayed (`evaluation.timing.phase_ms`), with its kernel count.

A round's cost under graph replay depends only on its shapes (first or not, tree depth d, N, K,
batch), not on the weights, so random bf16 models of the benchmark's shapes suffice.

    PYTHONPATH=src python bench/gpu_round_profile.py --data .data/beauty --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import DecodeConfig, ModelConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.data.vocab import build_prompts  # noqa: E402
from recspec.decoding.engine import SpecEngine, build_engine, longest_prompt  # noqa: E402
from recspec.decoding.round import RoundPlan  # noqa: E402
from recspec.evaluation.timing import PHASES, call_ms, graph_ms, kernel_count, measure_phases, phase_ms  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.models.hf import for_inference  # noqa: E402

TARGET = dict(hidden_size=2560, num_layers=8, num_heads=20, num_kv_heads=4, intermediate_size=6912)
DRAFT = dict(hidden_size=512, num_layers=2, num_heads=8, num_kv_heads=4, intermediate_size=1376)


def round_ms(eng: SpecEngine, plan: RoundPlan) -> float:
    """The engine's own captured graph of one round (compiled or not), replayed: median ms; on the CPU the
    round runs once eagerly (checks the plan) and the time is nan."""
    if eng.cfg.engine.cuda_graphs:
        return graph_ms(eng.graph(plan))
    eng.round(plan)
    return float("nan")


def profile_round(eng: SpecEngine, prompts, plan: RoundPlan, start: RoundPlan) -> dict:
    """Phases of one round from its start (`start` first, for a plan after the first): median ms and
    kernels of each (an engine without a drafter is AR: propose does nothing)."""
    fed = sum(plan.widths) if plan.widths else plan.d * eng.N
    out = {"fed_widths": "/".join(map(str, plan.widths or ())),
           "target_tokens": (eng.lay.T if plan.first else eng.K) + fed}
    for name, ms in phase_ms(eng, prompts, plan, start=start).items():
        out[name + "_ms"] = round(ms, 4)
    kernels = measure_phases(eng, prompts, plan, kernel_count, start=start)
    out.update({name + "_kernels": int(kernels[name]) for name in PHASES})
    return out


def extra_case(text: str, Ns: list[int], trie, K: int) -> tuple[tuple[int, ...], int]:
    """--widths -> (widths by SID level, N of the tree): the auto shape's, or the given widths in a tree
    as wide as the largest of them and of --N; ((), 0) for ''."""
    from recspec.config import parse_depths
    from recspec.decoding.tree_shape import auto_shape, default_tree_budget

    if text == "auto":  # the GPU's shape, also in --cpu-smoke (which checks the GPU run's logic)
        shape = auto_shape(trie, K, default_tree_budget("cuda"))
        return shape.widths, shape.N
    widths = parse_depths(text, what="widths")
    return widths, max((*Ns, *widths)) if widths else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--N", type=int, nargs="+", default=[16, 40, 128])
    ap.add_argument("--target", default="", help="target shape as JSON (default: the benchmark's 556M)")
    ap.add_argument("--widths", default="auto", help="tree widths by SID level for an extra spec case: 'auto' (the "
                                                     "catalogue's auto shape at --K), e.g. 128,16,16, or '' (none)")
    ap.add_argument("--compile", action="store_true", help="also time compiled rounds (whole rounds only)")
    ap.add_argument("--phases", action="store_true", help="per-phase split of uncompiled rounds (each phase a graph)")
    ap.add_argument("--cpu-smoke", action="store_true", help="check the script's logic on the CPU: eager, tiny models")
    args = ap.parse_args()
    dev = "cpu" if args.cpu_smoke else "cuda"
    global TARGET, DRAFT
    if args.target:
        TARGET = json.loads(args.target)
    if args.cpu_smoke:
        TARGET = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
        DRAFT = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    torch.manual_seed(0)
    cat = open_catalog(args.data)
    trie = cat.trie.to(dev)
    V = cat.vocab.size
    precision = "fp32" if args.cpu_smoke else "bf16-all"  # every weight bf16, as the benchmark's models
    target = for_inference(Decoder(ModelConfig(vocab_size=V, **TARGET)).to(dev), precision)
    draft = for_inference(Decoder(ModelConfig(vocab_size=V, **DRAFT)).to(dev), precision)
    prompts = build_prompts(cat.vocab, cat.index, [list(cat.data.test)[0].history]).to(dev)
    widths, wide_N = extra_case(args.widths, args.N, cat.trie, args.K)
    base = DecodeConfig(K=args.K).replace(prompt_width=longest_prompt(trie.num_levels), cuda_graphs=not args.cpu_smoke)
    calls = dict(reps=1, warmup=0) if args.cpu_smoke else {}
    rows = []

    def engine(N, compile, ws=()):
        """AR (N = 0), or strict speculation with the draft model in a tree of N nodes per level, depth 4."""
        cfg = base.replace(compile=compile)
        if N:
            cfg = cfg.replace(draft_beams=max(N, args.K), gamma=4, expand=0.0 if ws else 2.0, depths=(), widths=tuple(ws))
        e = build_engine(target, trie, cfg, draft if N else None)
        e.load(prompts)
        return e

    with torch.no_grad():
        for compile in (False, True) if args.compile else (False,):
            t0 = time.perf_counter()
            ar = engine(0, compile)
            first, later = RoundPlan(True, 0), RoundPlan(False, 0)
            r = {"mode": "ar", "compiled": compile, "N": args.K, "first": True, "d": 0, "round_ms": round(round_ms(ar, first), 4)}
            ar.round(first)
            r2 = {"mode": "ar", "compiled": compile, "N": args.K, "first": False, "d": 0,
                  "round_ms": round(round_ms(ar, later), 4)}
            r2["call_ms"] = round(call_ms(ar, prompts, **calls), 4)
            r2["setup_s"] = round(time.perf_counter() - t0, 1)
            rows += [r, r2]
            print(r, "\n", r2, flush=True)
            cases = [(N, ()) for N in args.N] + ([(wide_N, widths)] if widths else [])
            if compile:  # compiling takes a while per round shape: the last case only
                cases = cases[-1:]
            for N, ws in cases:
                t0 = time.perf_counter()
                eng = engine(N, compile, ws)
                start = RoundPlan(True, 2, eng.widths_from(0, 2))  # the first round before a later one
                for first, d in ((True, 4), (True, 2), (False, 2)):
                    plan = RoundPlan(first, d, eng.widths_from(0 if first else 2, d))
                    if not first:
                        eng.load(prompts)
                        eng.round(start)
                    row = {"mode": "spec-strict", "compiled": compile, "N": N, "widths": "/".join(map(str, ws)),
                           "first": first, "d": d, "round_ms": round(round_ms(eng, plan), 4)}
                    if args.phases and not compile:
                        row.update(profile_round(eng, prompts, plan, start))
                    rows.append(row)
                    print(row, flush=True)
                rows[-1]["call_ms"] = round(call_ms(eng, prompts, **calls), 4)
                rows[-1]["setup_s"] = round(time.perf_counter() - t0, 1)
    path = os.path.join(args.out, "gpu_round_profile.json")
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "K": args.K, "target": TARGET,
                   "target_params": target.cfg.num_parameters(), "draft": DRAFT, "rows": rows}, f, indent=1)
    print(f"{'mode':12s} {'cmp':>3s} {'N':>4s} {'widths':>12s} {'first':>5s} {'d':>2s} {'round':>7s} {'call':>7s}")
    for r in rows:
        print(f"{r['mode']:12s} {int(r['compiled']):3d} {r['N']:4d} {r.get('widths', ''):>12s} {str(r['first']):>5s} "
              f"{r['d']:2d} {r['round_ms']:7.3f} {r.get('call_ms', 0):7.3f}")
    print("wrote", path)


if __name__ == "__main__":
    main()
