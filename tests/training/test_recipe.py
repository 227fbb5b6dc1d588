"""The training recipe: bf16 mixed precision that learns what fp32 learns, a schedule fixed by a step
count, early stopping on validation, dropout, and the final fit on the train + valid periods."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recspec.config import ModelConfig
from recspec.training.loop import lr_at
from recspec.training.train import next_token_loss, train
from recspec.training.windows import build_windows

from test_train import CFG, tiny_model, toy_catalogue


def _fp32_loss(model, data, vocab, index) -> float:
    """Mean next-token loss over every training window, in fp32 outside any autocast."""
    w = build_windows(data.train, vocab, index, CFG.window_items, CFG.window_stride)
    with torch.no_grad():
        return float(next_token_loss(model.eval(), *w.batch(torch.arange(len(w)))))


def test_bf16_training_learns_what_fp32_learns(tmp_path):
    """Regression: one autocast context around a whole run froze the forward on the first step's bf16 weight
    copies (autocast caches them until the context exits); the model then scored ~0 in fp32. Autocast per
    step: the bf16-trained model's fp32 loss drops about as far as the fp32-trained model's."""
    data, index, vocab, trie = toy_catalogue(users=60)
    cfg = dataclasses.replace(CFG, epochs=3, eval_users=0)
    start = _fp32_loss(tiny_model(vocab), data, vocab, index)
    ends = {}
    for precision in ("fp32", "bf16"):
        model = tiny_model(vocab)
        train(model, data, index, vocab, trie, dataclasses.replace(cfg, precision=precision), tmp_path / precision,
              progress=False)
        ends[precision] = _fp32_loss(model, data, vocab, index)
    assert ends["fp32"] < start / 2
    assert start - ends["bf16"] > 0.9 * (start - ends["fp32"])


def test_training_inside_an_outer_autocast_is_refused(tmp_path):
    data, index, vocab, trie = toy_catalogue(users=20)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="autocast"):
        train(tiny_model(vocab), data, index, vocab, trie, dataclasses.replace(CFG, epochs=1), tmp_path, progress=False)


def test_steps_fix_the_schedule_and_its_cosine_ends_there(tmp_path):
    data, index, vocab, trie = toy_catalogue(users=40)
    logs: list[dict] = []
    cfg = dataclasses.replace(CFG, steps=13, epochs=100, eval_users=10)
    res = train(tiny_model(vocab), data, index, vocab, trie, cfg, tmp_path, on_log=logs.append, progress=False)
    assert res.steps == 13 and res.stop_reason == "done"
    last = [r for r in logs if r["event"] == "train"][-1]
    assert last["step"] == 13 and last["lr"] == pytest.approx(lr_at(12, 13, cfg))  # the schedule spans 13 steps
    assert lr_at(12, 13, cfg) < 0.3 * cfg.lr and lr_at(13, 13, cfg) == 0.0  # ... and decays to 0 at its end
    assert [r["step"] for r in logs if r["event"] == "eval"][-1] == 13  # the last model is validated


def test_patience_stops_early_and_keeps_the_best(tmp_path):
    """A learning rate of 0 after warm-up never changes the model: every validation ties the first, which
    is never beaten, so the run stops after `patience` more validations."""
    data, index, vocab, trie = toy_catalogue(users=40)
    cfg = dataclasses.replace(CFG, lr=0.0, eval_every=2, patience=3, steps=100, eval_users=10)
    res = train(tiny_model(vocab), data, index, vocab, trie, cfg, tmp_path, progress=False)
    assert res.stop_reason == "early_stop" and res.steps == 8 and res.best_step == 2
    assert res.checkpoint == str(tmp_path / "best")


def test_dropout_acts_in_training_only():
    data, index, vocab, trie = toy_catalogue(users=4)
    torch.manual_seed(0)
    from recspec.models.decoder import Decoder

    model = Decoder(ModelConfig(vocab_size=vocab.size, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                intermediate_size=64, dropout=0.5))
    tokens = torch.randint(3, vocab.size, (2, 7))
    model.train()
    assert not torch.equal(model.forward_train(tokens), model.forward_train(tokens))
    model.eval()
    assert torch.equal(model.forward_train(tokens), model.forward_train(tokens))
    plain = Decoder(dataclasses.replace(model.cfg, dropout=0.0))
    plain.load_state_dict(model.state_dict())
    assert torch.equal(plain.eval().forward_train(tokens), model.forward_train(tokens))


def test_final_fit_trains_on_the_valid_period_and_keeps_last(tmp_path):
    """Valid-period items follow each train sequence's last item; a train+valid fit sees those transitions."""
    data, index, vocab, trie = toy_catalogue(users=60)
    tv = [list(s) + list(e.targets) for s, e in zip(data.train, data.valid)]
    data = dataclasses.replace(data, train_valid=tv)
    cfg = dataclasses.replace(CFG, fit="train+valid", epochs=2)
    res = train(tiny_model(vocab), data, index, vocab, trie, cfg, tmp_path, progress=False)
    assert res.checkpoint == str(tmp_path / "last") and res.best_step is None  # nothing left to validate on
    per_epoch = len(build_windows(tv, vocab, index, cfg.window_items, cfg.window_stride))
    assert res.steps == 2 * -(-per_epoch // cfg.batch_size)
