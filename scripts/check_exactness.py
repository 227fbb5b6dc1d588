"""Strict speculative beam search must return exactly the target's beam search: check it on a dataset.

For every (K, batch size, draft) it decodes the test users with autoregressive beam search and with
strict speculative beam search, and prints how many users' lists differ (items or order), the largest
score difference, invalid items, and acceptance. A differing user is printed with both lists and
classified: a swap of items whose scores agree within 1e-4, or a flip at a near-tie that the reference
search itself passed (a kept and a dropped candidate within 1e-4, which fp32 rounding in a differently
shaped forward may order either way), is counted and shown as such; any other difference is a
MISMATCH. Exits 1 on a mismatch or an invalid item.

    PYTHONPATH=src python scripts/check_exactness.py --target runs/target --draft runs/draft random \
        --data ../shared/datasets/beauty --batch 1 32 --K 1 5 10 20 --users 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import torch

from recspec.config import DecodeConfig, ModelConfig, TreeConfig
from recspec.data.datasets import load_sequential
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie, build_trie
from recspec.data.vocab import Prompts, Vocab, build_prompts
from recspec.decoding.beam_search import BeamResult, beam_search
from recspec.decoding.engine import build_engine
from recspec.decoding.stats import SpecStats
from recspec.errors import CheckpointError, RecSpecError
from recspec.models.decoder import Decoder
from recspec.models.hf import load_checkpoint

SCORE_TOL = 1e-4  # fp32 noise allowed between the two searches' scores


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="target checkpoint folder")
    ap.add_argument("--draft", nargs="+", default=["random"],
                    help="draft checkpoint folder(s), or 'random' for an untrained draft-size model")
    ap.add_argument("--data", default="../shared/datasets/beauty", help="sequential dataset folder")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="users per decoding call")
    ap.add_argument("--K", type=int, nargs="+", default=[1, 5, 10, 20], help="target beams")
    ap.add_argument("--N", type=int, default=40, help="draft beams (raised to K where smaller)")
    ap.add_argument("--gamma", type=int, default=3, help="draft depth")
    ap.add_argument("--users", type=int, default=0, help="first N test users (0: all)")
    ap.add_argument("--skip", type=int, default=0, help="start after this many test users (to shard a full check)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random draft")
    return ap.parse_args(argv)


def load_model(path: str, vocab: Vocab, index: SIDIndex, device) -> Decoder:
    model, meta = load_checkpoint(path, device=device)
    if meta is not None and (meta.vocab != vocab or meta.index_fingerprint != index.fingerprint()):
        raise CheckpointError(f"{path}: trained on another SID index (fingerprint {meta.index_fingerprint}, "
                              f"data has {index.fingerprint()})")
    return model


def random_draft(vocab: Vocab, seed: int, device) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(ModelConfig.preset(vocab.size, "draft")).to(device).eval()


def batches(vocab: Vocab, index: SIDIndex, histories: list, size: int, device) -> list[Prompts]:
    return [build_prompts(vocab, index, histories[i:i + size]).to(device) for i in range(0, len(histories), size)]


def classify(ref: BeamResult, got: BeamResult, b: int) -> str:
    """'same'; 'tie-order': same items, swapped only where their scores agree within SCORE_TOL;
    'tie-flip': the reference search passed a near-tie (a kept and a dropped candidate within
    SCORE_TOL) that rounding may order either way; else 'MISMATCH'."""
    if (got.sids[b] == ref.sids[b]).all() and (got.codes[b] == ref.codes[b]).all():
        return "same"
    same_set = set(got.sids[b].tolist()) == set(ref.sids[b].tolist())
    if same_set and float((got.scores[b] - ref.scores[b]).abs().max()) <= SCORE_TOL:
        return "tie-order"
    if ref.margin is not None and float(ref.margin[b]) <= SCORE_TOL:
        return "tie-flip"
    return "MISMATCH"


def compare(target: Decoder, draft: Decoder, trie: SIDTrie, prompts: list[Prompts], refs: list[BeamResult],
            K: int, N: int, gamma: int, first_user: int = 0) -> dict:
    """Strict speculative decoding of every batch against its reference; differing users are printed."""
    kinds, max_diff, invalid, stats, t0 = Counter(), 0.0, 0, SpecStats(), time.perf_counter()
    user = first_user
    for p, ref in zip(prompts, refs):
        cfg = DecodeConfig(K=K, tree=TreeConfig(draft_beams=N, gamma=gamma))
        got, st = build_engine(target, trie, cfg, draft).run(p)
        for b in range(len(ref.sids)):
            kind = classify(ref, got, b)
            kinds[kind] += 1
            if kind == "same":
                max_diff = max(max_diff, float((got.scores[b] - ref.scores[b]).abs().max()))
            else:
                print(f"  user #{user + b} {kind} (reference's smallest top-K gap {float(ref.margin[b]):.2e})\n"
                      f"    beam search {ref.sids[b].tolist()} {[round(x, 6) for x in ref.scores[b].tolist()]}\n"
                      f"    speculative {got.sids[b].tolist()} {[round(x, 6) for x in got.scores[b].tolist()]}")
        user += len(ref.sids)
        codes_ok = trie.leaf_sid[trie.walk(got.codes)] == got.sids
        invalid += int(((got.sids < 0) | ~codes_ok).sum())
        stats = stats.merge(st)
    s = stats.summary()
    return dict(differ=sum(v for k, v in kinds.items() if k != "same"), ties=kinds["tie-order"] + kinds["tie-flip"],
                mismatches=kinds["MISMATCH"], max_diff=max_diff, invalid=invalid,
                seconds=time.perf_counter() - t0, accepted=s["accepted_levels"], calls=s["target_calls"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data, index = load_sequential(args.data)
    vocab = Vocab.for_index(index)
    trie = build_trie(index, vocab).to(args.device)
    target = load_model(args.target, vocab, index, args.device)
    drafts = {d: random_draft(vocab, args.seed, args.device) if d == "random"
              else load_model(d, vocab, index, args.device) for d in args.draft}
    test = data.test[args.skip:]
    test = test[: args.users] if args.users > 0 else test
    histories = [e.history for e in test]
    print(f"{data.name}: {len(histories)} test users (from #{args.skip}), target {args.target}, N={args.N}, gamma={args.gamma}")
    failed = False
    for batch in args.batch:
        prompts = batches(vocab, index, histories, batch, args.device)
        for K in args.K:
            t0 = time.perf_counter()
            refs = [beam_search(target, trie, p, K, audit=True) for p in prompts]
            ar_s = time.perf_counter() - t0
            for name, draft in drafts.items():
                r = compare(target, draft, trie, prompts, refs, K, max(args.N, K), args.gamma, args.skip)
                bad = r["mismatches"] > 0 or r["invalid"] > 0 or r["max_diff"] > SCORE_TOL
                failed |= bad
                print(f"K={K:<3d} batch={batch:<3d} draft={name}: {r['differ']} users differ "
                      f"({r['ties']} at fp32 near-ties, {r['mismatches']} not), "
                      f"max |score diff| of equal lists {r['max_diff']:.2e}, {r['invalid']} invalid items, "
                      f"accepted/round {r['accepted']:.2f}, target calls/user {r['calls']:.2f}, "
                      f"AR {ar_s:.1f}s SD {r['seconds']:.1f}s{'  MISMATCH' if bad else ''}", flush=True)
    print("FAIL" if failed else "OK: strict speculative beam search equals beam search")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RecSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
