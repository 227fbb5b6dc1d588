"""The knowledge text model's quality gate, end to end: read an item.json, train the BPE tokenizer and a text
LM on the old items (description given title | brand | categories), fit n-gram baselines on the same old
items, and compare perplexities on the new items' descriptions. Writes one JSON row per n-gram order.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/knowledge_gate.py --data ../shared/datasets/office \
        --size demo --steps 1200 --dropout 0.1 --threads 1 --orders 2,3,4 --out /tmp/kgate

Office, this CPU (bench/results/knowledge_gate_office_cpu.json): the demo LM beats the bigram model (ppl 22.5
vs 52.5) but not interpolated KN of order 3 (19.6) or 4 (15.4), at 600-1800 steps, dropout 0-0.2.

The LM is scored with its final weights (out/lm/last), never best/ (kept by the new items' loss).
Times are wall-clock seconds on this machine around whole library calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import ModelConfig  # noqa: E402
from recspec.data.knowledge import encode_knowledge, load_knowledge_corpus, train_knowledge_tokenizer  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.evaluation.text_gate import fit_ngram, knowledge_gate  # noqa: E402
from recspec.training.knowledge_lm import train_knowledge_lm  # noqa: E402
from recspec.training.text_lm import TextLMConfig  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="an *.item.json or the folder holding one")
    p.add_argument("--size", default="demo", help="ModelConfig preset")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--prompt-loss", action="store_true", help="train on the prompt tokens too")
    p.add_argument("--vocab-size", type=int, default=0, help="BPE vocabulary (0: data/text.py's default)")
    p.add_argument("--max-prompt", type=int, default=96)
    p.add_argument("--max-output", type=int, default=128)
    p.add_argument("--orders", default="2,3,4", help="n-gram orders, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="folder: knowledge_gate.json and the checkpoints in lm/")
    return p.parse_args()


def log_progress(record: dict) -> None:
    """The training loop's log records, every 100th step's train loss and each validation, to stdout."""
    if record.get("event") == "train" and record["step"] % 100 == 0:
        print(f"  step {record['step']}: loss {record['loss']:.3f}, {record['tokens_per_s']:.0f} tokens/s", flush=True)
    elif record.get("event") == "eval":
        print(f"  step {record['step']}: validation loss old {record['train_loss']:.3f} "
              f"new {record['heldout_loss']:.3f}", flush=True)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    corpus = load_knowledge_corpus(args.data, seed=args.seed)
    tokenizer = train_knowledge_tokenizer(corpus, args.vocab_size or None)
    items = encode_knowledge(corpus, tokenizer, args.max_prompt, args.max_output)
    prep_s = time.perf_counter() - t0
    max_len = args.max_prompt + args.max_output
    model_cfg = ModelConfig.preset(tokenizer.vocab_size, args.size, max_positions=max_len,
                                   dropout=args.dropout)
    cfg = TextLMConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                       weight_decay=args.weight_decay,
                       max_len=max_len, eval_every=args.steps, precision="fp32" if args.device == "cpu" else "auto",
                       seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    model, result = train_knowledge_lm(items, tokenizer, model_cfg, cfg, os.path.join(args.out, "lm"),
                                       on_log=log_progress, device=args.device, prompt_loss=args.prompt_loss)
    train_s = time.perf_counter() - t0
    print(f"LM {args.size}: {result.steps} steps in {train_s:.0f}s, loss old {result.train_loss:.3f} "
          f"new {result.heldout_loss:.3f} (ppl {torch.tensor(result.heldout_loss).exp():.2f})")
    rows = []
    for order in (int(x) for x in args.orders.split(",")):
        t0 = time.perf_counter()
        gate = knowledge_gate(model, fit_ngram(items, tokenizer.vocab_size, order), items, seed=args.seed)
        row = {**dataclasses.asdict(gate), "size": args.size, "parameters": model_cfg.num_parameters(),
               "steps": result.steps, "dropout": args.dropout, "lr": args.lr, "batch_size": args.batch_size,
               "weight_decay": args.weight_decay, "prompt_loss": args.prompt_loss,
               "vocab_size": tokenizer.vocab_size, "max_prompt": args.max_prompt, "max_output": args.max_output,
               "train_loss": result.train_loss, "heldout_loss": result.heldout_loss, "train_s": train_s,
               "prep_s": prep_s, "gate_s": time.perf_counter() - t0, "tokens_per_s": result.tokens_per_s}
        rows.append(row)
        print(f"order {order}: LM ppl {gate.lm_ppl:.2f}  n-gram ppl {gate.ngram_ppl:.2f}  "
              f"diff {gate.nll_diff:+.3f} nats/token [{gate.lo:+.3f}, {gate.hi:+.3f}]  "
              f"{'PASS' if gate.passed else 'FAIL'}  ({gate.items} items, {gate.tokens} tokens)")
    print(write_results(rows, os.path.join(args.out, "knowledge_gate.json"), args.device))


if __name__ == "__main__":
    main()
