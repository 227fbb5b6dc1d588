"""Greedy speculation on text (no constraint but the vocabulary): a text LM trained on the old Office items'
descriptions (training/text_lm.py, seeded steps; a tiny made-up corpus where ../shared is absent) continues
the first ITEMS new items' first tokens; speculation with a random draft, a trained draft and an n-gram table
of the old items equals plain greedy, token for token, at batch 1 and 16."""

from __future__ import annotations

import os

import pytest
import torch
from item_corpus import write_item_json
from spec_checks import decode

from recspec.config import ModelConfig
from recspec.data.text import load_text_corpus, text_prompts, train_tokenizer
from recspec.data.vocab import BOS, EOS, PAD
from recspec.decoding.constraints import FreeText
from recspec.decoding.drafters import NGramTable
from recspec.decoding.engine import build_engine
from recspec.decoding.greedy import greedy_decode
from recspec.models.decoder import Decoder
from recspec.training.text_lm import TextLMConfig, train_text_lm

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH = 24  # tokens generated per item
# first new items continued (all of them in the tiny corpus); RECSPEC_GREEDY_USERS=0: all (the full run)
ITEMS = int(os.environ.get("RECSPEC_GREEDY_USERS", 200)) or None


@pytest.fixture(scope="module")
def text(tmp_path_factory, optional_shared_datasets):
    """(target, trained draft, random draft, n-gram table of the old items, prompts of the new items, constraint)."""
    root = tmp_path_factory.mktemp("text_spec")
    office = optional_shared_datasets / "office" if optional_shared_datasets is not None else None
    office = office if office is not None and office.is_dir() else None
    corpus = load_text_corpus(office if office is not None else write_item_json(root / "data"))
    tok = train_tokenizer(corpus, vocab_size=None if office is not None else 400)  # Office: the default size
    cfg = TextLMConfig(steps=100, batch_size=16, lr=3e-3, warmup_steps=10, max_len=48, precision="fp32")
    target, _ = train_text_lm(corpus, tok, ModelConfig.preset(tok.vocab_size, "demo", max_positions=96), cfg, root / "t")
    draft, _ = train_text_lm(corpus, tok, ModelConfig.preset(tok.vocab_size, "tiny", max_positions=96),
                             TextLMConfig(**{**cfg.__dict__, "steps": 50}), root / "d")
    torch.manual_seed(5)
    rand = Decoder(ModelConfig.preset(tok.vocab_size, "tiny", max_positions=96)).eval()
    old = tok.encode_many(corpus.old_texts(), max_len=48)
    table = NGramTable.build(old, orders=(4, 3, 2), width=4)
    prompts = text_prompts(tok.encode_many(corpus.new_texts()[:ITEMS], max_len=48), 6).prompts
    c = FreeText(vocab_size=tok.vocab_size, length=LENGTH, eos=EOS, banned_tokens=(PAD, BOS))
    return target.eval(), draft.eval(), rand, table, prompts, c


@pytest.fixture(scope="module")
def greedy_refs(text):
    """greedy_refs(batch) -> [(prompts, the target's greedy continuation)] per batch of `batch` items, memoised."""
    target, _, _, _, prompts, c = text
    memo = {}

    def refs(batch: int):
        if batch not in memo:
            U = prompts.tokens.shape[0]
            parts = [type(prompts)(prompts.tokens[s:s + batch], prompts.lengths[s:s + batch]) for s in range(0, U, batch)]
            memo[batch] = [(p, greedy_decode(target, c, p)) for p in parts]
        return memo[batch]

    return refs


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("which", ["trained", "random", "ngram"])
def test_text_speculation_equals_greedy(text, greedy_refs, which, batch):
    target, draft, rand, table, prompts, c = text
    d = {"trained": draft, "random": rand, "ngram": table}[which]
    engine = build_engine(target, c, decode(K=1, N=4, gamma=4), d)
    calls = []
    for b, (p, want) in enumerate(greedy_refs(batch)):
        got, stats = engine.run(p)
        assert torch.equal(got.codes, want.codes), f"items {b * batch}..{(b + 1) * batch - 1} differ from greedy"
        torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-6)
        calls.append(stats.target_calls().float())
    if which != "random":  # a trained draft or the old items' n-grams save target calls on this corpus
        assert torch.cat(calls).mean() < LENGTH
