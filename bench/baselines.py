"""Baselines on one split of a dataset: popularity, item transitions and SASRec, scored by SID rows as the
generative models are (`evaluate_item_rankings`), with bootstrap intervals over users and paired
differences against the transition baseline. Writes JSON rows, one per model.

    PYTHONPATH=src python bench/baselines.py --data ../shared/datasets/beauty --split test \
        --steps 1500 --eval-every 250 --hidden 64 --dropout 0.2 --lr 1e-3 --out bench/results/baselines_beauty_cpu.json

Every baseline is fitted on `data.fit_sequences(split)`; "transition@train" is the transition baseline
fitted on the train period only, for comparison. SASRec is tuned on the valid split over the grid
given (--hidden/--dropout/--lr, comma lists), then refit for the test split (`training.fit_baselines`).
Times are wall-clock seconds on this machine, measured here, around whole library calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.evaluation.baselines import fit_transitions  # noqa: E402
from recspec.evaluation.evaluate import evaluate_item_rankings, item_sid_rows, target_sids  # noqa: E402
from recspec.evaluation.intervals import bootstrap_ci, paired_difference  # noqa: E402
from recspec.evaluation.metrics import per_user_metrics  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.training.fit_baselines import SASRecSetup, fit_and_rank_baselines  # noqa: E402
from recspec.training.sasrec import SASRecGrid, SASRecTrainConfig  # noqa: E402

KS = (1, 5, 10, 20)
CI_K = 10  # intervals and paired differences at this cut-off


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--no-sasrec", action="store_true")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-users", type=int, default=0)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--hidden", default="64")
    p.add_argument("--dropout", default="0.2")
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--last", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    return p.parse_args()


def setup_from(args: argparse.Namespace) -> SASRecSetup:
    train = SASRecTrainConfig(steps=args.steps, batch_size=args.batch_size, warmup_steps=args.warmup, seed=args.seed,
                              eval_every=args.eval_every, eval_users=args.eval_users, patience=args.patience)
    grid = SASRecGrid(hidden=tuple(int(h) for h in floats(args.hidden)), dropout=floats(args.dropout), lr=floats(args.lr))
    return SASRecSetup(train=train, grid=grid, layers=args.layers, max_len=args.max_len)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    cat = open_catalog(args.data)
    data, trie = cat.data, cat.trie
    examples = data.valid if args.split == "valid" else data.test
    t0 = time.perf_counter()
    res = fit_and_rank_baselines(data, args.split, max(KS), None if args.no_sasrec else setup_from(args),
                                 args.device, args.window, args.last)
    fit_s = time.perf_counter() - t0
    rankings = dict(res.rankings)
    if args.split == "test":
        rankings["transition@train"] = fit_transitions(data.train, data.num_items, args.window).rank(
            [e.history for e in examples], max(KS), args.last)
    gt = target_sids(trie, examples)
    per_user = {m: per_user_metrics(item_sid_rows(trie, r), gt, CI_K) for m, r in rankings.items()}
    rows = []
    for model, ranked in rankings.items():
        row = {"model": model, "split": args.split, **evaluate_item_rankings(trie, examples, ranked, KS)}
        for metric, values in per_user[model].items():
            row[f"{metric}_ci95"] = bootstrap_ci(values, seed=args.seed)
            if model != "transition":
                d = paired_difference(values, per_user["transition"][metric], seed=args.seed)
                row[f"{metric}_minus_transition"] = {"diff": d.diff, "lo": d.lo, "hi": d.hi, "significant": d.significant}
        row["info"] = res.info.get(model, {})
        rows.append(row)
        print(f"{model:17s} R@10 {row['recall@10']:.4f} {row['recall@10_ci95'][0]:.4f}-{row['recall@10_ci95'][1]:.4f}"
              f"  N@10 {row['ndcg@10']:.4f}  R@20 {row['recall@20']:.4f}  N@20 {row['ndcg@20']:.4f}  users {row['users']}")
    if "sasrec" in res.info:
        info = res.info["sasrec"]
        for t in info["trials"]:
            curve = " ".join(f"{p['step']}:{p['recall@10']:.4f}/{p['ndcg@10']:.4f}" for p in t["curve"])
            print(f"sasrec h={t['hidden']} p={t['dropout']} lr={t['lr']}: best step {t['best_step']}  curve {curve}")
        steps = sum(t["steps_run"] for t in info["trials"]) + info.get("refit_steps", 0)
        print(f"fit (all models) {fit_s:.1f}s; SASRec steps {steps}, {100 * fit_s / max(1, steps):.2f}s per 100 steps "
              "(upper bound: includes validation and the cheap baselines)")
    if args.out:
        write_results(rows, args.out, args.device, extra={"fit_seconds": fit_s, "data": args.data})


if __name__ == "__main__":
    main()
