"""The peer baseline: transformers' `generate` constrained beam search on our exported weights.

It uses `prefix_allowed_tokens_fn` with a plain Python dict trie (the fastest way to answer its
per-beam callbacks), `num_beams=K, num_return_sequences=K`, left-padded batches and
`length_penalty=0` so that its ranking is by cumulative log-prob, like ours. Without eos it
generates the L codes only (`max_new_tokens=L`); with eos also the `<eos>` after them. Excluded
history items are pruned per user the way `exclusion.banned_states` prunes our trie: a prefix with
no allowed SID below it is not offered.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from recspec.data.catalog import Catalog
from recspec.data.datasets import Example
from recspec.data.vocab import EOS, PAD, build_prompts
from recspec.models.decoder import Decoder
from recspec.models.hf import hf_config


def to_transformers(model: Decoder, dtype=None):
    """Our Decoder -> transformers.LlamaForCausalLM with the same weights (same device)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in hf_config(model.cfg).items() if k != "architectures"}
    p = next(model.parameters())
    hf = LlamaForCausalLM(LlamaConfig(**cfg)).to(device=p.device, dtype=dtype or p.dtype).eval()
    hf.load_state_dict(model.state_dict(), strict=False)
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf


def python_trie(catalog: Catalog) -> dict[tuple[int, ...], list[int]]:
    """prefix of SID token ids -> allowed next token ids (complete SIDs -> [<eos>])."""
    offsets = catalog.vocab.level_offsets()
    trie: dict[tuple[int, ...], set[int]] = {}
    for row in catalog.trie.sids.tolist():
        toks = tuple(c + o for c, o in zip(row, offsets))
        for j in range(len(toks)):
            trie.setdefault(toks[:j], set()).add(toks[j])
        trie.setdefault(toks, set()).add(EOS)
    return {k: sorted(v) for k, v in trie.items()}


def sid_prefixes(catalog: Catalog) -> list[list[tuple[int, ...]]]:
    """Per unique SID row, its prefixes of SID token ids, lengths 0..L."""
    offsets = catalog.vocab.level_offsets()
    toks = [tuple(c + o for c, o in zip(row, offsets)) for row in catalog.trie.sids.tolist()]
    return [[t[:j] for j in range(len(t) + 1)] for t in toks]


def excluded_prefixes(catalog: Catalog, allowed: dict, prefixes: list, under: Counter,
                      history: Sequence[int]) -> dict[tuple[int, ...], list[int]]:
    """For a user who may not get her history's items: each prefix whose allowed next tokens change ->
    the tokens that still lead to an allowed SID ([<pad>] where none does). under: SIDs per prefix."""
    rows = set(catalog.trie.item_sid[list(history)].tolist())
    banned = Counter(p for r in rows for p in prefixes[r])
    dead = {p for p, n in banned.items() if n == under[p]}
    return {q: [t for t in allowed[q] if q + (t,) not in dead] or [PAD] for q in {p[:-1] for p in dead if p}}


def hf_call(hf_model, catalog: Catalog, examples: Sequence[Example], K: int, device, eos: bool = False,
            exclude_history: bool = False):
    """A `time_calls` callable: users -> (SID rows best first, None). eos: generate <eos> after the codes
    (scored); exclude_history: never return an item of the example's history."""
    allowed = python_trie(catalog)
    L = catalog.trie.num_levels
    code_of = {tuple(t): i for i, t in enumerate(catalog.trie.sids.tolist())}
    offsets = catalog.vocab.level_offsets()
    prefixes = sid_prefixes(catalog)
    under = Counter(p for ps in prefixes for p in ps)

    def call(users: list[int]):
        prompts = build_prompts(catalog.vocab, catalog.index, [examples[i].history for i in users]).to(device)
        T = prompts.tokens.shape[1]
        over = [excluded_prefixes(catalog, allowed, prefixes, under, examples[i].history) if exclude_history else {}
                for i in users]

        def fn(b, ids):
            key = tuple(ids[T:].tolist())
            return over[b].get(key) or allowed.get(key, [PAD])

        out = hf_model.generate(prompts.tokens, attention_mask=(prompts.tokens != PAD).long(), num_beams=K,
                                num_return_sequences=K, max_new_tokens=L + int(eos),
                                prefix_allowed_tokens_fn=fn, do_sample=False, length_penalty=0.0,
                                early_stopping=True, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)
        gen = out[:, T:T + L].reshape(len(users), K, L).tolist()
        sids = [[code_of.get(tuple(t - o for t, o in zip(seq, offsets)), -1) for seq in user] for user in gen]
        return sids, [], None
    return call


@torch.no_grad()
def hf_check_equal(model: Decoder, catalog: Catalog, examples: Sequence[Example], K: int, eos: bool = False) -> int:
    """Users whose HF list differs from ours (a quick self-check for the benchmark)."""
    from recspec.decoding.beam_search import beam_search

    hf = to_transformers(model)
    dev = next(model.parameters()).device
    sids, _, _ = hf_call(hf, catalog, examples, K, dev, eos)(list(range(len(examples))))
    prompts = build_prompts(catalog.vocab, catalog.index, [e.history for e in examples]).to(dev)
    ours = beam_search(model, catalog.trie.to(dev), prompts, K, eos=eos).sids.tolist()
    return sum(a != b for a, b in zip(ours, sids))
