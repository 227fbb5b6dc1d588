"""Train the tiny text path on a catalogue's item texts: a byte-level BPE tokenizer and a small causal LM of
our architecture, both on the old items only (data/text.py, training/text_lm.py); report the mean per-token
loss on the old (trained) and new (held-out) items before and after. Writes --out/tokenizer.json,
--out/last and --out/best (checkpoint folders) and --out/summary.json; run again, it resumes from
--out/last (a finished run only reports).

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 scripts/train_text_lm.py --data ../shared/datasets/office \
        --out runs/text-office --steps 600 --size demo --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from recspec.config import MODEL_PRESETS, ModelConfig
from recspec.data.text import MAX_LEN, OLD_FRACTION, load_text_corpus, train_tokenizer
from recspec.errors import RecSpecError
from recspec.training.text_lm import TextLMConfig, train_text_lm


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a *.item.json (LC-Rec format) or the folder holding one")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--steps", type=int, default=TextLMConfig.steps, help="optimiser steps (fixed up front)")
    ap.add_argument("--vocab-size", type=int, default=0, help="BPE vocabulary (0: derived from the old texts)")
    ap.add_argument("--size", default="demo", choices=sorted(MODEL_PRESETS), help="ModelConfig preset")
    ap.add_argument("--max-len", type=int, default=MAX_LEN, help="tokens per item text, <bos> included")
    ap.add_argument("--batch-size", type=int, default=TextLMConfig.batch_size)
    ap.add_argument("--lr", type=float, default=TextLMConfig.lr)
    ap.add_argument("--eval-every", type=int, default=0, help="validation every N steps (0: once per pass)")
    ap.add_argument("--old-fraction", type=float, default=OLD_FRACTION, help="share of items trained on")
    ap.add_argument("--seed", type=int, default=0, help="split, initial weights and batch order")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    corpus = load_text_corpus(args.data, args.old_fraction, args.seed)
    tokenizer = train_tokenizer(corpus, args.vocab_size or None)
    cfg = TextLMConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_len=args.max_len,
                       eval_every=args.eval_every, seed=args.seed, threads=args.threads)
    model_cfg = ModelConfig.preset(tokenizer.vocab_size, args.size, max_positions=args.max_len)
    log = lambda r: print(json.dumps(r), file=sys.stderr) if r.get("event") == "eval" else None  # noqa: E731
    _, result = train_text_lm(corpus, tokenizer, model_cfg, cfg, args.out, dataset=os.path.basename(os.path.normpath(args.data)),
                              on_log=log)
    summary = {"items": {"old": len(corpus.split.old), "new": len(corpus.split.new)},
               "vocab_size": tokenizer.vocab_size, "parameters": model_cfg.num_parameters(),
               "model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg),
               **dataclasses.asdict(result), "seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: summary[k] for k in ("items", "vocab_size", "parameters", "steps", "train_loss_before",
                                              "heldout_loss_before", "train_loss", "heldout_loss", "seconds")}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RecSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
