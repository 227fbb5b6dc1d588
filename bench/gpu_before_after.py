"""Before/after timing of a code change on the GPU: the same target, AR and strict speculative beam search
(K=10, batch 1, trie drafter, auto tree), timed by the parent commit's code and by this checkout's, in one
command. A regression check of the engine, not a speed figure for users: the target is trained briefly
and its quality is reported (it does not pass the quality gate; rows say gate false).

    git archive <parent> src | tar -x -C .before     # the parent's package, git-ignored, carried
    PYTHONPATH=src python3 bench/gpu_before_after.py --before .before/src --data .data/beauty --out $OUT

The target is trained once (this checkout's code) and saved; then each version times it in its own process
(the two packages share a name), alternating before / after / before / after so that drift hits both.
Each process times every timed user once per mode (medians after warm-up) and returns its lists: the
after lists must equal the before lists user by user. Writes gpu_before_after.json; prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("ar", "spec-strict")


def worker(args) -> None:
    """Time AR and strict with the package at args.src (either API) and write times and lists as JSON."""
    sys.path.insert(0, os.path.abspath(args.src))
    import inspect

    from recspec.data.catalog import open_catalog
    from recspec.evaluation import bench
    from recspec.models.hf import load_checkpoint

    cat = open_catalog(args.data)
    test = list(cat.data.test)[: args.users + 3]
    target, _ = load_checkpoint(args.ckpt, device=args.device)
    target = target.bf16_inference() if args.bf16 else target.eval()
    new_api = "batch" in inspect.signature(bench.make_engine).parameters
    out = {"src": args.src, "new_api": new_api}
    engines = {"graphs": True, "eager": False}
    for graphs in [engines[e] for e in args.engines.split(",") if args.device == "cuda" or e == "eager"]:
        for mode in MODES:
            if new_api:
                from recspec.config import DecodeConfig, EngineConfig

                cfg = bench.BenchConfig(decode=DecodeConfig(engine=EngineConfig(cuda_graphs=graphs)))
                engine = bench.make_engine(mode, target, "trie", cat, 10, cfg, 1)
            else:
                engine = bench.make_engine(mode, target, "trie", cat, 10, bench.BenchConfig(cuda_graphs=graphs), args.device)
            call = bench.engine_call(engine, cat, test, args.device)
            run = bench.time_calls(call, [[i] for i in range(args.users)], 3, args.device)
            out[f"{mode}-{'graphs' if graphs else 'eager'}"] = {
                "times_ms": [t * 1e3 for t in run.times_s], "sids": run.sids,
                "target_calls": run.stats.summary()["target_calls"]}
        if args.profile and not graphs:  # where an eager AR call's host time goes
            import cProfile
            import pstats

            engine = bench.make_engine("ar", target, None, cat, 10, cfg, 1) if new_api else \
                bench.make_engine("ar", target, None, cat, 10, bench.BenchConfig(), args.device)
            call = bench.engine_call(engine, cat, test, args.device)
            prof = cProfile.Profile()
            prof.runcall(lambda: [call([i]) for i in range(min(20, args.users))])
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    with open(args.json, "w") as f:
        json.dump(out, f)


def train_target(args, folder: str) -> str:
    """A target trained with this checkout's code (seeded, a fixed number of steps) -> its checkpoint."""
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    import torch

    from recspec.config import MODEL_PRESETS, ModelConfig, TrainConfig
    from recspec.data.catalog import open_catalog
    from recspec.models.decoder import Decoder
    from recspec.training.train import train

    cat = open_catalog(args.data)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=cat.vocab.size, max_positions=256, **MODEL_PRESETS[args.size])).to(args.device)
    cfg = TrainConfig(steps=args.steps, batch_size=64, lr=args.lr, warmup_steps=50, eval_every=args.steps,
                      eval_users=500, fit="train+valid", optimizer_state=False)
    res = train(model, cat.data, cat.index, cat.vocab, cat.trie, cfg, folder, progress=False)
    print(f"trained {args.size} ({model.cfg.num_parameters() / 1e6:.0f}M) {res.steps} steps in {res.seconds:.0f} s",
          flush=True)
    return res.checkpoint


def quality(args, sids: list[list[int]]) -> dict:
    """Recall@10 / NDCG@10 of the timed users' lists, with 95% bootstrap intervals."""
    from recspec.data.catalog import open_catalog
    from recspec.evaluation.evaluate import target_sids
    from recspec.evaluation.intervals import bootstrap_ci
    from recspec.evaluation.metrics import per_user_metrics

    cat = open_catalog(args.data)
    per = per_user_metrics(sids, target_sids(cat.trie, list(cat.data.test)[: len(sids)]), 10)
    out = {}
    for name in ("recall@10", "ndcg@10"):
        vals = per[name]
        out[name] = round(float(sum(vals) / len(vals)), 5)
        out[f"{name}_ci"] = [round(x, 5) for x in bootstrap_ci(vals)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="the parent commit's src/ folder")
    ap.add_argument("--after", default=os.path.join(HERE, "..", "src"), help="this checkout's src/ folder")
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="gpu-0.5b", help="target preset (config.MODEL_PRESETS)")
    ap.add_argument("--steps", type=int, default=300, help="target optimiser steps (seeded, no clock)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--users", type=int, default=200, help="test users timed per mode (batch 1)")
    ap.add_argument("--passes", type=int, default=2, help="before/after alternations")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 inference (Decoder.bf16_inference)")
    ap.add_argument("--engines", default="graphs,eager", help="graph-replayed and/or eager rounds")
    ap.add_argument("--profile", action="store_true", help="print where an eager AR call's host time goes, per version")
    ap.add_argument("--pin-cpu", type=int, default=-1, help="run every timing process on this CPU core (taskset): "
                    "eager rounds are host-bound, and cores differ")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="recspec-before-after-")
    ckpt = train_target(args, os.path.join(tmp, "target"))
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for p in range(args.passes):
        for name, src in (("before", args.before), ("after", args.after)):
            path = os.path.join(tmp, f"{name}{p}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--src", src, "--ckpt", ckpt, "--json", path,
                   "--data", args.data, "--device", args.device, "--users", str(args.users),
                   "--bf16" if args.bf16 else "--no-bf16", "--before", args.before, "--engines", args.engines]
            cmd += ["--profile"] if args.profile else []
            cmd = ["taskset", "-c", str(args.pin_cpu)] + cmd if args.pin_cpu >= 0 else cmd  # one core for both versions
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": ""})
            with open(path) as f:
                runs[name].append(json.load(f))
            print(f"pass {p} {name}: done at {time.time() - t0:.0f} s", flush=True)
    rows = []
    for key in runs["after"][0]:
        if key in ("src", "new_api"):
            continue
        mode, engine = key.rsplit("-", 1)
        med = {n: statistics.median([t for r in runs[n] for t in r[key]["times_ms"]]) for n in runs}
        per_pass = {n: [round(statistics.median(r[key]["times_ms"]), 4) for r in runs[n]] for n in runs}
        same = sum(a == b for a, b in zip(runs["before"][0][key]["sids"], runs["after"][0][key]["sids"]))
        rows.append({"task": "topk", "mode": mode, **({"drafter": "trie"} if mode != "ar" else {}), "engine": engine,
                     "K": 10, "batch": 1, "eos": False, "gate": False, "users": args.users,
                     "median_ms_before": round(med["before"], 4), "median_ms_after": round(med["after"], 4),
                     "after_over_before": round(med["after"] / med["before"], 4),
                     "median_ms_per_pass_before": per_pass["before"], "median_ms_per_pass_after": per_pass["after"],
                     "lists_identical": same, "target_calls": round(runs["after"][0][key]["target_calls"], 4),
                     **quality(args, runs["after"][0][key]["sids"])})
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    from recspec.evaluation.report import write_results

    path = write_results(rows, os.path.join(args.out, "gpu_before_after.json"), args.device,
                         command="PYTHONPATH=src python3 " + " ".join(sys.argv),
                         extra={"target": args.size, "steps": args.steps, "seconds": round(time.time() - t0, 1),
                                "before": args.before, "after": args.after})
    print(f"results: {path}")
    print(f"{'mode':12s} {'engine':7s} {'before ms':>10s} {'after ms':>9s} {'after/before':>12s} {'same':>5s} {'R@10':>7s}")
    for r in rows:
        print(f"{r['mode']:12s} {r['engine']:7s} {r['median_ms_before']:10.3f} {r['median_ms_after']:9.3f} "
              f"{r['after_over_before']:12.3f} {r['lists_identical']:5d} {r['recall@10']:7.4f}")


if __name__ == "__main__":
    main()
