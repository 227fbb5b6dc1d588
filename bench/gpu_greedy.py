"""Greedy list generation on the GPU: exactness in fp32 under CUDA graphs, then bf16 speeds, in one command.

A target and a draft are trained on Beauty (seeded step counts), an n-gram table is built from the training
histories; then for 200 test users, lists of M items (`constraints.ItemList`):
  1. fp32, TF32 off: greedy speculation (CUDA graphs; draft model and n-gram drafters) against plain greedy
     decoding (`decoding.greedy`), user by user (mismatches must be 0);
  2. bf16 inference: plain greedy through the engine (no tree) and greedy speculation, both graph-replayed,
     batch 1: median ms per list, target calls, tau (tokens per target call) and mismatches against bf16 greedy.
The targets are not gated (issue 16 is blocked): rows say gate false.

    PYTHONPATH=src python3 bench/gpu_greedy.py --data .data/beauty --out $OUT
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

from recspec.config import MODEL_PRESETS, DecodeConfig, EngineConfig, ModelConfig, TrainConfig, TreeConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.data.vocab import build_prompts, sequence_tokens  # noqa: E402
from recspec.decoding.constraints import ItemList  # noqa: E402
from recspec.decoding.drafters import NGramTable  # noqa: E402
from recspec.decoding.engine import build_engine  # noqa: E402
from recspec.decoding.greedy import greedy_decode  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.models.hf import load_checkpoint  # noqa: E402
from recspec.training.train import train  # noqa: E402


def trained(cat, size: str, steps: int, folder: str, device: str, seed: int) -> str:
    torch.manual_seed(seed)
    model = Decoder(ModelConfig(vocab_size=cat.vocab.size, max_positions=256, **MODEL_PRESETS[size])).to(device)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup_steps=50, eval_every=steps, eval_users=300,
                      fit="train+valid", optimizer_state=False, seed=seed)
    return train(model, cat.data, cat.index, cat.vocab, cat.trie, cfg, folder, progress=False).checkpoint


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()  # host sync: timing boundary


def run_lists(engine, c, prompts, ref=None):
    """Every batch through the engine -> (codes per batch, per-call ms, target calls per user, mismatches)."""
    out, ms, calls, bad = [], [], [], 0
    for i, p in enumerate(prompts):
        sync(p.tokens.device.type)
        t0 = time.perf_counter()
        got, stats = engine.run(p)
        got.codes.cpu()
        ms.append((time.perf_counter() - t0) * 1e3)
        out.append(got.codes)
        calls += stats.target_calls().tolist()
        if ref is not None:
            bad += int((~(got.codes == ref[i].codes).all(dim=-1).all(dim=-1)).sum())
    return out, ms, calls, bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--M", type=int, default=10, help="items per list")
    ap.add_argument("--target", default="base", help="target preset")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--N", type=int, default=8, help="tree nodes per level")
    ap.add_argument("--gamma", type=int, default=4, help="tree depth")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same script on the CPU: tiny models, few users, eager")
    args = ap.parse_args()
    dev, t0 = ("cpu" if args.cpu_smoke else "cuda"), time.time()
    if args.cpu_smoke:
        args.users, args.target, args.steps = 6, "tiny", 5
    cat = open_catalog(args.data)
    tmp = tempfile.mkdtemp(prefix="recspec-greedy-")
    tgt_ckpt = trained(cat, args.target, args.steps, os.path.join(tmp, "t"), dev, 0)
    drf_ckpt = trained(cat, "draft", args.steps, os.path.join(tmp, "d"), dev, 1)
    table = NGramTable.build([sequence_tokens(cat.vocab, cat.index, h) for h in cat.data.train if h], (4, 3, 2), 4)
    c = ItemList(cat.trie, args.M).to(dev)
    hist = [e.history for e in cat.data.test[: args.users]]
    rows = []
    for precision, batch in (("fp32", 16), ("bf16", 1)):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        target = load_checkpoint(tgt_ckpt, device=dev)[0].eval()
        draft = load_checkpoint(drf_ckpt, device=dev)[0].eval()
        if precision == "bf16":
            target, draft = target.bf16_inference(), draft.bf16_inference()
        prompts = [build_prompts(cat.vocab, cat.index, hist[i:i + batch]).to(dev) for i in range(0, len(hist), batch)]
        ref = [greedy_decode(target, c, p) for p in prompts]  # plain greedy, eager: the reference
        width = max(p.tokens.shape[1] for p in prompts)
        base = DecodeConfig(K=1, engine=EngineConfig(cuda_graphs=dev == "cuda", prompt_width=width))
        plain = None
        for name, d in (("none", None), ("draft-model", draft), ("ngram", table)):
            cfg = base if d is None else base.replace(tree=TreeConfig(draft_beams=args.N, gamma=args.gamma))
            engine = build_engine(target, c, cfg, d)
            run_lists(engine, c, prompts[:3])  # warm-up: captures the graphs
            _, ms, calls, bad = run_lists(engine, c, prompts, ref)
            med = statistics.median(ms)
            plain = med if d is None else plain
            row = {"task": "list", "M": args.M, "precision": precision, "batch": batch, "mode": "greedy" if d is None
                   else "spec-greedy", **({"drafter": name} if d is not None else {}), "users": len(hist),
                   "graphs": dev == "cuda", "median_ms": round(med, 3), "target_calls": round(statistics.mean(calls), 3),
                   "tau": round(c.num_levels / statistics.mean(calls), 3), "mismatches": bad, "gate": False}
            if d is not None:
                row["speedup_vs_greedy"] = round(plain / med, 3)
            rows.append(row)
            print(row, flush=True)
    path = write_results(rows, os.path.join(args.out, "gpu_greedy_lists.json"), dev,
                         command="PYTHONPATH=src python3 " + " ".join(sys.argv),
                         extra={"target": args.target, "steps": args.steps, "seconds": round(time.time() - t0, 1)})
    print(f"results: {path}")
    print(f"{'prec':5s} {'b':>3s} {'mode':12s} {'drafter':12s} {'ms':>9s} {'calls':>6s} {'tau':>5s} {'mis':>4s} {'x':>6s}")
    for r in rows:
        print(f"{r['precision']:5s} {r['batch']:3d} {r['mode']:12s} {r.get('drafter', ''):12s} {r['median_ms']:9.3f} "
              f"{r['target_calls']:6.2f} {r['tau']:5.2f} {r['mismatches']:4d} {r.get('speedup_vs_greedy', 1.0):6.2f}")


if __name__ == "__main__":
    main()
