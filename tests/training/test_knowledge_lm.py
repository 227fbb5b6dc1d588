"""The knowledge text model (training/knowledge_lm.py): windows with the loss on the description only, and a
tiny model on the tiny item corpus trained a fixed number of seeded steps; it learns the descriptions, its
validation loss is the gate's perplexity, and `load_text_lm` loads it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from item_corpus import write_item_json
from recspec.config import ModelConfig
from recspec.data.knowledge import encode_knowledge, load_knowledge_corpus, train_knowledge_tokenizer
from recspec.data.vocab import BOS, EOS, PAD
from recspec.errors import DataError
from recspec.evaluation.text_gate import perplexity
from recspec.training.knowledge_lm import knowledge_windows, train_knowledge_lm
from recspec.training.text_lm import TextLMConfig, load_text_lm, sequence_loss, text_windows
from recspec.training.windows import IGNORE

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TextLMConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=5, max_len=64, precision="fp32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(items, tokenizer, model, result, out_dir) of one seeded run on the tiny corpus."""
    root = tmp_path_factory.mktemp("knowledge_lm")
    corpus = load_knowledge_corpus(write_item_json(root / "data"))
    tokenizer = train_knowledge_tokenizer(corpus, vocab_size=400)
    items = encode_knowledge(corpus, tokenizer, max_prompt=32, max_output=32)
    model_cfg = ModelConfig.preset(tokenizer.vocab_size, "tiny", max_positions=CFG.max_len)
    model, result = train_knowledge_lm(items, tokenizer, model_cfg, CFG, root / "lm")
    return items, tokenizer, model, result, root / "lm"


def test_targets_from_puts_the_loss_on_the_output_only():
    w = text_windows([[BOS, 5, 6, 7, EOS], [BOS, 8, 9]], targets_from=[3, 1])
    assert w.tokens.tolist() == [[BOS, 5, 6, 7, EOS], [BOS, 8, 9, PAD, PAD]]
    assert w.labels.tolist() == [[IGNORE, IGNORE, 7, EOS, IGNORE], [8, 9, IGNORE, IGNORE, IGNORE]]
    assert text_windows([[BOS, 8, 9]], [1]).labels.tolist() == text_windows([[BOS, 8, 9]]).labels.tolist()
    with pytest.raises(ValueError, match="targets_from"):
        text_windows([[BOS, 8]], targets_from=[2])


def test_knowledge_windows_hold_the_scored_items_prompt_then_output(trained):
    items, _, _, _, _ = trained
    scored = items.scored(items.split.old)
    w = knowledge_windows(items, items.split.old)
    assert len(w) == len(scored) < len(items.split.old)  # empty descriptions left out
    for row, (p, o) in zip(range(len(w)), items.pairs(scored)):
        n = len(p) + len(o)
        assert w.tokens[row, :n].tolist() == list(p + o)
        labels = w.labels[row].tolist()
        assert labels[:len(p) - 1] == [IGNORE] * (len(p) - 1) and labels[len(p) - 1:n - 1] == list(o)
    everything = knowledge_windows(items, items.split.old, prompt_loss=True)
    assert torch.equal(everything.tokens, w.tokens)
    assert everything.labels[0, :len(items.pairs(scored)[0][0])].ne(IGNORE).all()  # the prompt is a target too
    with pytest.raises(ValueError, match=r"prompt \+ output tokens > max_len 5"):
        knowledge_windows(items, items.split.old, max_len=5)
    with pytest.raises(DataError, match="no knowledge items with a description"):
        knowledge_windows(items, [i for i in items.ids if not items.outputs[items.row(i)]])


def test_loss_falls_and_matches_the_gates_perplexity(trained):
    items, tokenizer, model, r, _ = trained
    assert r.steps == CFG.steps
    assert abs(r.train_loss_before - math.log(tokenizer.vocab_size)) < 0.5  # ~uniform at init
    assert r.train_loss < r.train_loss_before - 2.0
    assert r.heldout_loss < r.heldout_loss_before - 1.5
    assert math.log(perplexity(model, items)) == pytest.approx(r.heldout_loss, rel=1e-5)  # same tokens, same mean


def test_checkpoint_loads_with_load_text_lm(trained):
    items, tokenizer, model, result, out = trained
    loaded, tok = load_text_lm(result.checkpoint)
    assert tok.fingerprint() == tokenizer.fingerprint()
    assert perplexity(loaded, items) == pytest.approx(perplexity(model, items), rel=1e-6)


def test_same_seed_same_weights(trained, tmp_path):
    items, tokenizer, model, _, out = trained
    again, _ = train_knowledge_lm(items, tokenizer, model.cfg, CFG, tmp_path / "again")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_trains_on_and_validates_with_the_ids_given(trained, tmp_path):
    items, tokenizer, model, _, _ = trained
    v = items.validation_split(0.25)
    cfg = dataclasses.replace(CFG, steps=10, eval_every=5)
    evals = []
    fit, r = train_knowledge_lm(items, tokenizer, model.cfg, cfg, tmp_path / "val", train_ids=v.old,
                                heldout_ids=v.new, on_log=lambda e: evals.append(e) if e["event"] == "eval" else None)
    assert r.heldout_loss == pytest.approx(sequence_loss(fit, knowledge_windows(items, v.new)), rel=1e-6)
    assert r.train_loss == pytest.approx(sequence_loss(fit, knowledge_windows(items, v.old)), rel=1e-6)
    best = min(evals, key=lambda e: e["heldout_loss"])  # best/ is early stopping on the validation items
    kept, _ = load_text_lm(tmp_path / "val" / "best")
    assert sequence_loss(kept, knowledge_windows(items, v.new)) == pytest.approx(best["heldout_loss"], rel=1e-6)
