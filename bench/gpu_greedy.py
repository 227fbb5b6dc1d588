"""Greedy tree speculation on the GPU, both tasks, in one command: exactness in fp32 under CUDA graphs, then
bf16 speeds, tau, mismatches and the relaxed top-k/beta rule's share of changed tokens.

  lists  Beauty: a target and a draft model trained here (seeded step counts), an n-gram table of the
         training histories; the first `--users` test users, lists of M items (`constraints.ItemList`).
  text   Office: a BPE tokenizer and two text LMs (target, draft) trained here on the old items'
         descriptions, an n-gram table of the old items; the first `--users` new items' first 6 tokens are
         continued for 24 tokens (`constraints.FreeText`).

Per task:
  1. fp32, TF32 off, batch 16, CUDA graphs: plain greedy through the engine and greedy speculation (draft
     model, n-gram) against eager plain greedy (`decoding.greedy`), item by item: mismatches must be 0.
  2. bf16 inference, batch 1 and 16, graph-replayed: median ms per call of plain greedy through the engine
     (our AR baseline, no tree) and of greedy speculation; target calls, tau (tokens per target call),
     mismatches against bf16 greedy; the top-k/beta rule (k = 2, beta = 0.1) with the draft model: the
     share of tokens that differ from greedy.
Lists carry Recall@M / NDCG@M with intervals against the test items. The targets are not gated (issue 16
is blocked): rows say gate false.

    PYTHONPATH=src python3 bench/gpu_greedy.py --out $OUT
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import DecodeConfig, EngineConfig, ModelConfig, TrainConfig, TreeConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.data.text import load_text_corpus, text_prompts, train_tokenizer  # noqa: E402
from recspec.data.vocab import BOS, EOS, PAD, Prompts, build_prompts, sequence_tokens  # noqa: E402
from recspec.decoding.constraints import FreeText, ItemList  # noqa: E402
from recspec.decoding.drafters import NGramTable  # noqa: E402
from recspec.decoding.engine import build_engine  # noqa: E402
from recspec.decoding.greedy import greedy_decode  # noqa: E402
from recspec.evaluation.evaluate import target_sids  # noqa: E402
from recspec.evaluation.listwise import interval_metrics  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.models.hf import load_checkpoint  # noqa: E402
from recspec.training.text_lm import TextLMConfig, train_text_lm  # noqa: E402
from recspec.training.train import train  # noqa: E402

TEXT_PREFIX, TEXT_LENGTH = 6, 24  # text: prompt tokens per item, tokens generated


@dataclass
class Task:
    """One task's models (fp32 checkpoints), drafter inputs and prompts, and how to score a list."""

    name: str
    constraint: object
    target_ckpt: str
    draft_ckpt: str
    table: NGramTable
    prompts: Callable[[int, str], list[Prompts]]  # (batch, device) -> prompt batches
    quality: Callable[[list[torch.Tensor]], dict] | None = None  # per-batch codes -> quality columns
    meta: dict | None = None


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()  # host sync: timing boundary


def run_all(engine, prompts: list[Prompts], ref=None):
    """Every batch through the engine -> (codes per batch, per-call ms, target calls per row, mismatching rows,
    differing tokens, tokens)."""
    out, ms, calls, bad, diff, total = [], [], [], 0, 0, 0
    for i, p in enumerate(prompts):
        sync(p.tokens.device.type)
        t0 = time.perf_counter()
        got, stats = engine.run(p)
        codes = got.codes.cpu()
        ms.append((time.perf_counter() - t0) * 1e3)
        out.append(codes)
        calls += stats.target_calls().tolist()
        if ref is not None:
            want = ref[i].codes.cpu()
            bad += int((~(codes == want).all(dim=-1).all(dim=-1)).sum())
            diff, total = diff + int((codes != want).sum()), total + codes.numel()
    return out, ms, calls, bad, diff, total


def list_task(args, dev: str, tmp: str) -> Task:
    cat = open_catalog(args.beauty)

    def trained(size: str, seed: int) -> str:
        torch.manual_seed(seed)
        model = Decoder(ModelConfig.preset(cat.vocab.size, size, max_positions=256)).to(dev)
        cfg = TrainConfig(steps=args.steps, batch_size=64, lr=1e-3, warmup_steps=min(50, args.steps), eval_every=args.steps,
                          eval_users=300, fit="train+valid", optimizer_state=False, seed=seed)
        return train(model, cat.data, cat.index, cat.vocab, cat.trie, cfg, os.path.join(tmp, f"list-{size}"),
                     progress=False).checkpoint

    tests = cat.data.test[: args.users]
    hist, truth = [e.history for e in tests], target_sids(cat.trie, tests)  # lists hold SID rows
    table = NGramTable.build([sequence_tokens(cat.vocab, cat.index, h) for h in cat.data.train if h], (4, 3, 2), 4)

    def prompts(batch: int, device: str) -> list[Prompts]:
        return [build_prompts(cat.vocab, cat.index, hist[i:i + batch]).to(device) for i in range(0, len(hist), batch)]

    def quality(codes: list[torch.Tensor]) -> dict:
        c = ItemList(cat.trie, args.M)  # on the CPU, as the codes
        lists = torch.cat([c.outputs(x) for x in codes])[:, 0].tolist()  # (U, M) item ids in generated order
        return interval_metrics(lists, truth, args.M)

    return Task("list", ItemList(cat.trie, args.M).to(dev), trained(args.target, 0), trained("draft", 1), table, prompts,
                quality, {"M": args.M, "dataset": "beauty"})


def text_task(args, dev: str, tmp: str) -> Task:
    corpus = load_text_corpus(args.office)
    tok = train_tokenizer(corpus)
    cfg = TextLMConfig(steps=args.text_steps, batch_size=64, lr=3e-3, warmup_steps=min(50, args.text_steps), max_len=64,
                       optimizer_state=False)
    ckpts = []
    for size, seed in ((args.text_target, 0), ("draft", 1)):
        mcfg = ModelConfig.preset(tok.vocab_size, size, max_positions=128)
        _, res = train_text_lm(corpus, tok, mcfg, TextLMConfig(**{**cfg.__dict__, "seed": seed}), os.path.join(tmp, f"text-{size}"),
                               device=dev)
        print(f"text {size}: heldout loss {res.heldout_loss_before:.3f} -> {res.heldout_loss:.3f}", flush=True)
        ckpts.append(res.checkpoint)
    table = NGramTable.build(tok.encode_many(corpus.old_texts(), max_len=64), (4, 3, 2), 4)
    items = text_prompts(tok.encode_many(corpus.new_texts()[: args.users], max_len=64), TEXT_PREFIX)

    def prompts(batch: int, device: str) -> list[Prompts]:
        p = items.prompts
        return [Prompts(p.tokens[i:i + batch], p.lengths[i:i + batch]).to(device) for i in range(0, p.tokens.shape[0], batch)]

    def quality(codes: list[torch.Tensor]) -> dict:
        """Share of generated tokens equal to the item's real next tokens (where it has them)."""
        gen = torch.cat(codes)[:, 0].tolist()
        hit = n = 0
        for g, rest in zip(gen, items.rest):
            m = min(len(g), len(rest))
            hit, n = hit + sum(a == b for a, b in zip(g[:m], rest[:m])), n + m
        return {"token_match": round(hit / max(n, 1), 4)}

    c = FreeText(vocab_size=tok.vocab_size, length=TEXT_LENGTH, eos=EOS, banned_tokens=(PAD, BOS)).to(dev)
    return Task("text", c, ckpts[0], ckpts[1], table, prompts, quality,
                {"length": TEXT_LENGTH, "dataset": "office", "vocab": tok.vocab_size})


def measure(task: Task, args, dev: str) -> list[dict]:
    rows = []
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    drafters = (("draft-model", "draft"), ("ngram", task.table))
    for precision, batches in (("fp32", (16,)), ("bf16", (1, 16))):
        target = load_checkpoint(task.target_ckpt, device=dev)[0].eval()
        draft = load_checkpoint(task.draft_ckpt, device=dev)[0].eval()
        if precision == "bf16":
            target, draft = target.bf16_inference(), draft.bf16_inference()
        for batch in batches:
            prompts = task.prompts(batch, dev)
            ref = [greedy_decode(target, task.constraint, p) for p in prompts]  # plain greedy, eager: the reference
            base = DecodeConfig(K=1, engine=EngineConfig(cuda_graphs=dev == "cuda",
                                                         prompt_width=max(p.tokens.shape[1] for p in prompts)))
            tree = TreeConfig(draft_beams=args.N, gamma=args.gamma)
            runs = [("greedy", None, base, None)]
            runs += [("spec-greedy", name, base.replace(tree=tree), draft if d == "draft" else d) for name, d in drafters]
            if precision == "bf16":
                runs.append(("spec-topk-beta", "draft-model",
                             base.replace(tree=tree, verify="topk-beta", accept_k=2, accept_beta=0.1), draft))
            plain = None
            for mode, name, cfg, d in runs:
                row = {"task": task.name, **task.meta, "precision": precision, "batch": batch, "mode": mode,
                       **({"drafter": name} if name else {}), "users": sum(p.tokens.shape[0] for p in prompts),
                       "graphs": dev == "cuda", "gate": False}
                try:
                    engine = build_engine(target, task.constraint, cfg, d)
                    run_all(engine, prompts[:3])  # warm-up: captures the graphs
                    codes, ms, calls, bad, diff, total = run_all(engine, prompts, ref)
                except Exception as e:  # one failing mode is recorded, the others still run
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    rows.append(row)
                    print(row, flush=True)
                    continue
                med = statistics.median(ms)
                plain = med if mode == "greedy" else plain
                row.update({"median_ms": round(med, 3), "target_calls": round(statistics.mean(calls), 3),
                            "tau": round(task.constraint.num_levels / statistics.mean(calls), 3), "mismatches": bad,
                            "tokens_differ": round(diff / max(total, 1), 5)})
                if mode != "greedy" and plain is not None:
                    row["speedup_vs_greedy"] = round(plain / med, 3)
                row.update(task.quality(codes) if task.quality else {})
                rows.append(row)
                print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beauty", default=".data/beauty")
    ap.add_argument("--office", default=".data/office")
    ap.add_argument("--tasks", default="list,text")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--users", type=int, default=200, help="test users (lists) / new items (text)")
    ap.add_argument("--M", type=int, default=10, help="items per list")
    ap.add_argument("--target", default="base", help="list target preset")
    ap.add_argument("--steps", type=int, default=1000, help="list models' training steps")
    ap.add_argument("--text-target", default="small", help="text target preset")
    ap.add_argument("--text-steps", type=int, default=1000, help="text models' training steps")
    ap.add_argument("--N", type=int, default=8, help="tree nodes per level")
    ap.add_argument("--gamma", type=int, default=4, help="tree depth")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same script on the CPU: tiny models, few users, eager")
    args = ap.parse_args()
    dev, t0 = ("cpu" if args.cpu_smoke else "cuda"), time.time()
    if args.cpu_smoke:
        args.users, args.target, args.text_target, args.steps, args.text_steps = 6, "tiny", "tiny", 5, 5
    tmp = tempfile.mkdtemp(prefix="recspec-greedy-")
    builders = {"list": list_task, "text": text_task}
    rows = []
    for name in args.tasks.split(","):
        task = builders[name](args, dev, tmp)
        print(f"{name}: trained at {time.time() - t0:.0f} s", flush=True)
        rows += measure(task, args, dev)
    path = write_results(rows, os.path.join(args.out, "gpu_greedy.json"), dev,
                         command="PYTHONPATH=src python3 " + " ".join(sys.argv),
                         extra={"list_target": args.target, "steps": args.steps, "text_target": args.text_target,
                                "text_steps": args.text_steps, "seconds": round(time.time() - t0, 1)})
    print(f"results: {path}")
    print(f"{'task':5s} {'prec':5s} {'b':>3s} {'mode':15s} {'drafter':12s} {'ms':>9s} {'calls':>6s} {'tau':>5s} "
          f"{'mis':>4s} {'diff':>7s} {'x':>6s}")
    for r in rows:
        if "error" in r:
            print(f"{r['task']:5s} {r['precision']:5s} {r['batch']:3d} {r['mode']:15s} ERROR {r['error'][:60]}")
            continue
        print(f"{r['task']:5s} {r['precision']:5s} {r['batch']:3d} {r['mode']:15s} {r.get('drafter', ''):12s} "
              f"{r['median_ms']:9.3f} {r['target_calls']:6.2f} {r['tau']:5.2f} {r['mismatches']:4d} "
              f"{r['tokens_differ']:7.4f} {r.get('speedup_vs_greedy', 1.0):6.2f}")


if __name__ == "__main__":
    main()
