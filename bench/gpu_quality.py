"""One GPU command: train targets by the recipe (bf16 mixed precision), pick one on validation, fit it on
train + valid, score it on every test user in fp32 and bf16 (with the bf16/fp32 agreement audit).

    PYTHONPATH=src python bench/gpu_quality.py --data .data/beauty --out $OUT

Every training length is a step count; nothing depends on the clock. Prints a short table last and
writes quality_<name>.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import MODEL_PRESETS, ModelConfig, TrainConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.evaluation.evaluate import evaluate  # noqa: E402
from recspec.evaluation.precision import bf16_copy, precision_agreement  # noqa: E402
from recspec.models.hf import load_checkpoint  # noqa: E402
from recspec.training.recipe import run_recipe  # noqa: E402
from recspec.training.windows import build_windows  # noqa: E402


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def parse_configs(text: str) -> list[tuple[str, float, float]]:
    """'base:0.1:1e-3,small:0.2:2e-3' -> [(size, dropout, lr), ...]."""
    out = []
    for part in text.split(","):
        size, dropout, lr = part.split(":")
        out.append((size, float(dropout), float(lr)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default="runs/gpu_quality")
    ap.add_argument("--configs", default="small:0.1:1e-3,base:0.1:1e-3,base:0.3:1e-3")
    ap.add_argument("--epochs", type=int, default=40, help="schedule length of a selection run, in epochs")
    ap.add_argument("--eval-epochs", type=float, default=2, help="epochs between validations")
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny run on the CPU (checks the script)")
    args = ap.parse_args()
    dev = "cpu" if args.cpu_smoke else "cuda"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the evaluations below
        torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    work = "/tmp/gq" if not args.cpu_smoke else os.path.join(args.out, "work")
    cat = open_catalog(args.data)
    name = cat.data.name
    per_epoch = -(-len(build_windows(cat.data.train, cat.vocab, cat.index, 21, 10)) // args.batch)
    log(name, "items", cat.data.num_items, "valid users", len(cat.data.valid), "test users", len(cat.data.test),
        "steps/epoch", per_epoch)
    result = {"data": name, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "configs": []}
    best = None
    for size, dropout, lr in parse_configs(args.configs):
        shape = MODEL_PRESETS[size] if not args.cpu_smoke else MODEL_PRESETS["tiny"]
        mcfg = ModelConfig(vocab_size=cat.vocab.size, dropout=dropout, max_positions=256, **shape)
        steps = args.epochs * per_epoch if not args.cpu_smoke else 6
        cfg = TrainConfig(steps=steps, batch_size=args.batch, lr=lr, weight_decay=args.weight_decay,
                          warmup_steps=min(200, steps // 10), eval_every=max(1, int(args.eval_epochs * per_epoch)),
                          eval_users=0 if not args.cpu_smoke else 20, patience=args.patience)
        curve: list[dict] = []
        t0 = time.perf_counter()
        out = os.path.join(work, f"{size}_{dropout}_{lr}")
        res = run_recipe(mcfg, cat, cfg, out, dev, final_fit=False, progress=False,
                         on_log=lambda r: curve.append(r) if r.get("event") == "eval" else None)
        sel = res.select
        entry = {"size": size, "params": mcfg.num_parameters(), "dropout": dropout, "lr": lr, "steps": sel.steps,
                 "best_step": sel.best_step, "best_valid_recall@10": sel.best_recall10, "stop": sel.stop_reason,
                 "seconds": round(time.perf_counter() - t0, 1), "tokens_per_s": round(sel.tokens_per_s),
                 "curve": [{k: r[k] for k in ("step", "recall@10", "ndcg@10")} for r in curve]}
        log(json.dumps({k: v for k, v in entry.items() if k != "curve"}))
        log("curve", [(r["step"], round(r["recall@10"], 4)) for r in curve])
        result["configs"].append(entry)
        if best is None or sel.best_recall10 > best[0]["best_valid_recall@10"]:
            best = (entry, mcfg, cfg, out)
        with open(os.path.join(args.out, f"quality_{name}.json"), "w") as f:
            json.dump(result, f, indent=2)
    entry, mcfg, cfg, out = best
    t0 = time.perf_counter()
    res = run_recipe(mcfg, cat, cfg, out, dev, final_fit=True, progress=False)
    log("final fit", res.final_steps, "steps", round(time.perf_counter() - t0, 1), "s")
    model, _ = load_checkpoint(res.checkpoint, device=dev)
    test = list(cat.data.test)
    q32 = evaluate(model, cat.trie, cat.vocab, cat.index, test, K=10, batch_size=256, ks=(10,))
    m16 = bf16_copy(model)
    q16 = evaluate(m16, cat.trie, cat.vocab, cat.index, test, K=10, batch_size=256, ks=(10,))
    agree = precision_agreement(model, m16, cat, test, 10, 256, dev)
    sel_model, _ = load_checkpoint(res.select.checkpoint, device=dev)
    q_sel = evaluate(sel_model, cat.trie, cat.vocab, cat.index, test, K=10, batch_size=256, ks=(10,))
    result.update(chosen=entry["size"], final_steps=res.final_steps, test_fp32=q32, test_bf16=q16,
                  test_select_model_fp32=q_sel, agreement=agree)
    with open(os.path.join(args.out, f"quality_{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{name}: chosen {entry['size']} dropout {entry['dropout']} lr {entry['lr']} best step {entry['best_step']}"
          f" -> final {res.final_steps} steps")
    print(f"test fp32 R@10 {q32['recall@10']:.4f} N@10 {q32['ndcg@10']:.4f} | bf16 R@10 {q16['recall@10']:.4f} "
          f"N@10 {q16['ndcg@10']:.4f} | select-model R@10 {q_sel['recall@10']:.4f} N@10 {q_sel['ndcg@10']:.4f}")
    print("agreement", json.dumps(agree))


if __name__ == "__main__":
    main()
