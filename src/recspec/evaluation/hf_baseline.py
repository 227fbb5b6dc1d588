"""The peer baseline: transformers' `generate` constrained beam search on our exported weights.

It uses `prefix_allowed_tokens_fn` with a plain Python dict trie (the fastest way to answer its
per-beam callbacks), `num_beams=K, num_return_sequences=K`, left-padded batches and
`length_penalty=0` so that its ranking is by cumulative log-prob, like ours.
"""

from __future__ import annotations

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


def hf_call(hf_model, catalog: Catalog, examples: Sequence[Example], K: int, device):
    """A `time_calls` callable: users -> (SID rows best first, None)."""
    allowed = python_trie(catalog)
    L = catalog.trie.num_levels
    code_of = {tuple(t): i for i, t in enumerate(catalog.trie.sids.tolist())}
    offsets = catalog.vocab.level_offsets()

    def call(users: list[int]):
        prompts = build_prompts(catalog.vocab, catalog.index, [examples[i].history for i in users]).to(device)
        T = prompts.tokens.shape[1]
        fn = lambda _b, ids: allowed.get(tuple(ids[T:].tolist()), [PAD])  # noqa: E731
        out = hf_model.generate(prompts.tokens, attention_mask=(prompts.tokens != PAD).long(), num_beams=K,
                                num_return_sequences=K, max_new_tokens=L + 1,
                                prefix_allowed_tokens_fn=fn, do_sample=False, length_penalty=0.0,
                                early_stopping=True, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)
        gen = out[:, T:T + L].reshape(len(users), K, L).tolist()
        sids = [[code_of.get(tuple(t - o for t, o in zip(seq, offsets)), -1) for seq in user] for user in gen]
        return sids, [], None
    return call


@torch.no_grad()
def hf_check_equal(model: Decoder, catalog: Catalog, examples: Sequence[Example], K: int) -> int:
    """Users whose HF list differs from ours (a quick self-check for the benchmark)."""
    from recspec.decoding.beam_search import beam_search

    hf = to_transformers(model)
    dev = next(model.parameters()).device
    sids, _, _ = hf_call(hf, catalog, examples, K, dev)(list(range(len(examples))))
    prompts = build_prompts(catalog.vocab, catalog.index, [e.history for e in examples]).to(dev)
    ours = beam_search(model, catalog.trie.to(dev), prompts, K).sids.tolist()
    return sum(a != b for a, b in zip(ours, sids))
