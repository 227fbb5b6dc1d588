"""Knowledge generation on a GPU (LASER, issue 20), one command: the text model (trained here, or --model), its
quality gate, every item's greedy text, then speed and agreement of retrieval drafting on the new items.

    PYTHONPATH=src python bench/gpu_knowledge.py --data .data/office --out OUT [--model CKPT | training flags]

Steps (all fp32, TF32 off, so greedy speculation can be compared with plain greedy token for token):
1. The model: --model, else train the tokenizer and LM on the old items (flags as bench/knowledge_gate.py).
2. The gate: perplexity on the new items' descriptions against interpolated KN n-gram models of orders
   2..5 fitted on the old items (`evaluation.text_gate`); rows carry gate = passed against every order.
3. Plain greedy decoding (no drafter) of every item, batch 64: the reference texts, written to
   OUT/knowledge_greedy.jsonl. The old items' texts fill the pools ("old knowledge").
4. Pools global / category / kmeans / random at pool fractions (share of the old texts), greedy and relaxed
   (k=2, beta=0.1): each new item at batch 1 (the first --b1-items) and all new items at batch 16, under CUDA
   graphs, against plain greedy decoding of the same items in the same run: median ms, speedup_vs_ar (sum of
   AR times / sum of speculative times, same items), tau (generated tokens per target call), mismatches
   (texts differing from plain greedy), acceptance per position, retrieval_ms (the table lookup per step).
5. Every item's relaxed text with category pools (batch 64) as `recspec knowledge generate --mode relaxed`
   makes it (pools warmed with the old items' descriptions, then learning each batch's texts):
   OUT/knowledge_relaxed.jsonl, for the downstream check on the CPU (bench/ctr_check.py) and the cosine.
Writes OUT/gpu_knowledge.json (rows) and prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import ModelConfig  # noqa: E402
from recspec.data.knowledge import encode_knowledge, load_knowledge_corpus, train_knowledge_tokenizer  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.evaluation.text_gate import fit_ngram, knowledge_gate  # noqa: E402
from recspec.evaluation.timing import graph_ms, sync  # noqa: E402
from recspec.knowledge import (Generated, KnowledgeConfig, KnowledgeGenerator, collaborative_embeddings,  # noqa: E402
                               item_grouping, open_knowledge)
from recspec.retrieval.cost import host_draft_ms, table_lookup_ms  # noqa: E402
from recspec.training.knowledge_lm import train_knowledge_lm  # noqa: E402
from recspec.training.text_lm import TextLMConfig, load_text_lm  # noqa: E402

POOL_KINDS = ("global", "category", "kmeans", "random")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None, help="a text LM checkpoint folder (skips training)")
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--vocab-size", type=int, default=0)
    p.add_argument("--orders", default="2,3,4,5")
    p.add_argument("--fractions", default="0.25,1.0", help="pool sizes: shares of the old items' texts")
    p.add_argument("--pools", default=",".join(POOL_KINDS), help="pool kinds of the grid")
    p.add_argument("--relaxed-all", type=int, default=1, help="1: step 5, every item's relaxed text; 0: skip it")
    p.add_argument("--b1-items", type=int, default=48)
    p.add_argument("--new-items", type=int, default=0, help="batch-16 items (0: every new item)")
    p.add_argument("--all-items", type=int, default=0, help="items of the full greedy / relaxed passes (0: all)")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--budget", type=int, default=32)
    p.add_argument("--big-tree", default="8,12,64", help="width,depth,budget of a second tree for the category pool "
                   "at fraction 1 ('' for none): the paper's 64 draft tokens, depth <= 12")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-smoke", action="store_true", help="the same script on the CPU, tiny: a tiny model trained "
                   "60 steps, 60 items, one pool fraction, eager rounds (checks the script before device time)")
    args = p.parse_args()
    if args.cpu_smoke:
        args.device, args.size, args.steps, args.b1_items, args.new_items = "cpu", "tiny", 60, 2, 8
        args.all_items, args.fractions, args.orders, args.big_tree, args.depth = 60, "1.0", "2", "", 4
    return args


def stamp(t0: float, what: str) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {what}", flush=True)


def model_and_items(args, t0):
    if args.model:
        model, tok = load_text_lm(args.model, device=args.device)
        return model.eval(), tok, None
    corpus = load_knowledge_corpus(args.data, seed=args.seed)
    tok = train_knowledge_tokenizer(corpus, args.vocab_size or None)
    items = encode_knowledge(corpus, tok)
    max_len = max(len(p) + len(o) for p, o in zip(items.prompts, items.outputs))
    model_cfg = ModelConfig.preset(tok.vocab_size, args.size, max_positions=max_len, dropout=args.dropout)
    cfg = TextLMConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       max_len=max_len, eval_every=args.steps, precision="fp32", seed=args.seed)
    model, result = train_knowledge_lm(items, tok, model_cfg, cfg, os.path.join(args.out, "lm"), device=args.device)
    stamp(t0, f"trained {args.size} {result.steps} steps: loss old {result.train_loss:.3f} new {result.heldout_loss:.3f}")
    return model.eval(), tok, result


def run_all(gen: KnowledgeGenerator, batches: list[list[int]]) -> tuple[dict[int, Generated], list[float], list]:
    """Each batch timed with a device sync around it -> (texts by item, ms per batch, per-batch stats)."""
    out, ms, accepted = {}, [], []
    for ids in batches:
        sync(gen.device)
        t = time.perf_counter()
        done = gen.run_batch(ids)
        sync(gen.device)
        ms.append((time.perf_counter() - t) * 1e3)
        out.update({g.item: g for g in done})
        accepted.append(gen.last_stats.table())  # (B, rounds) accepted levels, -1 inactive
    return out, ms, accepted


def tau(texts: dict[int, Generated]) -> float:
    """Generated tokens (<eos> included) per target call, over all items."""
    toks = sum(min(len(g.tokens) + 1, MAX_OUT) for g in texts.values())
    return toks / max(1, sum(g.target_calls for g in texts.values()))


MAX_OUT = 128


def main() -> None:
    args = parse()
    t0 = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    model, tok, trained = model_and_items(args, t0)
    items, meta, inter = open_knowledge(args.data, tok, max_output=MAX_OUT)
    rows: list[dict] = []

    # 2. the gate
    gates = []
    for order in (int(x) for x in args.orders.split(",")):
        g = knowledge_gate(model, fit_ngram(items, tok.vocab_size, order), items, seed=args.seed)
        gates.append(g)
        rows.append({"task": "knowledge-gate", "ngram_order": order, "lm_ppl": g.lm_ppl, "ngram_ppl": g.ngram_ppl,
                     "passed": g.passed, "nll_diff": g.nll_diff, "nll_diff_ci": [g.lo, g.hi], "items": g.items,
                     "parameters": sum(p.numel() for p in model.parameters()),
                     **({"train_loss": trained.train_loss, "heldout_loss": trained.heldout_loss,
                         "steps": trained.steps} if trained else {})})
    gate = all(g.passed for g in gates)
    stamp(t0, "gate: " + ", ".join(f"KN{g.ngram_order} {g.ngram_ppl:.1f}" for g in gates)
          + f" vs LM {gates[0].lm_ppl:.1f} -> {'PASS' if gate else 'FAIL'}")

    # 3. plain greedy of every item (the reference), old texts for the pools
    def generator(pool: str, mode: str = "greedy", batch: int = 16, fraction: float = 1.0, graphs: bool = True,
                  grouping=None, tree=None, online: bool = False) -> KnowledgeGenerator:
        width, depth, budget = tree or (args.width, args.depth, args.budget)
        cfg = KnowledgeConfig(mode=mode, pool=pool, batch_size=batch, width=width, depth=depth, budget=budget,
                              pool_fraction=fraction, online=online, max_output=MAX_OUT,
                              seed=args.seed, cuda_graphs=graphs and args.device == "cuda")
        return KnowledgeGenerator(model, tok, items, cfg, grouping, emb)

    emb = collaborative_embeddings(meta, inter, args.seed)
    every = list(items.ids)[:args.all_items or None]
    old, new = [i for i in sorted(items.split.old) if i in set(every)], [i for i in sorted(items.split.new) if i in set(every)]
    ref_gen = generator("none", batch=64, graphs=False)
    ref, ref_ms, _ = run_all(ref_gen, ref_gen.schedule(every))
    write_jsonl(os.path.join(args.out, "knowledge_greedy.jsonl"), ref)
    stamp(t0, f"plain greedy of {len(ref)} items in {sum(ref_ms) / 1e3:.1f}s")

    # 4. the grid on the new items
    groupings = {k: item_grouping(k, meta, emb, args.seed) for k in set(args.pools.split(",")) | {"category"}}
    fractions = [float(x) for x in args.fractions.split(",")]
    sets = {1: new[:args.b1_items], 16: new[:args.new_items or None]}
    ar_runs = {}
    for batch, ids in sets.items():
        ar = generator("none", batch=batch)
        run_all(ar, ar.schedule(ids)[:1])  # warm-up: captures the graphs
        ar_texts, ar_ms, ar_acc = run_all(ar, ar.schedule(ids))
        step_ms = sum(ar_ms) / rounds(ar_acc)  # ms per target call of plain greedy
        ar_runs[batch] = (sum(ar_ms), step_ms)
        rows.append({"task": "knowledge", "batch": batch, "items": len(ids), "gate": gate, "precision": "fp32",
                     "graphs": args.device == "cuda", "mode": "greedy", "pool": "none",
                     "median_ms": statistics.median(ar_ms), "tau": tau(ar_texts), "speedup_vs_ar": 1.0,
                     "ar_step_ms": step_ms, "mismatches": sum(ar_texts[i].tokens != ref[i].tokens for i in ids)})
        stamp(t0, f"b{batch}: AR {sum(ar_ms) / 1e3:.1f}s, {step_ms:.3f} ms/step")
    grid = [(kind, fraction, None) for kind in args.pools.split(",") for fraction in fractions]
    if args.big_tree:
        grid.append(("category", 1.0, tuple(int(x) for x in args.big_tree.split(","))))
    for kind, fraction, tree in grid:
        pool = generator(kind, "greedy", 1, fraction, grouping=groupings[kind], tree=tree)
        pool.learn([ref[i] for i in old if keep(i, fraction, args.seed)])
        pool._engine()  # compiles the table once for every run below
        stamp(t0, f"pool {kind} {fraction}: {sum(pool.pools.num_nodes.values())} nodes, "
                  f"{pool.table.capacity} slots")
        for batch, ids in sets.items():
            ar_total, step_ms = ar_runs[batch]
            for mode in ("greedy", "relaxed"):
                gen = generator(kind, mode, batch, fraction, grouping=groupings[kind], tree=tree)
                gen.share_pools(pool)
                run_all(gen, gen.schedule(ids)[:1])  # warm-up: captures the graphs
                texts, ms, acc = run_all(gen, gen.schedule(ids))
                lookup, walk = lookup_ms(gen, texts, batch)
                differ = sum(texts[i].tokens != ref[i].tokens for i in ids)
                rows.append({"task": "knowledge", "batch": batch, "items": len(ids), "gate": gate,
                             "precision": "fp32", "graphs": args.device == "cuda", "mode": mode, "pool": kind,
                             "pool_fraction": fraction, "pool_size": sum(gen.pools.num_nodes.values()),
                             "table_slots": gen.table.capacity, "groups": gen.grouping.num_groups,
                             "median_ms": statistics.median(ms), "speedup_vs_ar": ar_total / sum(ms),
                             "tau": tau(texts), "retrieval_ms": lookup, "host_walk_ms": walk,
                             "retrieval_share_of_step": lookup / step_ms, "mismatches": differ,
                             "share_differing": differ / len(ids), "round_ms": sum(ms) / rounds(acc),
                             "ar_step_ms": step_ms, "acceptance_by_position": acceptance(acc, gen.cfg.depth),
                             "tree": [gen.cfg.width, gen.cfg.depth, gen.cfg.budget]})
                r = rows[-1]
                stamp(t0, f"b{batch} {mode} {kind} {fraction} {r['tree']}: x{r['speedup_vs_ar']:.2f} tau {r['tau']:.2f} "
                          f"mism {differ} round {r['round_ms']:.3f} ms lookup {lookup:.3f} walk {walk:.3f}")

    # 5. every item's relaxed text, category pools of the old texts
    if args.relaxed_all:
        rel = generator("category", "relaxed", 64, 1.0, graphs=False, grouping=groupings["category"], online=True)
        rel.warm(old)  # as `recspec knowledge generate --mode relaxed` does: the old descriptions, then online
        relaxed, _, _ = run_all(rel, rel.schedule(every))
        write_jsonl(os.path.join(args.out, "knowledge_relaxed.jsonl"), relaxed)
        rows.append({"task": "knowledge", "mode": "relaxed", "pool": "category", "batch": 64, "items": len(relaxed),
                     "gate": gate, "share_differing": sum(relaxed[i].tokens != ref[i].tokens for i in relaxed) / len(relaxed),
                     "tau": tau(relaxed)})
    path = write_results(rows, os.path.join(args.out, "gpu_knowledge.json"), args.device,
                         command="PYTHONPATH=src python " + " ".join(sys.argv))
    stamp(t0, f"wrote {path}")
    print(f"{'batch':>5} {'mode':8} {'pool':9} {'frac':>5} {'speedup':>7} {'tau':>5} {'mism':>5} {'lookup':>7}")
    for r in rows:
        if r.get("task") == "knowledge" and "speedup_vs_ar" in r:
            print(f"{r['batch']:>5} {r['mode']:8} {r['pool']:9} {r.get('pool_fraction', ''):>5} "
                  f"{r['speedup_vs_ar']:7.2f} {r['tau']:5.2f} {r['mismatches']:5d} {r.get('retrieval_ms', 0):7.3f}")


def keep(item: int, fraction: float, seed: int) -> bool:
    """A seeded, per-item choice of the old texts that fill a pool of the given fraction."""
    return fraction >= 1.0 or (hash((item, seed)) % 10_000) / 10_000 < fraction


def lookup_contexts(gen: KnowledgeGenerator, texts: dict[int, Generated], batch: int, steps: int = 32):
    """(steps, batch) contexts of real generated texts, each with its item's group: contexts (S, B, c) and
    groups (S, B) as lists."""
    c = gen.cfg.context
    pairs = [(gen.group(i), list(g.tokens[k:k + c])) for i, g in sorted(texts.items())
             for k in range(0, max(0, len(g.tokens) - c), 7)]
    rows = [pairs[(s * batch + b) * 13 % len(pairs)] for s in range(steps) for b in range(batch)]
    return ([[rows[s * batch + b][1] for b in range(batch)] for s in range(steps)],
            [[rows[s * batch + b][0] for b in range(batch)] for s in range(steps)])


def graph_lookup_ms(table, groups: torch.Tensor, ctx: torch.Tensor) -> float:
    """The lookup as the engine runs it on a GPU: captured in a CUDA graph, median of replays (ms)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            table.lookup(groups, ctx)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        table.lookup(groups, ctx)
    return graph_ms(graph)


def lookup_ms(gen: KnowledgeGenerator, texts: dict[int, Generated], batch: int) -> tuple[float, float]:
    """Retrieval per step at this batch on contexts of the texts: (the device table's lookup, the host walk of
    the pools' tries as the research code drafts) in ms, medians."""
    ctx, groups = lookup_contexts(gen, texts, batch)
    c = torch.tensor(ctx, device=gen.device)  # (S, B, c)
    g = torch.tensor(groups[0], dtype=torch.long, device=gen.device)
    table = table_lookup_ms(gen.table, g, c) if c.device.type != "cuda" else graph_lookup_ms(gen.table, g, c[0])
    host = host_draft_ms(gen.pools, groups[0], ctx[:8], gen.cfg.budget, gen.cfg.width, gen.cfg.depth)
    return table, host


def acceptance(tables: list[torch.Tensor], depth: int) -> list[float]:
    """Share of active rounds that accepted at least j drafted tokens, j = 1..depth (acceptance by position)."""
    a = torch.cat([t.reshape(-1) for t in tables])
    a = a[a >= 0]
    return [round(float((a >= j).float().mean()), 4) for j in range(1, depth + 1)] if a.numel() else []


def rounds(tables: list[torch.Tensor]) -> int:
    """Target calls of the batches (rounds where any row was active)."""
    return sum(int((t >= 0).any(dim=0).sum()) for t in tables)


def write_jsonl(path: str, texts: dict[int, Generated]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in sorted(texts):
            g = texts[i]
            f.write(json.dumps({"item": i, "text": g.text, "tokens": list(g.tokens), "target_calls": g.target_calls})
                    + "\n")


if __name__ == "__main__":
    main()
