"""Strict (greedy) knowledge vs relaxed knowledge, judged downstream (spec retrieval-drafting.md, section 4):
the CTR model of `evaluation.ctr` trained with each knowledge set's item-text embeddings, and with none,
on the same seeds; mean AUC / LogLoss per arm and intervals on the AUC difference.

Pairing. Seed s fixes the negatives, the initial weights of every shared parameter and the batch order
(`ctr.run_ctr`), so the arms of one seed see the same test examples and differ only in the text.
For arms x, y with test AUCs A_x(s), A_y(s), s = 1..S, the difference reported is
    Delta = (1/S) sum_s d_s,     d_s = A_y(s) - A_x(s).

Two intervals, for two sources of noise, both at `level`:
- bootstrap over test users (`user_bootstrap_ci`): replicate b draws U test users with replacement, one
  draw shared by every seed and both arms; a user drawn c times weighs c (its positive and its negatives).
      Delta_b = (1/S) sum_s [AUC_w(y, s) - AUC_w(x, s)]        (AUC_w: `ctr.grouped_auc`, weights c)
  interval = percentiles of Delta_1..Delta_B. AUC is not a mean over users, so the whole pooled AUC is
  recomputed per replicate (not `intervals.paired_difference`, which averages per-user values). It
  holds the S trained models fixed: it measures which users happen to be in the test set.
- t over seeds (`t_ci`): Delta +- t_{(1+level)/2, S-1} sd(d) / sqrt(S). It holds the test users fixed:
  it measures training noise (init, negatives, order). With S = 5 it has 4 degrees of freedom and is wide.
A difference is called significant only where both intervals exclude 0; neither alone covers both
sources of noise.

Knowledge files (what a `recspec knowledge` run writes, what bench/ctr_check.py reads): JSON lines,
one object per item, {"item": <item id, int>, "text": <the generated text, str>}; an item may appear
once; items absent from a file get a zero text row (the "no text" features for that item).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recspec.errors import DataError
from recspec.evaluation.ctr import CTRConfig, CTRResult, grouped_auc, run_ctr, tie_groups
from recspec.evaluation.text_embed import TextEncoder

SEEDS = (0, 1, 2, 3, 4)
ARMS = ("greedy", "relaxed", "none")  # knowledge A (strict), knowledge B (relaxed), no text


# --- intervals ------------------------------------------------------------------------------------
def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t with df degrees of freedom: bisection on
    F(t) = 1/2 + int_0^t Gamma((df+1)/2) / (sqrt(df pi) Gamma(df/2)) (1 + x^2/df)^(-(df+1)/2) dx,
    the integral by Simpson's rule on 4,096 intervals (q in (0.5, 1); below 0.5 by symmetry)."""
    if not 0.0 < q < 1.0 or df < 1:
        raise ValueError(f"need 0 < q < 1 and df >= 1, got q={q}, df={df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    weights = np.ones(4097)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0  # Simpson's 1 4 2 4 ... 4 1

    def cdf(t: float) -> float:
        x = np.linspace(0.0, t, 4097)
        return 0.5 + float((weights * c * (1 + x * x / df) ** (-(df + 1) / 2)).sum() * t / (3 * 4096))

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return 0.5 * (lo + hi)


def t_ci(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(S,) paired per-seed differences -> mean +- t_{(1+level)/2, S-1} sd / sqrt(S); S = 1: (nan, nan)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    half = t_quantile((1.0 + level) / 2.0, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def user_bootstrap_ci(xs: Sequence[CTRResult], ys: Sequence[CTRResult], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Per-seed results of arms x and y (same seeds, same order) -> the percentile interval of Delta_b
    (module docstring), test users resampled jointly for every seed and both arms."""
    users = xs[0].users
    if any(r.users.shape != users.shape or (r.users != users).any() for r in (*xs, *ys)):
        raise ValueError("paired results must share their test examples' users (same data, same order)")
    test_users, rows = np.unique(users, return_inverse=True)  # example n belongs to test user rows[n]
    grouped = [(tie_groups(x.scores), x.labels, tie_groups(y.scores), y.labels) for x, y in zip(xs, ys)]
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_boot)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, test_users.size, test_users.size), minlength=test_users.size)
        w = counts[rows].astype(np.float64)  # (N,) weight of each test example
        deltas[b] = np.mean([grouped_auc(*gy, ly, w) - grouped_auc(*gx, lx, w) for gx, lx, gy, ly in grouped])
    lo, hi = np.quantile(deltas, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


@dataclass(frozen=True)
class AUCDiff:
    """AUC of arm y minus arm x over paired seeds, with both intervals."""

    diff: float  # Delta, mean over seeds of A_y(s) - A_x(s)
    per_seed: tuple[float, ...]  # (S,) d_s
    bootstrap: tuple[float, float]  # interval over test users
    t: tuple[float, float]  # t-interval over seeds
    significant: bool  # both intervals exclude 0


def auc_difference(xs: Sequence[CTRResult], ys: Sequence[CTRResult], n_boot: int = 1000,
                   level: float = 0.95) -> AUCDiff:
    d = [y.auc - x.auc for x, y in zip(xs, ys)]
    boot, t = user_bootstrap_ci(xs, ys, n_boot, 0, level), t_ci(d, level)
    excl = [lo > 0 or hi < 0 for lo, hi in (boot, t)]
    return AUCDiff(diff=float(np.mean(d)), per_seed=tuple(d), bootstrap=boot, t=t, significant=all(excl))


# --- the comparison -------------------------------------------------------------------------------
def _arm_row(name: str, results: Sequence[CTRResult], seeds: Sequence[int]) -> dict:
    return {"task": "ctr_check", "arm": name, "seeds": list(seeds),
            "users": int(np.unique(results[0].users).size), "examples": int(results[0].labels.size),
            "auc": float(np.mean([r.auc for r in results])), "auc_per_seed": [r.auc for r in results],
            "logloss": float(np.mean([r.logloss for r in results])),
            "logloss_per_seed": [r.logloss for r in results],
            "valid_auc": float(np.mean([r.valid_auc for r in results]))}


def _diff_row(y: str, x: str, d: AUCDiff, level: float) -> dict:
    return {"task": "ctr_check", "arm": f"{y}-{x}", "auc_diff": d.diff, "auc_diff_per_seed": list(d.per_seed),
            "bootstrap_ci": list(d.bootstrap), "t_ci": list(d.t), "level": level, "significant": d.significant}


def compare_knowledge(interactions: Mapping[str, Sequence[int]], emb_a: np.ndarray, emb_b: np.ndarray,
                      emb_none: np.ndarray | None = None, seeds: Sequence[int] = SEEDS,
                      cfg: CTRConfig = CTRConfig(), n_boot: int = 1000, level: float = 0.95,
                      names: tuple[str, str, str] = ARMS) -> list[dict]:
    """emb_a, emb_b (I, d) item-text embeddings of knowledge A (greedy) and B (relaxed); emb_none (I, d')
    or None, the no-text arm (None: no text features at all). -> rows: one per arm (mean AUC / LogLoss
    over the seeds, per-seed values), then the differences B - A, A - none, B - none (module docstring)."""
    I = int(np.asarray(emb_a).shape[0])
    if np.asarray(emb_b).shape[0] != I or (emb_none is not None and np.asarray(emb_none).shape[0] != I):
        raise ValueError("every arm's embedding matrix needs the same I rows")
    res = {name: [run_ctr(interactions, emb, cfg, s, num_items=I) for s in seeds]
           for name, emb in zip(names, (emb_a, emb_b, emb_none))}
    rows = [_arm_row(name, res[name], seeds) for name in names]
    a, b, none = names
    for y, x in ((b, a), (a, none), (b, none)):
        rows.append(_diff_row(y, x, auc_difference(res[x], res[y], n_boot, level), level))
    return rows


# --- knowledge texts ------------------------------------------------------------------------------
def read_knowledge(path: str | os.PathLike) -> dict[int, str]:
    """A knowledge JSON-lines file (module docstring) -> {item id: text}, ids increasing."""
    out: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            item, text = (obj.get("item"), obj.get("text")) if isinstance(obj, dict) else (None, None)
            if not isinstance(item, int) or isinstance(item, bool) or item < 0 or not isinstance(text, str):
                raise DataError(f"{path}:{ln}: expected {{\"item\": <id >= 0>, \"text\": <str>}}")
            if item in out:
                raise DataError(f"{path}:{ln}: item {item} appears twice")
            out[item] = text
    return dict(sorted(out.items()))


def text_matrix(texts: Mapping[int, str], num_items: int, encoder: TextEncoder) -> np.ndarray:
    """{item: text} -> (I, d) float32 rows encoder.encode(text); items without a text: zero rows."""
    bad = [i for i in texts if not 0 <= i < num_items]
    if bad:
        raise DataError(f"knowledge for item {bad[0]}, outside the catalogue 0..{num_items - 1}")
    ids = sorted(texts)
    emb = encoder.encode([texts[i] for i in ids])  # (n, d)
    out = np.zeros((num_items, emb.shape[1]), dtype=np.float32)
    out[ids] = emb
    return out


def agreement_row(texts_a: Mapping[int, str], texts_b: Mapping[int, str], emb_a: np.ndarray,
                  emb_b: np.ndarray) -> dict:
    """Over the items with both texts: the share whose texts differ (as strings) and the mean cosine
    emb_a[i] . emb_b[i] (`text_matrix` rows, (I, d) each), over all of them and over the differing ones
    (spec section 4's report)."""
    ids = sorted(set(texts_a) & set(texts_b))
    if not ids:
        raise DataError("the two knowledge sets share no item")
    cos = (np.asarray(emb_a)[ids] * np.asarray(emb_b)[ids]).sum(axis=1).astype(np.float64)  # (n,)
    differ = np.array([texts_a[i] != texts_b[i] for i in ids])  # (n,)
    return {"task": "ctr_check", "arm": "agreement", "items": len(ids), "share_differing": float(differ.mean()),
            "cosine_mean": float(cos.mean()),
            "cosine_mean_differing": float(cos[differ].mean()) if differ.any() else None}


def drop_words(texts: Mapping[int, str], frac: float, seed: int) -> dict[int, str]:
    """A perturbed copy: each whitespace word of item i's text dropped with probability frac, drawn from
    default_rng([seed, i]) (independent of the other items); a text keeps at least its first word."""
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"frac must be in [0, 1), got {frac}")
    out = {}
    for i, text in texts.items():
        words = text.split()
        keep = np.random.default_rng([seed, int(i)]).random(len(words)) >= frac  # (n_words,)
        kept = [w for w, k in zip(words, keep) if k]
        out[i] = " ".join(kept or words[:1])
    return out
