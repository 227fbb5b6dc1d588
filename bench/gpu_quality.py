"""One GPU command: baselines, a target trained by the recipe, the quality gate, then (only for a target that
passes it) the speed of AR against strict speculative beam search on that target.

    PYTHONPATH=src python bench/gpu_quality.py --data .data/beauty --out $OUT --exclude-history

1. Baselines (`training.fit_baselines`): popularity and item transitions fitted on train + valid; SASRec
   tuned on the valid users over a grid (each point trained on train), refit on train + valid.
2. Targets (`training.recipe`), bf16 mixed precision: each --configs entry trains on train for --epochs,
   validated on every valid user every --eval-epochs, early-stopped; the best on validation is refit on
   train + valid for its best step's epochs.
3. Quality on every test user (fp32 lists of the target; its bf16 lists as "target-bf16"), 95% bootstrap
   intervals, paired differences, the gate; the bf16/fp32 agreement audit (`evaluation.precision`).
4. Speed, only when the gate passes (--allow-ungated: always, rows say gate false): bf16 target with CUDA
   graphs, AR vs strict speculative (trie drafter, auto tree) at K=10, batch 1 and 32; rows carry `gate`.

Every training length is a step count; nothing depends on the clock. Writes quality_<data>.json and
(when timed) topk_<data>.json under --out, in the results format; prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import DecodeConfig, ModelConfig, TrainConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.decoding.drafters import TRIE  # noqa: E402
from recspec.evaluation.bench import BenchConfig, run_bench  # noqa: E402
from recspec.evaluation.evaluate import recommend  # noqa: E402
from recspec.evaluation.precision import bf16_copy, precision_agreement  # noqa: E402
from recspec.evaluation.quality import format_quality  # noqa: E402
from recspec.evaluation.report import format_rows, write_results  # noqa: E402
from recspec.models.hf import load_checkpoint  # noqa: E402
from recspec.training.fit_baselines import SASRecSetup, compare_with_baselines, fit_and_rank_baselines  # noqa: E402
from recspec.training.recipe import run_recipe  # noqa: E402
from recspec.training.sasrec import SASRecGrid, SASRecTrainConfig  # noqa: E402
from recspec.training.windows import build_windows  # noqa: E402


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def parse_configs(text: str) -> list[tuple[str, float, float]]:
    """'base:0.1:1e-3,small:0.2:2e-3' -> [(size, dropout, lr), ...]."""
    return [(size, float(d), float(lr)) for size, d, lr in (p.split(":") for p in text.split(","))]


def sweep(cat, args, dev: str, per_epoch: int, work: str, result: dict):
    """Selection runs of every config -> (entry, model config, train config, run folder) of the best."""
    best = None
    for size, dropout, lr in parse_configs(args.configs):
        mcfg = ModelConfig.preset(cat.vocab.size, "tiny" if args.cpu_smoke else size, dropout=dropout, max_positions=256)
        steps = 6 if args.cpu_smoke else args.epochs * per_epoch
        cfg = TrainConfig(steps=steps, batch_size=args.batch, lr=lr, weight_decay=args.weight_decay,
                          warmup_steps=min(200, steps // 10), eval_every=max(1, int(args.eval_epochs * per_epoch)),
                          eval_users=20 if args.cpu_smoke else 0, patience=args.patience, seed=args.seed)
        curve: list[dict] = []
        out = os.path.join(work, f"{size}_{dropout}_{lr}")
        t0 = time.perf_counter()
        sel = run_recipe(mcfg, cat, cfg, out, dev, final_fit=False, progress=False,
                         on_log=lambda r: curve.append(r) if r.get("event") == "eval" else None).select
        entry = {"size": size, "params": mcfg.num_parameters(), "dropout": dropout, "lr": lr, "steps": sel.steps,
                 "best_step": sel.best_step, "best_valid_recall@10": sel.best_recall10, "stop": sel.stop_reason,
                 "seconds": round(time.perf_counter() - t0, 1), "tokens_per_s": round(sel.tokens_per_s),
                 "curve": [{k: r[k] for k in ("step", "recall@10", "ndcg@10")} for r in curve]}
        log(json.dumps({k: v for k, v in entry.items() if k != "curve"}))
        log("valid curve", [(r["step"], round(r["recall@10"], 4)) for r in curve])
        result["targets"].append(entry)
        if best is None or sel.best_recall10 > best[0]["best_valid_recall@10"]:
            best = (entry, mcfg, cfg, out)
    return best


def baselines(cat, args, dev: str, result: dict):
    steps = 20 if args.cpu_smoke else args.sasrec_steps
    setup = SASRecSetup(train=SASRecTrainConfig(steps=steps, eval_every=max(1, steps // 10), batch_size=256,
                                                warmup_steps=min(100, steps // 10), seed=args.seed),
                        grid=SASRecGrid(hidden=tuple(int(h) for h in args.sasrec_hidden.split(",")),
                                        dropout=tuple(float(d) for d in args.sasrec_dropout.split(",")),
                                        lr=tuple(float(x) for x in args.sasrec_lr.split(","))))
    t0 = time.perf_counter()
    fitted = fit_and_rank_baselines(cat.data, "test", 10, setup, dev, exclude_history=args.exclude_history)
    s = fitted.info["sasrec"]
    log(f"baselines {time.perf_counter() - t0:.1f} s; sasrec chosen", json.dumps(s["chosen"]["curve"][-3:]),
        {k: s["chosen"][k] for k in ("hidden", "dropout", "lr", "best_step", "best_recall@10")})
    result["sasrec"] = s
    return fitted


def speed(model16, model32, cat, args, dev: str, gate: bool) -> list[dict]:
    cfg = BenchConfig(Ks=(10,), batches=(1, 32) if not args.cpu_smoke else (1,), users=args.users,
                      modes=("ar", "spec-strict"),
                      decode=DecodeConfig(exclude_history=args.exclude_history).replace(cuda_graphs=dev == "cuda"))
    rows = run_bench(model16, TRIE, cat, list(cat.data.test), cfg, device=dev, reference=model32)
    for r in rows:
        r["gate"] = gate
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default="runs/gpu_quality")
    ap.add_argument("--configs", default="base:0.2:1e-3,base:0.3:2e-3", help="size:dropout:lr, comma-separated")
    ap.add_argument("--epochs", type=int, default=40, help="schedule length of a selection run, in epochs")
    ap.add_argument("--eval-epochs", type=float, default=3, help="epochs between validations")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--sasrec-steps", type=int, default=3000)
    ap.add_argument("--sasrec-hidden", default="64,128")
    ap.add_argument("--sasrec-dropout", default="0.2,0.5")
    ap.add_argument("--sasrec-lr", default="1e-3,3e-3")
    ap.add_argument("--exclude-history", action="store_true", help="no model recommends a history item")
    ap.add_argument("--users", type=int, default=200, help="users timed per mode and batch")
    ap.add_argument("--allow-ungated", action="store_true", help="time a target below the gate (smoke tests only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny run on the CPU (checks the script)")
    args = ap.parse_args()
    dev = "cpu" if args.cpu_smoke else "cuda"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the evaluations below
        torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work") if args.cpu_smoke else "/tmp/gq"
    cat = open_catalog(args.data)
    name = cat.data.name
    per_epoch = -(-len(build_windows(cat.data.train, cat.vocab, cat.index, 21, 10)) // args.batch)
    log(name, "items", cat.data.num_items, "valid users", len(cat.data.valid), "test users", len(cat.data.test),
        "steps/epoch", per_epoch)
    result: dict = {"targets": []}
    fitted = baselines(cat, args, dev, result)
    entry, mcfg, cfg, out = sweep(cat, args, dev, per_epoch, work, result)
    t0 = time.perf_counter()
    res = run_recipe(mcfg, cat, cfg, out, dev, final_fit=True, progress=False)
    log("final fit", res.final_steps, "steps", round(time.perf_counter() - t0, 1), "s")
    model, _ = load_checkpoint(res.checkpoint, device=dev)
    model16 = bf16_copy(model)
    test = list(cat.data.test)
    lists = {n: recommend(m, cat.trie, cat.vocab, cat.index, [e.history for e in test], 10, 256, dev,
                          exclude_history=args.exclude_history).sids.tolist() for n, m in (("fp32", model), ("bf16", model16))}
    rows, _ = compare_with_baselines(cat, "test", lists["fp32"], (10,), None, dev,
                                     args.exclude_history, seed=args.seed, fitted=fitted,
                                     extra={"target-bf16": lists["bf16"]})
    for r in rows:
        if r["model"].startswith("target"):
            r.update(fit="train+valid", size=entry["size"], params=entry["params"], dropout=entry["dropout"],
                     lr=entry["lr"], final_steps=res.final_steps, precision_trained="bf16")
    agree = precision_agreement(model, model16, cat, test, 10, 256, dev)
    gate = rows[0]["gate"]
    command = " ".join(sys.argv)
    write_results(rows, os.path.join(args.out, f"quality_{name}.json"), dev, command,
                  extra={"data": name, "agreement_bf16_fp32": agree, **result})
    speed_rows = []
    if gate or args.allow_ungated:
        speed_rows = speed(model16, model, cat, args, dev, gate)
        write_results(speed_rows, os.path.join(args.out, f"topk_{name}.json"), dev, command,
                      extra={"data": name, "quality": rows})
    print(f"{name}: target {entry['size']} dropout {entry['dropout']} lr {entry['lr']}, best step "
          f"{entry['best_step']} -> final fit {res.final_steps} steps on train + valid")
    print("\n".join(format_quality(rows)))
    print("bf16 vs fp32 top-10:", json.dumps(agree))
    print("\n".join(format_rows(speed_rows)) if speed_rows else "speed: not timed (the target is below the gate)")


if __name__ == "__main__":
    main()
