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
    return graph_ms(g, reps)


def graph_ms(graph: torch.cuda.CUDAGraph, reps: int = 50, skip: int = 5) -> float:
    """Median ms of `reps` replays timed with CUDA events, the first `skip` left out (warm-up)."""
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); graph.replay(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts[skip:])


def kernels(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in p.events() if str(e.device_type).endswith("CUDA"))


def profile_round(eng: SpecEngine, first: bool, d: int, widths=None) -> dict:
    """Phases of one round from the engine's current state: draft, target pass, verify, commit
    (an engine without a drafter is AR: no draft, no tree, nothing to commit)."""
    lay, beams = eng.lay, eng.beams
    frontier = SB._frontier(beams, lay, not first)
    box = {}

    def draft():
        if first:
            eng.drafter.prefill()
        box["tree"] = eng.drafter.propose(frontier, d, False, None, widths) if d else None

    def score():
        box["lp"] = SB._score(eng.target, eng.cache, eng.prompts, eng.keys, lay, frontier, box["tree"])

    def verify():
        box["v"] = SB._verify(eng.trie, lay, beams, *box["lp"], box["tree"], lay.K, "strict", None, False)

    def commit():
        eng.cache.copy_slots(box["v"][1].copy_src, box["v"][1].copy_dst)
        eng.drafter.observe(box["v"][1])

    def whole():
        eng._round(first, d, PhaseClock(), widths)

    for fn in (draft, score, verify):  # fills box for the phases that read earlier ones
        fn()
    phases = [("draft", draft), ("target_pass", score), ("verify", verify), ("commit", commit)]
    fed = sum(widths) if widths else d * lay.N
    out = {"first": first, "d": d, "fed_widths": "/".join(map(str, widths or ())),
           "target_tokens": (eng.prompts.tokens.shape[1] if first else lay.K) + fed}
    for name, fn in phases + [("round", whole)]:
        timed = eng.drafter is not None or name not in ("draft", "commit")
        out[name + "_ms"] = round(replay_ms(fn), 4) if timed else 0.0
        out[name + "_kernels"] = kernels(fn) if timed else 0
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


def engine_round_ms(eng: SpecEngine, first: bool, d: int, widths) -> float:
    """The engine's own captured graph of one round (compiled or not), replayed: median ms."""
    graph = eng._graphs[("profiled", first, d, widths)] = eng._capture(first, d, widths)  # alive: graphs share a pool
    return graph_ms(graph)


def call_ms(eng: SpecEngine, prompts, reps: int = 30) -> float:
    """Median wall time of one whole engine.run (host syncs, set-up and result included)."""
    import time

    for _ in range(3):
        eng.run(prompts)
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res, _ = eng.run(prompts)
        res.sids.tolist()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


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
    ap.add_argument("--phases", action="store_true", help="per-phase split of eager-graph rounds")
    ap.add_argument("--cpu-smoke", action="store_true", help="check the script's logic on the CPU: eager, tiny models")
    args = ap.parse_args()
    dev = "cpu" if args.cpu_smoke else "cuda"
    global replay_ms, kernels, TARGET, DRAFT, engine_round_ms, call_ms
    if args.target:
        TARGET = json.loads(args.target)
    if args.cpu_smoke:
        replay_ms = lambda fn, reps=3: (fn(), 0.0)[1]  # noqa: E731
        kernels = lambda fn: 0  # noqa: E731
        engine_round_ms = lambda eng, first, d, widths: (eng._round(first, d, PhaseClock(), widths), 0.0)[1]  # noqa: E731
        call_ms = lambda eng, prompts: (eng.run(prompts), 0.0)[1]  # noqa: E731
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
    widths, wide_N = extra_case(args.widths, args.N, cat.trie, args.K)
    graphs = not args.cpu_smoke
    rows = []

    def engine(N, compile, ws=()):
        d = DraftModelDrafter(draft, trie, N, 0.0 if ws else 2.0) if N else None
        e = SpecEngine(target, d, trie, K=args.K, N=max(N, args.K), gamma=4 if N else 0, prompt_width=width,
                       cuda_graphs=graphs, compile=compile, widths=ws)
        e._load(prompts)
        return e

    with torch.no_grad():
        for compile in (False, True) if args.compile else (False,):
            import time

            t0 = time.perf_counter()
            ar = engine(0, compile)
            r = {"mode": "ar", "compiled": compile, "N": args.K, "first": True, "d": 0,
                 "round_ms": round(engine_round_ms(ar, True, 0, None), 4)}
            ar._round(True, 0, PhaseClock())
            r2 = {"mode": "ar", "compiled": compile, "N": args.K, "first": False, "d": 0,
                  "round_ms": round(engine_round_ms(ar, False, 0, None), 4)}
            r2["call_ms"] = round(call_ms(ar, prompts), 4)
            r2["setup_s"] = round(time.perf_counter() - t0, 1)
            rows += [r, r2]
            print(r, "\n", r2, flush=True)
            cases = [(N, ()) for N in args.N] + ([(wide_N, widths)] if widths else [])
            if compile:  # compiling takes a while per round shape: the last case only
                cases = cases[-1:]
            for N, ws in cases:
                t0 = time.perf_counter()
                eng = engine(N, compile, ws)
                for first, d in ((True, 4), (True, 2), (False, 2)):
                    w = eng.widths_from(0 if first else 2, d)
                    if not first:
                        eng._load(prompts)
                        eng._round(True, 2, PhaseClock(), eng.widths_from(0, 2))
                    row = {"mode": "spec-strict", "compiled": compile, "N": N, "widths": "/".join(map(str, ws)),
                           "first": first, "d": d, "round_ms": round(engine_round_ms(eng, first, d, w), 4)}
                    if args.phases and not compile:
                        row.update(profile_round(eng, first, d, w))
                    rows.append(row)
                    print(row, flush=True)
                rows[-1]["call_ms"] = round(call_ms(eng, prompts), 4)
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
