"""Draft-tree shape sweep: one AR run, then strict speculative beam search for each (N, gamma, expand),
on the same models and users; median ms, speedup over AR, acceptance, mismatches, Recall/NDCG.

    PYTHONPATH=src python bench/tree_sweep.py --data ../shared/datasets/beauty --target T --draft D \
        --K 10 --grid 20:2:1,40:1:2 --users 100 --out bench/results/tree_sweep_cpu.json

A grid entry is N:gamma:expand[:widths], where gamma may be a depth schedule by starting level, e.g.
40:1/3/2:0 (depth 1 from level 0, 3 from level 1, 2 from level 2 on) and widths the most nodes per SID
level, e.g. 40:1/3/2:0:40/16/16; or auto[:BUDGET]: the shape derived from the catalogue's trie and K
(within BUDGET tree nodes per call). Works on the CPU (eager) or CUDA (--cuda-graphs).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import DecodeConfig, TreeConfig, parse_depths  # noqa: E402
from recspec.evaluation.bench import BenchConfig, engine_call, make_engine, row_for, time_calls  # noqa: E402
from recspec.evaluation.evaluate import target_sids  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.models.hf import check_fits, load_checkpoint  # noqa: E402
from recspec.recommender import Recommender  # noqa: E402


def parse_grid(text: str) -> list[TreeConfig]:
    """'auto,auto:128,40:2:1,40:1/3/2:0:40/16' -> one TreeConfig per entry: the auto shape (default budget,
    then 128), N 40 depth 2 expand 1, and N 40 with depths (1, 3, 2) by starting level, expand 0, at most
    40 nodes at SID level 1 and 16 at level 2."""
    out = []
    for part in text.split(","):
        try:
            if part.split(":")[0] == "auto":
                budget = part.split(":")[1:]
                out.append(TreeConfig(budget=int(budget[0]) if budget else None))
                continue
            n, g, e, *w = part.split(":")
            depths, widths = parse_depths(g, "/"), parse_depths(w[0], "/", "widths") if w else ()
            out.append(TreeConfig(draft_beams=int(n), gamma=depths[-1], depths=depths, expand=float(e), widths=widths))
        except (ValueError, IndexError):
            raise SystemExit(f"--grid entry {part!r}: expected auto, auto:BUDGET or N:gamma:expand[:widths], e.g. 40:2:1 "
                             "or 40:1/3/2:0:40/16")
    return out


def sweep(target, catalog, draft, examples, K: int, batch: int, grid, users: int, warmup: int, device: str,
          graphs: bool) -> list[dict]:
    """-> rows: "ar" first, then one "spec-strict" row per grid entry (with its tree: draft_beams, depths, widths, ...)."""
    gt = target_sids(catalog.trie, examples)
    batches = [list(range(s, s + batch)) for s in range(0, users - users % batch or batch, batch)]
    base = BenchConfig(decode=DecodeConfig().replace(cuda_graphs=graphs))
    ar = time_calls(engine_call(make_engine("ar", target, None, catalog, K, base, batch), catalog, examples, device),
                    batches, warmup, device)
    rows = [row_for("ar", base.cell("ar", K, batch), ar, gt, None)]
    for tree in grid:
        cfg = replace(base, decode=replace(base.decode, tree=tree))
        eng = make_engine("spec-strict", target, draft, catalog, K, cfg, batch)
        run = time_calls(engine_call(eng, catalog, examples, device), batches, warmup, device)
        row = row_for("spec-strict", cfg.cell("spec-strict", K, batch), run, gt, ar, shape=eng.shape)
        row.update(tree="given" if tree.explicit else "auto", speedup_vs_ar=round(rows[0]["median_ms"] / row["median_ms"], 3))
        rows.append(row)
        print(f"K={K:2d} N={row['draft_beams']:3d} depths={row['depths']:9s} widths={row['widths']:15s} "
              f"expand={row['expand']:3.1f}  {row['median_ms']:8.2f} ms  "
              f"x{row['speedup_vs_ar']:.3f} vs AR ({rows[0]['median_ms']:.2f} ms)  calls {row['target_calls']:.2f}  "
              f"mismatches {row['mismatches']}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/beauty")
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True, help="draft checkpoint, or 'trie' (the model-free trie drafter)")
    ap.add_argument("--K", type=int, nargs="+", default=[10])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--grid", default="auto,20:2:1,20:3:1,20:4:1,30:2:1,40:1:2,40:2:1,40:3:1")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--out", default="bench/results/tree_sweep.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rec = Recommender.load(args.data, args.target, None, index_dir=os.path.dirname(os.path.normpath(args.target)),
                           device=args.device)
    if args.draft == "trie":  # the model-free trie drafter
        draft = "trie"
    else:
        draft, meta = load_checkpoint(args.draft, device=args.device)
        check_fits(meta, rec.catalog.vocab, rec.catalog.index.fingerprint(), args.draft)
        draft = draft.eval()
    examples = list(rec.catalog.data.test)
    rows = []
    for K in args.K:
        rows += sweep(rec.target, rec.catalog, draft, examples, K, args.batch, parse_grid(args.grid), args.users, args.warmup,
                      args.device, args.cuda_graphs)
    path = write_results(rows, args.out, args.device, command="PYTHONPATH=src python3 " + " ".join(sys.argv))
    print("results:", path)


if __name__ == "__main__":
    main()
