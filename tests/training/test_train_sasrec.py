"""SASRec training on a toy catalogue where item i is always followed by item i + 1: a fixed, seeded
number of steps learns it; runs are reproducible; early stopping and tuning pick by validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recspec.data.datasets import Example
from recspec.evaluation.metrics import popularity_ranking
from recspec.models.sasrec import PAD, SASRec, SASRecConfig
from recspec.training.sasrec import (SASRecGrid, SASRecTrainConfig, rank_sasrec, sasrec_loss, train_sasrec,
                                     training_rows, tune_sasrec)

pytestmark = pytest.mark.usefixtures("one_thread")

I = 40  # items
MODEL = SASRecConfig(num_items=I, hidden=32, layers=1, heads=2, max_len=10, dropout=0.1)
TRAIN = SASRecTrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=50, patience=100)


def runs(n: int, seed: int) -> list[list[int]]:
    """n runs of consecutive items i, i + 1, ... of 3 to 8 items, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start, length = int(rng.integers(0, I - 8)), int(rng.integers(3, 9))
        out.append(list(range(start, start + length)))
    return out


TRAIN_SEQS = runs(300, seed=0)
VALID = [Example(str(u), tuple(s[:-1]), (s[-1],)) for u, s in enumerate(runs(60, seed=1))]


@pytest.fixture(scope="module")
def trained():
    return train_sasrec(TRAIN_SEQS, VALID, TRAIN, MODEL)


def top1_accuracy(ranked: list[list[int]]) -> float:
    return float(np.mean([r[0] == e.targets[0] for r, e in zip(ranked, VALID)]))


def test_learns_the_next_item_well_above_popularity(trained):
    ranked = rank_sasrec(trained.model, [e.history for e in VALID], k=5)
    assert all(len(r) == 5 and len(set(r)) == 5 for r in ranked)
    pop = popularity_ranking(TRAIN_SEQS, I, 1)
    assert top1_accuracy(ranked) >= 0.8
    assert top1_accuracy([pop] * len(VALID)) <= 0.1


def test_curve_and_best_step(trained):
    assert [p["step"] for p in trained.curve] == [50, 100, 150, 200]
    best = max(p["recall@10"] for p in trained.curve)
    first_best = next(p["step"] for p in trained.curve if p["recall@10"] == best)
    assert trained.best_step == first_best and trained.steps_run == 200
    assert not trained.model.training


def test_same_seed_same_weights_other_seed_other_weights():
    cfg = SASRecTrainConfig(steps=15, batch_size=16, warmup_steps=3, eval_every=5)
    a, b = (train_sasrec(TRAIN_SEQS, VALID, cfg, MODEL).model.state_dict() for _ in range(2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    c = train_sasrec(TRAIN_SEQS, VALID, SASRecTrainConfig(steps=15, batch_size=16, warmup_steps=3, eval_every=5,
                                                          seed=1), MODEL).model.state_dict()
    assert not torch.equal(a["item_emb.weight"], c["item_emb.weight"])


def test_callers_rng_is_left_alone():
    state = torch.random.get_rng_state()
    train_sasrec(TRAIN_SEQS, None, SASRecTrainConfig(steps=2, batch_size=8), MODEL)
    assert torch.equal(state, torch.random.get_rng_state())


def test_patience_stops_a_run_that_cannot_improve():
    # lr 0: the weights never change, so validation never beats its first value
    cfg = SASRecTrainConfig(steps=100, batch_size=8, lr=0.0, eval_every=10, patience=2)
    res = train_sasrec(TRAIN_SEQS, VALID, cfg, MODEL)
    assert [p["step"] for p in res.curve] == [10, 20, 30]
    assert res.best_step == 10 and res.steps_run == 30


def test_without_validation_all_steps_and_no_curve():
    res = train_sasrec(TRAIN_SEQS, None, SASRecTrainConfig(steps=7, batch_size=8, eval_every=2), MODEL)
    assert res.curve == [] and res.steps_run == 7 and res.best_step == 7


def test_rows_keep_the_newest_items_and_drop_single_items():
    rows = training_rows([[5], [1, 2], list(range(20))], max_len=3)  # (2, 4)
    assert rows.tolist() == [[PAD, PAD, 2, 3], [17, 18, 19, 20]]


def test_loss_ignores_padding():
    torch.manual_seed(0)
    model = SASRec(MODEL).eval()  # no dropout: the same rows must give the same loss
    rows = training_rows([[1, 2, 3], [4, 5, 6, 7]], max_len=4)  # (2, 5)
    wider = torch.cat([torch.full((2, 3), PAD), rows], dim=1)[:, -6:]  # more padding on the left
    torch.testing.assert_close(sasrec_loss(model, rows), sasrec_loss(model, wider))


def test_tuning_keeps_the_best_validation_recall():
    grid = SASRecGrid(hidden=(16,), dropout=(0.1,), lr=(0.0, 3e-3))  # lr 0 cannot learn
    cfg = SASRecTrainConfig(steps=60, batch_size=32, warmup_steps=5, eval_every=30)
    tuning = tune_sasrec(TRAIN_SEQS, VALID, grid, cfg, MODEL)
    assert [t.train_cfg.lr for t in tuning.trials] == [0.0, 3e-3]
    assert all(t.model_cfg.hidden == 16 for t in tuning.trials)
    assert tuning.best is tuning.trials[1] and tuning.best.best_recall > tuning.trials[0].best_recall
    assert tuning.model.cfg.hidden == 16
