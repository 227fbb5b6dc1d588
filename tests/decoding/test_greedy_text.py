"""Greedy speculation on text (no constraint but the vocabulary): a text LM trained on a tiny item corpus
(training/text_lm.py, seeded steps) continues the new items' first tokens; speculation with a random draft,
a trained draft and an n-gram table of the old items equals plain greedy, token for token, at batch 1 and 8."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """(target, trained draft, random draft, n-gram table of the old items, prompts of the new items, constraint)."""
    root = tmp_path_factory.mktemp("text_spec")
    corpus = load_text_corpus(write_item_json(root / "data"))
    tok = train_tokenizer(corpus, vocab_size=400)
    cfg = TextLMConfig(steps=60, batch_size=8, lr=1e-2, warmup_steps=5, max_len=48, precision="fp32")
    target, _ = train_text_lm(corpus, tok, ModelConfig.preset(tok.vocab_size, "demo", max_positions=96), cfg, root / "t")
    draft, _ = train_text_lm(corpus, tok, ModelConfig.preset(tok.vocab_size, "tiny", max_positions=96),
                             TextLMConfig(**{**cfg.__dict__, "steps": 30}), root / "d")
    torch.manual_seed(5)
    rand = Decoder(ModelConfig.preset(tok.vocab_size, "tiny", max_positions=96)).eval()
    old = tok.encode_many(corpus.old_texts(), max_len=48)
    table = NGramTable.build(old, orders=(4, 3, 2), width=4)
    prompts = text_prompts(tok.encode_many(corpus.new_texts(), max_len=48), 6).prompts
    c = FreeText(vocab_size=tok.vocab_size, length=LENGTH, eos=EOS, banned_tokens=(PAD, BOS))
    return target.eval(), draft.eval(), rand, table, prompts, c


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("which", ["trained", "random", "ngram"])
def test_text_speculation_equals_greedy(text, which, batch):
    target, draft, rand, table, prompts, c = text
    d = {"trained": draft, "random": rand, "ngram": table}[which]
    engine = build_engine(target, c, decode(K=1, N=4, gamma=4), d)
    U = prompts.tokens.shape[0]
    calls = []
    for s in range(0, U, batch):
        p = type(prompts)(prompts.tokens[s:s + batch], prompts.lengths[s:s + batch])
        want = greedy_decode(target, c, p)
        got, stats = engine.run(p)
        assert torch.equal(got.codes, want.codes), f"items {s}..{s + batch - 1} differ from greedy"
        torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-6)
        calls.append(stats.target_calls().float())
    if which != "random":  # a trained draft or the old items' n-grams save target calls on this corpus
        assert torch.cat(calls).mean() < LENGTH
