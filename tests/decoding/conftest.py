"""Fixtures of the decoding tests: Beauty test users (the bundled toy catalogue's where ../shared is
absent) with a tiny random target and drafts, and the target's own beam search on them (the reference
every speculative search must equal)."""

from __future__ import annotations

from typing import Sequence

import pytest
from spec_checks import BATCH, DRAFT_NOISE, NUM_USERS, SINGLE_USERS, TARGET, Beauty, noisy_copy

from recspec.data.datasets import load_sequential
from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.beam_search import BeamResult, beam_search


@pytest.fixture(scope="session")
def beauty(sequential_dataset, make_decoder) -> Beauty:
    data, index = load_sequential(sequential_dataset)
    vocab = Vocab.for_index(index)
    histories = [e.history for e in data.test[:NUM_USERS]]
    assert len(histories) == NUM_USERS
    batched = [build_prompts(vocab, index, histories[i:i + BATCH]) for i in range(0, NUM_USERS, BATCH)]
    single = [build_prompts(vocab, index, [h]) for h in histories[:SINGLE_USERS]]
    target = make_decoder(vocab, seed=1, **TARGET)
    drafts = {"random": make_decoder(vocab, seed=2), "self": target, "noisy": noisy_copy(target, DRAFT_NOISE, 3)}
    return Beauty(index, vocab, build_trie(index, vocab), batched, single, target, drafts, data.train)


@pytest.fixture(scope="session")
def reference(beauty):
    """reference(K, batch, which=all, eos=False) -> the target's autoregressive beam search (scoring
    <eos> too with eos=True) on the prompt batches `which` (indices into beauty.prompts(batch));
    memoised per batch, shared by the whole session."""
    memo: dict[tuple[int, int, int, bool], BeamResult] = {}

    def ref(K: int, batch: int, which: Sequence[int] | None = None, eos: bool = False) -> tuple[BeamResult, ...]:
        prompts = beauty.prompts(batch)
        which = which if which is not None else range(len(prompts))
        for b in which:
            if (K, batch, b, eos) not in memo:
                memo[K, batch, b, eos] = beam_search(beauty.target, beauty.trie, prompts[b], K, eos=eos)
        return tuple(memo[K, batch, b, eos] for b in which)

    return ref
