"""fit_and_rank_baselines fits each baseline on the split's sequences and ranks that split's users."""

from __future__ import annotations

import pytest

from recspec.data.datasets import Example, SplitData
from recspec.training.fit_baselines import SASRecSetup, fit_and_rank_baselines
from recspec.training.sasrec import SASRecGrid, SASRecTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

I = 12


def toy() -> SplitData:
    """Train: 0 -> 1 many times. Valid period: 2 -> 3 (only in train_valid), so a transition model fitted
    for the test split (train + valid) follows 2 with 3, one fitted for valid does not."""
    train = [[0, 1]] * 6 + [[2, 5]]
    train_valid = [[0, 1]] * 6 + [[2, 5, 2, 3], [2, 3]]
    valid = [Example("a", (0,), (1,)), Example("b", (2,), (3,))]
    test = [Example("a", (0, 1), (4,)), Example("b", (2,), (3,)), Example("c", (0,), (1,))]
    return SplitData(name="toy", num_items=I, train=train, valid=valid, test=test, train_valid=train_valid)


SETUP = SASRecSetup(train=SASRecTrainConfig(steps=20, batch_size=4, warmup_steps=2, eval_every=10),
                    grid=SASRecGrid(hidden=(8,), dropout=(0.1,), lr=(1e-3, 3e-3)), layers=1, max_len=4)


def test_rankings_per_model_and_split():
    data = toy()
    valid = fit_and_rank_baselines(data, "valid", k=3, sasrec=None)
    test = fit_and_rank_baselines(data, "test", k=3, sasrec=None)
    assert set(valid.rankings) == {"popularity", "transition"}
    assert len(valid.rankings["transition"]) == 2 and len(test.rankings["transition"]) == 3
    assert valid.rankings["transition"][1][0] == 5  # train only: 2 was followed by 5
    assert test.rankings["transition"][1][0] == 3  # train + valid: 2 -> 3 twice, 2 -> 5 once
    assert valid.rankings["popularity"][0] == [0, 1, 2]
    assert test.info["transition"] == {"fit_sequences": 8, "window": 3, "last": 3}


def test_sasrec_is_tuned_on_valid_then_refit_for_test():
    res = fit_and_rank_baselines(toy(), "test", k=3, sasrec=SETUP)
    assert set(res.rankings) == {"popularity", "transition", "sasrec"}
    ranked = res.rankings["sasrec"]
    assert len(ranked) == 3 and all(len(set(r)) == 3 for r in ranked)
    info = res.info["sasrec"]
    assert [t["lr"] for t in info["trials"]] == [1e-3, 3e-3]
    assert all([p["step"] for p in t["curve"]] == [10, 20] for t in info["trials"])
    assert info["refit_steps"] == info["chosen"]["best_step"]
    assert info["chosen"]["best_recall@10"] == max(t["best_recall@10"] for t in info["trials"])


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        fit_and_rank_baselines(toy(), "train", k=3, sasrec=None)


def test_exclude_history_drops_history_items_from_every_baseline():
    data = toy()
    res = fit_and_rank_baselines(data, "test", k=3, sasrec=SETUP, exclude_history=True)
    for name, ranked in res.rankings.items():
        for row, e in zip(ranked, data.test):
            assert len(row) == 3 and not set(row) & set(e.history), name
    plain = fit_and_rank_baselines(data, "test", k=3, sasrec=None)
    assert plain.rankings["popularity"][0] == [0, 1, 2]
    assert res.rankings["popularity"][0] == [2, 3, 5]  # user a's history (0, 1) dropped, the order kept


def test_train_only_fits_the_train_period_for_the_test_users():
    res = fit_and_rank_baselines(toy(), "test", k=3, sasrec=SETUP, train_only=True)
    assert res.rankings["transition"][1][0] == 5  # 2 -> 5 in train; 2 -> 3 only in the valid period
    assert "refit_steps" not in res.info["sasrec"] and len(res.rankings["sasrec"]) == 3
