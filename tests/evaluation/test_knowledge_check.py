"""The paired comparison of two knowledge sets: identical knowledge gives exactly zero difference, the
t quantiles match their tables, and the knowledge file format and the perturbation behave as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recspec.errors import DataError
from recspec.evaluation.ctr import CTRConfig, CTRResult
from recspec.evaluation.knowledge_check import (agreement_row, compare_knowledge, drop_words, read_knowledge,
                                                t_ci, t_quantile, text_matrix, user_bootstrap_ci)
from recspec.evaluation.text_embed import HashingEncoder
from test_ctr import clustered

TINY = CTRConfig(history_len=5, dim=8, hidden=16, epochs=2, batch_size=64, lr=1e-2)


@pytest.mark.parametrize("q, df, table", [(0.975, 1, 12.7062), (0.975, 4, 2.7764), (0.95, 10, 1.8125),
                                          (0.995, 30, 2.7500), (0.025, 4, -2.7764)])
def test_t_quantile_matches_the_table(q, df, table):
    assert t_quantile(q, df) == pytest.approx(table, abs=2e-4)


def test_t_ci_is_centred_on_the_mean():
    lo, hi = t_ci([0.01, 0.02, 0.03, 0.04, 0.05])
    sd = np.std([0.01, 0.02, 0.03, 0.04, 0.05], ddof=1)
    assert (lo + hi) / 2 == pytest.approx(0.03) and hi - lo == pytest.approx(2 * 2.7764 * sd / np.sqrt(5), rel=1e-4)


def _result(scores, labels, users) -> CTRResult:
    return CTRResult(auc=0.0, logloss=0.0, valid_auc=0.0, scores=np.asarray(scores, dtype=float),
                     labels=np.asarray(labels, dtype=np.float32), users=np.asarray(users))


def test_bootstrap_sees_a_clear_gain_and_no_gain_in_identical_arms():
    rng = np.random.default_rng(0)
    users, labels = np.repeat(np.arange(200), 5), np.tile([1, 0, 0, 0, 0], 200).astype(float)
    noise = _result(rng.random(1000), labels, users)
    good = _result(labels + 0.5 * rng.random(1000), labels, users)
    lo, hi = user_bootstrap_ci([noise], [good], n_boot=200)
    assert lo > 0.3
    assert user_bootstrap_ci([noise], [noise], n_boot=50) == (0.0, 0.0)


def test_identical_knowledge_gives_exactly_zero_difference():
    inter, text = clustered(users=60)
    rows = compare_knowledge(inter, text, text.copy(), None, seeds=(0, 1), cfg=TINY, n_boot=50)
    arms = {r["arm"]: r for r in rows}
    assert set(arms) == {"greedy", "relaxed", "none", "relaxed-greedy", "greedy-none", "relaxed-none"}
    d = arms["relaxed-greedy"]
    assert d["auc_diff_per_seed"] == [0.0, 0.0] and d["bootstrap_ci"] == [0.0, 0.0] and not d["significant"]
    assert arms["greedy"]["auc_per_seed"] == arms["relaxed"]["auc_per_seed"]
    assert len(arms["greedy-none"]["auc_diff_per_seed"]) == 2 and arms["none"]["users"] == 60


def test_knowledge_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text('{"item": 3, "text": "red stapler"}\n\n{"item": 1, "text": "ink"}\n')
    assert read_knowledge(path) == {1: "ink", 3: "red stapler"}
    for bad in ('{"item": "3", "text": "x"}', '{"item": 1, "text": "a"}\n{"item": 1, "text": "b"}', '[1, "x"]'):
        path.write_text(bad)
        with pytest.raises(DataError):
            read_knowledge(path)


def test_text_matrix_leaves_items_without_text_at_zero():
    m = text_matrix({0: "red stapler", 2: "ink"}, 4, HashingEncoder(dim=16))
    assert m.shape == (4, 16) and not m[1].any() and not m[3].any()
    assert np.allclose(np.linalg.norm(m[[0, 2]], axis=1), 1.0, atol=1e-6)
    with pytest.raises(DataError):
        text_matrix({5: "x"}, 4, HashingEncoder(dim=16))


def test_drop_words_is_seeded_per_item_and_keeps_a_word():
    texts = {i: " ".join(f"w{j}" for j in range(40)) for i in range(20)}
    a, b = drop_words(texts, 0.1, 0), drop_words(dict(reversed(texts.items())), 0.1, 0)
    assert a == b and drop_words(texts, 0.0, 0) == texts
    kept = np.mean([len(t.split()) for t in a.values()]) / 40
    assert 0.85 < kept < 0.95
    assert all(drop_words({0: "only"}, 0.99, s)[0] == "only" for s in range(5))


def test_agreement_counts_differing_texts():
    a, b, enc = {0: "red stapler", 1: "ink"}, {0: "red stapler", 1: "toner", 2: "x"}, HashingEncoder(dim=64)
    row = agreement_row(a, b, text_matrix(a, 3, enc), text_matrix(b, 3, enc))
    assert row["items"] == 2 and row["share_differing"] == 0.5
    assert row["cosine_mean"] == pytest.approx(0.5 * (1.0 + row["cosine_mean_differing"]))
    assert json.dumps(row)
