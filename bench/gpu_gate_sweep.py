"""The knowledge text model's quality gate as one sweep: train a few candidate recipes, pick one by the old
items' validation loss, score it once on the new items against Kneser-Ney n-gram models.

    PYTHONPATH=src python bench/gpu_gate_sweep.py --data .data/office --device cuda --out $OUT/gate
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/gpu_gate_sweep.py --data .data/office --device cpu \
        --budget 40 --candidates demo-d0.1,small-d0.3-tie --out /tmp/gate     # an end-to-end check

Nothing here looks at the new items before the end. The old items with a description are split again
(`KnowledgeItems.validation_split`, 10%): every candidate trains on the rest for a fixed, seeded number of
steps (--budget / candidates) and keeps `best/` by the validation items' loss (early stopping); best/ gets a
temperature fitted on the same validation items (evaluation/temperature.py: a model trained for many epochs
on ~150k tokens is overconfident; --no-calibrate: T = 1); the candidate with the lowest validation loss
after that is selected; the n-gram order is chosen among --orders by the same validation items. Then, once,
on the new items' descriptions: the selected LM against every order (evaluation/text_gate.py: ppl, the
per-token NLL difference and its paired bootstrap interval), the n-gram models fitted on the LM's own
training items, plus the chosen order refitted on all old items (it sees the validation items the LM never
trained on: a stricter baseline).

Out (--out): results.json (device, command, date, rows: one per candidate, rewritten after each one; one per
n-gram order on validation; one per gate), model/ (the selected checkpoint, its temperature folded in:
config.json, model.safetensors, recspec.json, tokenizer.json; `recspec.training.text_lm.load_text_lm(out/model)`
loads it). Candidates train under --work (default: a temporary folder, removed). Times are wall-clock seconds
around whole library calls; no choice depends on them. On a CPU each validation scores every training item,
so even the check above takes minutes on Office.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.config import ModelConfig  # noqa: E402
from recspec.data.knowledge import (KnowledgeItems, encode_knowledge, load_knowledge_corpus,  # noqa: E402
                                    train_knowledge_tokenizer)
from recspec.evaluation.ngram_lm import NGramLM  # noqa: E402
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.evaluation.temperature import fit_temperature, fold_temperature  # noqa: E402
from recspec.evaluation.text_gate import knowledge_gate, lm_nll, ngram_nll  # noqa: E402
from recspec.models.hf import load_checkpoint, save_checkpoint  # noqa: E402
from recspec.training.knowledge_lm import train_knowledge_lm  # noqa: E402
from recspec.training.text_lm import TOKENIZER_FILE, TextLMConfig, load_text_lm  # noqa: E402


@dataclass(frozen=True)
class Candidate:
    """One training recipe of the sweep."""

    name: str
    size: str  # ModelConfig preset
    dropout: float  # on embeddings and each attention / MLP output
    lr: float  # peak AdamW learning rate (warm-up, then cosine decay to the run's last step)
    weight_decay: float
    tie: bool  # input embedding shared with the LM head
    prompt_loss: bool = False  # the loss on the prompt tokens too (more text to learn the language from)


CANDIDATES = (
    Candidate("demo-d0.1", "demo", 0.1, 3e-3, 0.01, False),  # the CPU recipe of bench/knowledge_gate.py
    Candidate("small-d0.1", "small", 0.1, 1e-3, 0.1, False),
    Candidate("small-d0.2", "small", 0.2, 1e-3, 0.1, False),
    Candidate("small-d0.3-tie", "small", 0.3, 1e-3, 0.1, True),
    Candidate("base-d0.2-tie", "base", 0.2, 5e-4, 0.1, True),
    Candidate("small-d0.2-pl", "small", 0.2, 1e-3, 0.1, False, True),  # not in the default set (--candidates)
)
DEFAULT = CANDIDATES[:5]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="an *.item.json or the folder holding one")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="folder: results.json and the selected model in model/")
    p.add_argument("--work", default="", help="folder for the candidates' runs (default: a temporary one, removed)")
    p.add_argument("--budget", type=int, default=20000, help="optimiser steps of all candidates together")
    p.add_argument("--candidates", default="", help="names, comma-separated (default: DEFAULT)")
    p.add_argument("--evals", type=int, default=20, help="validations per candidate run (early-stopping points)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-fraction", type=float, default=0.1, help="old scored items held out for validation")
    p.add_argument("--orders", default="2,3,4,5,6", help="n-gram orders, comma-separated")
    p.add_argument("--max-prompt", type=int, default=96)
    p.add_argument("--max-output", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="fit a temperature on the validation items and fold it into the model")
    return p.parse_args()


def chosen(names: str) -> tuple[Candidate, ...]:
    by_name = {c.name: c for c in CANDIDATES}
    unknown = [n for n in names.split(",") if n and n not in by_name]
    if unknown:
        raise SystemExit(f"unknown candidate {unknown[0]!r}; choose from {', '.join(by_name)}")
    return tuple(by_name[n] for n in names.split(",")) if names else DEFAULT


def train_candidate(c: Candidate, items: KnowledgeItems, tokenizer, split, args, steps: int, work: str) -> dict:
    """Train one candidate on the validation split's training items -> its row (best validation loss, where)."""
    max_len = args.max_prompt + args.max_output
    model_cfg = ModelConfig.preset(tokenizer.vocab_size, c.size, max_positions=max_len, dropout=c.dropout,
                                   tie_embeddings=c.tie)
    cfg = TextLMConfig(steps=steps, batch_size=args.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                       warmup_steps=max(steps // 50, 1), max_len=max_len, eval_every=max(steps // args.evals, 1),
                       precision="fp32" if args.device == "cpu" else "auto", seed=args.seed, threads=args.threads,
                       optimizer_state=False)  # no resume here: last/ without AdamW's state is written faster
    evals: list[dict] = []
    t0 = time.perf_counter()
    _, result = train_knowledge_lm(items, tokenizer, model_cfg, cfg, os.path.join(work, c.name), dataset=c.name,
                                   on_log=lambda r: evals.append(r) if r.get("event") == "eval" else None,
                                   device=args.device, prompt_loss=c.prompt_loss, train_ids=split.old,
                                   heldout_ids=split.new)
    best = min(evals, key=lambda r: r["heldout_loss"])  # the loop's best/ (first of equals)
    row = {"kind": "candidate", **dataclasses.asdict(c), "parameters": model_cfg.num_parameters(), "steps": steps,
           "best_step": best["step"], "val_loss": best["heldout_loss"], "val_ppl": math.exp(best["heldout_loss"]),
           "train_loss_at_best": best["train_loss"], "final_val_loss": result.heldout_loss,
           "final_train_loss": result.train_loss, "train_s": time.perf_counter() - t0,
           "tokens_per_s": result.tokens_per_s,
           "wall_ms_per_step": 1000 * (time.perf_counter() - t0) / steps, "checkpoint": os.path.join(work, c.name, "best")}
    row.update(calibrated(row["checkpoint"], items, split.new, args))
    print(f"{c.name}: {model_cfg.num_parameters():,} params, {steps} steps in {row['train_s']:.0f}s; validation "
          f"loss {best['heldout_loss']:.3f} at step {best['step']} (final {result.heldout_loss:.3f}, "
          f"train {result.train_loss:.3f}); T {row['temperature']:.3f}: {row['val_loss_calibrated']:.3f}", flush=True)
    return row


def calibrated(folder: str, items: KnowledgeItems, val_ids, args) -> dict:
    """The temperature of a checkpoint fitted on the validation items (1 without --calibrate) and its loss there."""
    model, _ = load_text_lm(folder, device=args.device)
    t = fit_temperature(model, items, val_ids) if args.calibrate else 1.0
    nll = lm_nll(fold_temperature(model, t), items, val_ids)
    return {"temperature": t, "val_loss_calibrated": math.log(nll.ppl)}


def save_selected(row: dict, out: str) -> str:
    """The selected candidate's best/ with its temperature folded in, and its tokenizer.json -> out/model, a
    folder `load_text_lm` loads."""
    folder = os.path.join(out, "model")
    shutil.rmtree(folder, ignore_errors=True)
    model, meta = load_checkpoint(row["checkpoint"])
    save_checkpoint(fold_temperature(model, row["temperature"]), meta, folder)
    shutil.copy(os.path.join(os.path.dirname(row["checkpoint"]), TOKENIZER_FILE), folder)
    return folder


def ngram_rows(items: KnowledgeItems, vocab_size: int, split, orders: list[int]) -> tuple[list[dict], dict]:
    """KN models of each order fitted on the LM's training items -> (rows with validation ppl, order -> model)."""
    seqs = [p + o for p, o in items.pairs(split.old)]
    models = {n: NGramLM.fit(seqs, vocab_size, n) for n in orders}
    rows = [{"kind": "ngram_validation", "order": n, "val_ppl": ngram_nll(m, items, split.new).ppl}
            for n, m in models.items()]
    return rows, models


def gate_row(model, ngram: NGramLM, items: KnowledgeItems, fit: str, chosen_order: int, seed: int) -> dict:
    gate = knowledge_gate(model, ngram, items, seed=seed)
    return {"kind": "gate", **dataclasses.asdict(gate), "ngram_fit": fit,
            "chosen_order": gate.ngram_order == chosen_order}


def table(rows: list[dict]) -> str:
    lines = ["candidate            params    best_step  val_loss  T      val_loss@T  selected"]
    lines += [f"{r['name']:<20} {r['parameters']:>9,} {r['best_step']:>8} {r['val_loss']:>9.3f} {r['temperature']:.3f}"
              f" {r['val_loss_calibrated']:>9.3f}  {'*' if r['selected'] else ''}" for r in rows if r["kind"] == "candidate"]
    lines += ["", "new items: order  fit    ngram_ppl  lm_ppl  diff [95% interval]       verdict"]
    lines += [f"           {r['ngram_order']:>5}  {r['ngram_fit']:<6} {r['ngram_ppl']:>9.2f} {r['lm_ppl']:>7.2f}  "
              f"{r['nll_diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]  {'PASS' if r['passed'] else 'FAIL'}"
              f"{' (significant)' if r['significant'] else ''}{'  <- order chosen by validation' if r['chosen_order'] else ''}"
              for r in rows if r["kind"] == "gate"]
    return "\n".join(lines)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    candidates, orders = chosen(args.candidates), [int(x) for x in args.orders.split(",")]
    steps = args.budget // len(candidates)
    if steps < 1:
        raise SystemExit(f"--budget {args.budget} gives no step to each of {len(candidates)} candidates")
    corpus = load_knowledge_corpus(args.data, seed=args.seed)
    tokenizer = train_knowledge_tokenizer(corpus)
    items = encode_knowledge(corpus, tokenizer, args.max_prompt, args.max_output)
    split = items.validation_split(args.val_fraction, seed=args.seed + 1)
    print(f"{len(split.old)} training / {len(split.new)} validation old items; {len(items.scored(items.split.new))} "
          f"new items scored at the end; {len(candidates)} candidates x {steps} steps", flush=True)
    work = args.work or tempfile.mkdtemp(prefix="gate_sweep_")
    rows = []
    for c in candidates:  # results.json after each candidate: a run cut short still reports the finished ones
        rows.append(train_candidate(c, items, tokenizer, split, args, steps, work))
        write_results([{k: v for k, v in r.items() if k != "checkpoint"} for r in rows],
                      os.path.join(args.out, "results.json"), args.device)
    selected = min(rows, key=lambda r: r["val_loss_calibrated"])
    for r in rows:
        r["selected"] = r is selected
    folder = save_selected(selected, args.out)
    t0 = time.perf_counter()
    ngram_val, ngrams = ngram_rows(items, tokenizer.vocab_size, split, orders)
    best_order = min(ngram_val, key=lambda r: r["val_ppl"])["order"]
    for r in ngram_val:
        r["chosen"] = r["order"] == best_order
    model, _ = load_text_lm(folder, device=args.device)  # the saved files are what is scored
    gates = [gate_row(model, ngrams[n], items, "train", best_order, args.seed) for n in orders]
    strict = NGramLM.fit([p + o for p, o in items.pairs(items.scored(items.split.old))], tokenizer.vocab_size,
                         best_order)
    gates.append(gate_row(model, strict, items, "old", best_order, args.seed))
    for g in gates:
        g.update(selected=selected["name"], gate_s=time.perf_counter() - t0)
    rows += ngram_val + gates
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        r.pop("checkpoint", None)
    print(write_results(rows, os.path.join(args.out, "results.json"), args.device))
    print(table(rows))


if __name__ == "__main__":
    main()
