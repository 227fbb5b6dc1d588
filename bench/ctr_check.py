"""The downstream check of generated knowledge on one catalogue (spec retrieval-drafting.md, section 4):
a CTR model trained with knowledge A's item-text embeddings, with knowledge B's and with no text, on the
same seeds; mean AUC / LogLoss per arm, the AUC differences with a bootstrap interval over test users and
a t-interval over seeds (`recspec.evaluation.knowledge_check`), and A / B text agreement. Writes JSON.

    PYTHONPATH=src python bench/ctr_check.py --data ../shared/datasets/office --a greedy.jsonl \
        --b relaxed.jsonl --encoder minilm --seeds 0,1,2,3,4 --out bench/results/ctr_check.json

Knowledge files (--a, --b): JSON lines, one per item, {"item": <the dataset's item id, int>, "text": <str>}
(what a `recspec knowledge` run writes); items absent from a file get zero text features. Without --a,
A is the dataset's own item texts (`data.text.read_item_texts`). Without --b, B is A with each word
dropped with probability --drop (seeded by --drop-seed): a known perturbation, to see what the protocol
detects. --encoder hashing: `HashingEncoder` with idf fitted on A's and B's texts together; minilm:
all-MiniLM-L6-v2 (the `embed` extra). Times are wall-clock seconds on this machine around library calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from recspec.data.datasets import find_file, load_json  # noqa: E402
from recspec.data.text import read_item_texts  # noqa: E402
from recspec.evaluation.ctr import CTRConfig  # noqa: E402
from recspec.evaluation.knowledge_check import (agreement_row, compare_knowledge, drop_words,  # noqa: E402
                                                read_knowledge, text_matrix)
from recspec.evaluation.report import write_results  # noqa: E402
from recspec.evaluation.text_embed import HashingEncoder, SentenceEncoder  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with <name>.inter.json (and <name>.item.json)")
    p.add_argument("--a", help="knowledge A (greedy) JSONL; default: the dataset's item texts")
    p.add_argument("--b", help="knowledge B (relaxed) JSONL; default: A with words dropped (--drop)")
    p.add_argument("--drop", type=float, default=0.1, help="without --b: each word of A dropped w.p. this")
    p.add_argument("--drop-seed", type=int, default=0)
    p.add_argument("--encoder", choices=("hashing", "minilm"), default="hashing")
    p.add_argument("--hash-dim", type=int, default=512)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--epochs", type=int, default=CTRConfig.epochs)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", required=True)
    return p.parse_args()


def knowledge(args: argparse.Namespace) -> tuple[dict[int, str], dict[int, str]]:
    a = read_knowledge(args.a) if args.a else read_item_texts(args.data)
    b = read_knowledge(args.b) if args.b else drop_words(a, args.drop, args.drop_seed)
    return a, b


def main() -> None:
    args = parse()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    interactions = load_json(find_file(args.data, "*.inter.json"))
    texts_a, texts_b = knowledge(args)
    num_items = 1 + max(max(i for s in interactions.values() for i in s), *texts_a, *texts_b)
    t0 = time.perf_counter()
    encoder = (HashingEncoder.fit(list(texts_a.values()) + list(texts_b.values()), dim=args.hash_dim)
               if args.encoder == "hashing" else SentenceEncoder())
    emb_a, emb_b = (text_matrix(t, num_items, encoder) for t in (texts_a, texts_b))
    agree = agreement_row(texts_a, texts_b, emb_a, emb_b)
    t1 = time.perf_counter()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    rows = compare_knowledge(interactions, emb_a, emb_b, None, seeds, CTRConfig(epochs=args.epochs), args.n_boot)
    t2 = time.perf_counter()
    extra = {"encoder": args.encoder, "dim": int(emb_a.shape[1]), "drop": None if args.b else args.drop,
             "seconds_encode": round(t1 - t0, 1), "seconds_ctr": round(t2 - t1, 1),
             "torch_threads": torch.get_num_threads()}
    write_results(rows + [agree], args.out, "cpu", extra=extra)
    for r in rows + [agree]:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if "per_seed" not in k})
    print(extra)


if __name__ == "__main__":
    main()
