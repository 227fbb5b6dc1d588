"""User-aware retrieval pools for greedy item lists (LASER's customized pools, issue 20 point 6), on the CPU.

The user-side "knowledge" is the user's greedy list of M items (`ItemList`, the engine at K = 1). One command:

  1. A listwise target trained here for a fixed, seeded number of steps (train + valid), weights only.
  2. Users: the test users' histories, embedded collaboratively (PPMI item embeddings of the training
     sequences, a user = the normalised sum of her history's items), grouped three ways: k-means with the
     paper's k (`PAPER_USER_CLUSTERS`), random groups of the same sizes (the control), one global group.
  3. Pool users (test users after the first `--eval-users`): their plain greedy lists, each inserted as
     prompt tail + list tokens into the pool of its user's group; every grouping compiles to one table.
  4. Evaluated users (the first `--eval-users`, none of them in a pool), batch 16, and the first
     `--single-users` of them at batch 1: plain greedy AR (pool "none") and retrieval speculation routed to
     the user's group pool, the modes taking turns on each batch. Per row: tau (tokens per target call),
     median ms per call after warm-up, speedup over AR (same run, same model, same batches), the table
     lookup's ms per step on the run's own contexts (and the research-style host walk's), users whose list
     differs from plain greedy (`greedy_decode`, same batches: must be 0), Recall/NDCG@10 of the lists with
     bootstrap intervals; list_overlap: the share of items two pool lists of one group have in common;
     pool_size: the mean, over the users, of the lists in the pool each is routed to; pool_nodes: the
     n-gram nodes of all the grouping's pools.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 bench/listwise_retrieval.py --data ../shared/datasets/beauty
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import CPU_TREE_BUDGET, DecodeConfig, ModelConfig, TrainConfig  # noqa: E402
from recspec.data.catalog import Catalog, open_catalog  # noqa: E402
from recspec.data.vocab import Prompts, build_prompts  # noqa: E402
from recspec.decoding.constraints import ItemList  # noqa: E402
from recspec.decoding.engine import SpecEngine, build_engine  # noqa: E402
from recspec.decoding.greedy import greedy_decode  # noqa: E402
from recspec.evaluation.evaluate import target_sids  # noqa: E402
from recspec.evaluation.listwise import interval_metrics  # noqa: E402
from recspec.evaluation.report import device_name, write_results  # noqa: E402
from recspec.evaluation.timing import sync  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.models.hf import load_checkpoint  # noqa: E402
from recspec.retrieval.cost import host_draft_ms, table_lookup_ms  # noqa: E402
from recspec.retrieval.embeddings import item_embeddings, user_embeddings  # noqa: E402
from recspec.retrieval.groups import (PAPER_USER_CLUSTERS, Grouping, global_group, kmeans_groups,  # noqa: E402
                                      random_groups, summarize)
from recspec.retrieval.pools import Pools  # noqa: E402
from recspec.training.train import train  # noqa: E402

POOL_BATCH = 128  # users per plain greedy call when generating the pools' lists (not timed)


def train_target(cat: Catalog, preset: str, steps: int, out_dir: str) -> Decoder:
    """The listwise target: `steps` seeded optimiser steps on train + valid, then loaded back (eval mode)."""
    torch.manual_seed(0)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup_steps=min(100, steps), eval_every=steps,
                      eval_users=200, fit="train+valid", optimizer_state=False, seed=0, threads=1)
    model = Decoder(ModelConfig.preset(cat.vocab.size, preset, max_positions=256))
    ckpt = train(model, cat.data, cat.index, cat.vocab, cat.trie, cfg, out_dir, progress=False).checkpoint
    return load_checkpoint(ckpt, device="cpu")[0].eval()


def groupings(cat: Catalog, hist: list[list[int]], seed: int) -> tuple[dict[str, Grouping], np.ndarray]:
    """Users 0..U-1 (rows of `hist`) grouped: kmeans (k = PAPER_USER_CLUSTERS), random (same sizes), global."""
    emb = user_embeddings(hist, item_embeddings(cat.data.train, cat.data.num_items, seed=seed))  # (U, d)
    km = kmeans_groups(emb, PAPER_USER_CLUSTERS, seed=seed)
    return {"global": global_group(range(len(hist))), "kmeans": km, "random": random_groups(km, seed, emb)}, emb


def list_sequences(target: Decoder, c: ItemList, prompts: Prompts, context: int) -> list[list[int]]:
    """Each user's plain greedy list as the pools store it: her prompt's last `context` tokens, then the list."""
    codes = greedy_decode(target, c, prompts).codes[:, 0]  # (B, M * (L + 1))
    tails = prompts.tokens[:, -context:]  # (B, c) prompts are left-padded: the tail is the history's end
    return torch.cat([tails, codes], dim=1).tolist()


def list_overlap(g: Grouping, users: list[int], items: np.ndarray) -> float:
    """The share of items two pool lists of the same group have in common, over all such pairs:
    sum_g sum_i n_g(i) (n_g(i) - 1) / (M sum_g n_g (n_g - 1)), n_g(i) the group's lists holding item i, n_g its
    lists. items (P, M) SID rows of the pool users' lists (-1: no item); 1: every list alike, ~0: disjoint."""
    grp = np.array([g.of[u] for u in users])  # (P,)
    shared = pairs = 0.0
    for k in range(g.num_groups):
        rows = items[grp == k]
        n = np.bincount(rows[rows >= 0]).astype(np.float64)
        shared, pairs = shared + (n * (n - 1)).sum(), pairs + len(rows) * (len(rows) - 1)
    return float(shared / (pairs * items.shape[1])) if pairs else float("nan")


def build_pools(g: Grouping, users: list[int], seqs: list[list[int]], context: int, depth: int) -> Pools:
    pools = Pools(context=context, depth=depth)
    for u, seq in zip(users, seqs):
        pools.insert(g.of[u], seq)
    return pools


@dataclass
class Timed:
    """One mode's lists, target calls and wall ms per call over the evaluated batches."""

    codes: list[torch.Tensor] = field(default_factory=list)  # per batch (B, n)
    calls: list[torch.Tensor] = field(default_factory=list)  # per batch (B,)
    ms: list[float] = field(default_factory=list)  # per timed call


def run_interleaved(engines: dict[str, SpecEngine], batches: list[Prompts],
                    routes: dict[str, list[torch.Tensor] | None], warmup: int) -> dict[str, Timed]:
    """Every batch through every engine in turn (mode after mode on the same batch, so drift in the machine's
    speed reaches all modes alike), after `warmup` untimed rounds of the same; users routed to their pools."""
    out = {name: Timed() for name in engines}
    passes = [(i, False) for i in range(min(warmup, len(batches)))] + [(i, True) for i in range(len(batches))]
    for i, timed in passes:
        for name, engine in engines.items():
            if routes[name] is not None:
                engine.drafter.route(routes[name][i])
            sync(batches[i].tokens.device)
            t0 = time.perf_counter()
            res, stats = engine.run(batches[i])
            res.sids.tolist()  # host sync: the lists reach the caller
            ms = (time.perf_counter() - t0) * 1e3
            if timed:
                out[name].codes.append(res.codes[:, 0])
                out[name].calls.append(stats.target_calls())
                out[name].ms.append(ms)
    return out


def step_contexts(batches: list[Prompts], ref: torch.Tensor, B: int, c: int) -> torch.Tensor:
    """(n, B, c): the first B evaluated users' context before each of their list's n tokens (prompt, then list)."""
    tails = torch.cat([p.tokens[:, -c:] for p in batches])[:B]  # (B, c) left-padded prompts end together
    seq = torch.cat([tails, ref[:B]], dim=1)  # (B, c + n)
    return torch.stack([seq[:, s:s + c] for s in range(ref.shape[1])])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/datasets/beauty")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--target", default="demo", help="target preset")
    ap.add_argument("--target-steps", type=int, default=1500, help="seeded training steps of the target")
    ap.add_argument("--M", type=int, default=10, help="items per list")
    ap.add_argument("--eval-users", type=int, default=512,
                    help="first test users, decoded at batch 16 (never in a pool)")
    ap.add_argument("--single-users", type=int, default=96, help="the first of them decoded at batch 1")
    ap.add_argument("--pool-users", type=int, default=0,
                    help="test users after the evaluated ones whose lists fill the pools (0: all)")
    ap.add_argument("--N", type=int, default=4, help="tree nodes per level")
    ap.add_argument("--gamma", type=int, default=0, help="tree depth (0: one item, L + 1 tokens)")
    ap.add_argument("--budget", type=int, default=CPU_TREE_BUDGET, help="draft tokens per table tree")
    ap.add_argument("--context", type=int, default=2, help="tokens a table key holds (longest match wins)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per mode and batch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    log = lambda *a: print(f"[{time.time() - t0:5.0f} s]", *a, flush=True)  # noqa: E731
    cat = open_catalog(args.data)
    target = train_target(cat, args.target, args.target_steps, tempfile.mkdtemp(prefix="recspec-lr-"))
    log("target trained")
    c, L = ItemList(cat.trie, args.M), cat.trie.num_levels
    gamma = args.gamma or L + 1
    tests = cat.data.test
    E = min(args.eval_users, len(tests))
    pool_end = len(tests) if not args.pool_users else min(len(tests), E + args.pool_users)
    hist = [e.history for e in tests[:pool_end]]
    groups, emb = groupings(cat, hist, args.seed)
    pool_users = list(range(E, pool_end))
    seqs = []
    for i in range(E, pool_end, POOL_BATCH):
        seqs += list_sequences(target, c, build_prompts(cat.vocab, cat.index, hist[i:i + POOL_BATCH]), args.context)
    log(f"{len(seqs)} pool lists generated")
    items = c.outputs(torch.tensor(seqs)[:, None, args.context:])[:, 0].numpy()  # (P, M) the pool lists' items
    about = {k: {"pool_summary": summarize(g, emb, args.seed).line(),
                 "list_overlap": round(list_overlap(g, pool_users, items), 4)} for k, g in groups.items()}
    pools = {k: build_pools(g, pool_users, seqs, args.context, gamma) for k, g in groups.items()}
    tables = {k: p.compile(budget=args.budget, width=args.N, depth=gamma) for k, p in pools.items()}
    truth = target_sids(cat.trie, tests[:E])
    cfg = DecodeConfig(K=1).replace(draft_beams=args.N, gamma=gamma)
    rows = []
    for batch, users in ((1, min(args.single_users, E)), (16, E)):
        rows += measure_batch(target, c, cat, hist, users, batch, groups, pools, tables, pool_users, cfg, truth,
                              args)
        log(f"batch {batch} done")
    rows = [{**r, **about.get(r["pool"], {})} for r in rows]
    write(rows, args, t0, pool_users, groups, cat)


def measure_batch(target, c, cat, hist, users, batch, groups, pools, tables, pool_users, cfg, truth,
                  args) -> list[dict]:
    """AR greedy and each grouping's retrieval speculation on the first `users` users at `batch` -> rows."""
    batches = [build_prompts(cat.vocab, cat.index, hist[i:min(i + batch, users)]) for i in range(0, users, batch)]
    ref = torch.cat([greedy_decode(target, c, p).codes[:, 0] for p in batches])  # (U, n) plain greedy
    common = {"task": "listwise-retrieval", "mode": "greedy", "batch": batch, "users": users, "M": args.M,
              "N": args.N, "gamma": cfg.tree.gamma, "budget": args.budget, "context": args.context}
    engines = {"none": build_engine(target, c, DecodeConfig(K=1), None)}
    routes = {"none": None}
    for name, g in groups.items():
        engines[name] = build_engine(target, c, cfg, tables[name])
        routes[name] = [torch.tensor([g.of[u] for u in range(i, min(i + batch, users))])
                        for i in range(0, users, batch)]
    timed = run_interleaved(engines, batches, routes, args.warmup)
    ar = statistics.median(timed["none"].ms)
    ar_codes = torch.cat(timed["none"].codes)
    rows = [{**common, "pool": "none", "pool_size": 0, "pool_nodes": 0, "tau": 1.0, "median_ms": round(ar, 3),
             "speedup_vs_ar": 1.0, "retrieval_ms": 0.0, "mismatches": mismatches(ar_codes, ref),
             **quality(c, ar_codes, truth[:users], args.M)}]
    ctx = step_contexts(batches, ref, batch, args.context)  # (n, B, c) the run's own contexts
    for name, g in groups.items():
        t, routed = timed[name], torch.cat(routes[name])  # routed (U,): each evaluated user's group
        codes, calls, ms = torch.cat(t.codes), torch.cat(t.calls).float(), statistics.median(t.ms)
        lists = pool_lists(g, pool_users)  # (G,) lists in each group's pool
        lookup = table_lookup_ms(tables[name], routed[:batch], ctx)
        host = host_draft_ms(pools[name], routed[:batch].tolist(), ctx.tolist(), args.budget, args.N, cfg.tree.gamma)
        rows.append({**common, "pool": name, "pool_size": round(float(lists[routed].mean()), 1),
                     "pool_lists": lists.tolist(), "pool_nodes": sum(pools[name].num_nodes.values()),
                     "tau": round(c.num_levels / float(calls.mean()), 3), "target_calls": round(float(calls.mean()), 3),
                     "median_ms": round(ms, 3), "speedup_vs_ar": round(ar / ms, 3),
                     "retrieval_ms": round(lookup, 4), "retrieval_host_ms": round(host, 4),
                     "mismatches": mismatches(codes, ref), **quality(c, codes, truth[:users], args.M)})
        print(rows[-1], flush=True)
    return rows


def pool_lists(g: Grouping, pool_users: list[int]) -> torch.Tensor:
    """(G,) how many pool users' lists each group's pool holds."""
    return torch.bincount(torch.tensor([g.of[u] for u in pool_users]), minlength=g.num_groups).double()


def mismatches(codes: torch.Tensor, ref: torch.Tensor) -> int:
    """Users whose list (U, n) differs from plain greedy's anywhere."""
    return int((codes != ref).any(dim=1).sum())


def quality(c: ItemList, codes: torch.Tensor, truth, M: int) -> dict:
    lists = c.outputs(codes[:, None])[:, 0].tolist()  # (U, M) SID rows in generated order
    return interval_metrics(lists, truth, M)


def write(rows, args, t0, pool_users, groups, cat) -> None:
    cpu = device_name("cpu").split(",")[0]
    device = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread"
    path = write_results(rows, os.path.join(args.out, f"listwise_retrieval_{cat.data.name}_cpu.json"), "cpu",
                         command="OMP_NUM_THREADS=1 PYTHONPATH=src python3 " + " ".join(sys.argv),
                         extra={"device": device, "target": args.target, "target_steps": args.target_steps,
                                "pool_users": len(pool_users), "groups": {k: list(g.sizes) for k, g in groups.items()},
                                "seconds": round(time.time() - t0, 1)})
    png = plot(path)
    print(f"results: {path}\nplot: {png}")
    print(f"{'pool':7s} {'b':>3s} {'size':>7s} {'nodes':>7s} {'tau':>6s} {'ms':>8s} {'x':>6s} {'ret_ms':>7s} "
          f"{'mis':>4s} {'R@10':>7s}")
    for r in rows:
        print(f"{r['pool']:7s} {r['batch']:3d} {r['pool_size']:7} {r['pool_nodes']:7d} {r['tau']:6.3f} "
              f"{r['median_ms']:8.2f} {r['speedup_vs_ar']:6.3f} {r['retrieval_ms']:7.4f} {r['mismatches']:4d} "
              f"{r[f'recall@{args.M}']:7.4f}")


def plot(path: str) -> str:
    """tau and speedup over AR per pool, batch 1 and 16, from the results JSON -> the PNG's path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        doc = json.load(f)
    rows = doc["rows"]
    pools = [p for p in ("none", "global", "kmeans", "random") if any(r["pool"] == p for r in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("tau", "speedup_vs_ar", "retrieval_ms"),
                              ("tokens per target call (tau)", "speedup over greedy AR", "table lookup ms / step")):
        for k, b in enumerate(sorted({r["batch"] for r in rows})):
            vals = [next((r[key] for r in rows if r["pool"] == p and r["batch"] == b), 0.0) for p in pools]
            ax.bar(np.arange(len(pools)) + 0.4 * k - 0.2, vals, 0.4, label=f"batch {b}")
        ax.set_xticks(range(len(pools)), pools)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"greedy item lists, retrieval pools per user group ({doc['device']})", fontsize=9)
    fig.tight_layout()
    png = path[:-5] + ".png"
    fig.savefig(png, dpi=110)
    return png


if __name__ == "__main__":
    main()
