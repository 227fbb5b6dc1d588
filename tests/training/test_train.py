"""Training on a toy catalogue with a clear sequential pattern: it learns, resumes exactly, schedules lr."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recspec.config import ModelConfig, TrainConfig
from recspec.data.datasets import Example, SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab
from recspec.errors import CheckpointError
from recspec.evaluation.evaluate import evaluate, evaluate_popularity
from recspec.models.decoder import Decoder
from recspec.models.hf import load_checkpoint
from recspec.training.loop import lr_at
from recspec.training.train import train

NUM_ITEMS = 30


def toy_catalogue(users: int = 160, seed: int = 0):
    """Item i is always followed by item i + 1 (mod 30); SIDs (i // 6, i % 6)."""
    codes = np.stack([np.arange(NUM_ITEMS) // 6, np.arange(NUM_ITEMS) % 6], axis=1)
    index = SIDIndex(codes=codes, level_sizes=(5, 6), prefixes=("a", "b"))
    vocab = Vocab.for_index(index)
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for u in range(users):
        start, n = int(rng.integers(0, NUM_ITEMS)), int(rng.integers(3, 9))
        seq = [(start + j) % NUM_ITEMS for j in range(n)]
        train.append(seq)
        valid.append(Example(str(u), tuple(seq), ((seq[-1] + 1) % NUM_ITEMS,)))
    data = SplitData(name="toy", num_items=NUM_ITEMS, train=train, valid=valid, test=valid)
    return data, index, vocab, build_trie(index, vocab)


def tiny_model(vocab: Vocab, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=vocab.size, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               intermediate_size=64, max_positions=128))


CFG = TrainConfig(epochs=8, batch_size=16, lr=1e-2, warmup_steps=10, window_items=6, window_stride=3,
                  eval_users=60, threads=1)


def test_learns_the_pattern_and_beats_popularity(tmp_path):
    data, index, vocab, trie = toy_catalogue()
    model = tiny_model(vocab)
    logs: list[dict] = []
    res = train(model, data, index, vocab, trie, CFG, tmp_path, on_log=logs.append, progress=False)
    assert res.stop_reason == "done" and res.epochs_done == CFG.epochs
    m = evaluate(model, trie, vocab, index, data.valid, K=10, ks=(10,))
    pop = evaluate_popularity(data, trie, data.valid, ks=(10,))
    assert m["recall@10"] > 0.9 > pop["recall@10"] + 0.4
    assert res.best_recall10 >= 0.9 and res.checkpoint == str(tmp_path / "best")
    losses = [r["loss"] for r in logs if r["event"] == "train"]
    assert losses[-1] < losses[0] / 3
    assert {r["event"] for r in logs} >= {"train", "eval", "best", "checkpoint"}
    _, meta = load_checkpoint(tmp_path / "best")
    assert meta.role == "target" and meta.extra["train"]["metrics"]["recall@10"] == res.best_recall10
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["step"] == res.steps and state["seed"] == CFG.seed


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    data, index, vocab, trie = toy_catalogue(users=60)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 3, "eval_every": 5, "eval_users": 10})
    full = tiny_model(vocab)
    ref = train(full, data, index, vocab, trie, cfg, tmp_path / "full", progress=False)
    part = tiny_model(vocab)
    stop = train(part, data, index, vocab, trie, TrainConfig(**{**cfg.__dict__, "max_steps": 7}),
                 tmp_path / "part", progress=False)
    assert stop.steps == 7 and stop.stop_reason == "max_steps"
    logs: list[dict] = []
    resumed = tiny_model(vocab, seed=1)  # different initial weights: they must come from the checkpoint
    res = train(resumed, data, index, vocab, trie, cfg, tmp_path / "part", on_log=logs.append, progress=False)
    assert logs[0] == {"event": "resume", "step": 7, "epoch": 7 // math.ceil(ref.steps / 3),
                       "path": str(tmp_path / "part" / "last")}
    assert res.steps == ref.steps and res.stop_reason == "done"
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_different_config(tmp_path):
    data, index, vocab, trie = toy_catalogue(users=20)
    cfg = TrainConfig(**{**CFG.__dict__, "max_steps": 2})
    train(tiny_model(vocab), data, index, vocab, trie, cfg, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="config"):
        train(tiny_model(vocab), data, index, vocab, trie, TrainConfig(**{**cfg.__dict__, "lr": 1e-3}),
              tmp_path, progress=False)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(s, 14, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 14, cfg) == 1.0  # cosine starts at the peak
    assert lr_at(9, 14, cfg) == pytest.approx(0.5)  # half way through the decay
    assert lr_at(14, 14, cfg) == pytest.approx(0.0)
    lrs = [lr_at(s, 14, cfg) for s in range(4, 15)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_time_limit_stops_cleanly_with_a_checkpoint(tmp_path, monkeypatch):
    """A time limit ends the run at a step boundary with a resumable checkpoint. The clock is a fake that
    advances one second per reading, so where the run stops does not depend on this machine's speed."""
    from recspec.training.loop import TrainLoop

    ticks = iter(range(10**6))
    monkeypatch.setattr(TrainLoop, "clock", staticmethod(lambda: float(next(ticks))))
    data, index, vocab, trie = toy_catalogue(users=20)
    res = train(tiny_model(vocab), data, index, vocab, trie, TrainConfig(**{**CFG.__dict__, "time_limit_s": 3.0}),
                tmp_path, progress=False)
    assert res.stop_reason == "time_limit" and 1 <= res.steps < 3  # each step reads the clock at least once
    assert res.checkpoint == str(tmp_path / "last") and math.isnan(res.best_recall10)
    _, meta = load_checkpoint(tmp_path / "last")
    assert meta.extra["train"]["state"]["step"] == res.steps
    assert (tmp_path / "last" / "optim.safetensors").is_file()


def test_weights_only_checkpoints_keep_no_optimiser_and_refuse_to_resume(tmp_path):
    """optimizer_state=False: last/ holds the weights (loadable) but no AdamW state, and a later run in the
    same folder is told it cannot resume instead of silently starting from fresh optimiser moments."""
    data, index, vocab, trie = toy_catalogue(users=20)
    cfg = TrainConfig(**{**CFG.__dict__, "max_steps": 2, "optimizer_state": False})
    res = train(tiny_model(vocab), data, index, vocab, trie, cfg, tmp_path, progress=False)
    assert res.steps == 2
    assert not (tmp_path / "last" / "optim.safetensors").exists() and not (tmp_path / "last" / "optim.json").exists()
    saved, _ = load_checkpoint(tmp_path / "last")
    assert saved.cfg.vocab_size == vocab.size
    with pytest.raises(CheckpointError, match="without optimiser state"):
        train(tiny_model(vocab), data, index, vocab, trie, TrainConfig(**{**cfg.__dict__, "max_steps": 4}),
              tmp_path, progress=False)


def test_a_step_cap_validates_the_model_it_ends_with(tmp_path):
    """A run cut by max_steps before any scheduled validation still validates at its last step, so best/ exists
    (a README command trains a draft for a few steps and then uses runs/.../best)."""
    data, index, vocab, trie = toy_catalogue(users=60)
    logs: list[dict] = []
    res = train(tiny_model(vocab), data, index, vocab, trie, TrainConfig(**{**CFG.__dict__, "max_steps": 3}), tmp_path,
                on_log=logs.append, progress=False)
    evals = [r for r in logs if r["event"] == "eval"]
    assert res.stop_reason == "max_steps" and [r["step"] for r in evals] == [3]
    assert res.checkpoint == str(tmp_path / "best") and res.best_recall10 == evals[0]["recall@10"]
