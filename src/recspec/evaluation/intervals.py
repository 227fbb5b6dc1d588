"""Confidence intervals over users for a mean metric: the percentile bootstrap. Pure numpy.

Terms, for per-user values x_1..x_U (e.g. `metrics.per_user_metrics`' Recall@k of each user):
    a resample   b = 1..B draws U user indices i_1..i_U uniformly with replacement
    m_b          = (1/U) sum_j x_{i_j}                   (the mean of resample b)
    interval     = (q_{(1-level)/2}, q_{(1+level)/2}) of m_1..m_B   (empirical quantiles)
For two systems a, b scored on the same users, the paired difference resamples users once and uses
the same indices for both: m_b(a) - m_b(b) = m_b(a - b), the mean of the per-user differences.

Resamples are drawn from `np.random.default_rng(seed)` in chunks of rows, so a seed gives the same
interval on every machine, and the same indices to `bootstrap_ci` and `paired_difference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_CELLS = 1 << 22  # resampled indices drawn at once (rows x U), ~32 MB of int64


@dataclass(frozen=True)
class PairedDiff:
    """mean(a) - mean(b) over the same users, with its bootstrap interval."""

    diff: float  # mean(a) - mean(b) on the data as given
    lo: float  # lower end of the interval
    hi: float  # upper end of the interval
    significant: bool  # the interval excludes 0 (lo > 0 or hi < 0)


def bootstrap_means(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """values (U,) -> (n_boot,) m_b, the means of n_boot resamples of the U users (see module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-d array, got shape {values.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    U = values.size
    rows = max(1, CHUNK_CELLS // U)  # resamples per chunk
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        n = min(rows, n_boot - start)
        idx = rng.integers(0, U, size=(n, U))  # (n, U) user indices, with replacement
        means[start:start + n] = values[idx].mean(axis=1)
    return means


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    """(n_boot,) resample means -> the central `level` interval of their empirical distribution."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """values (U,) -> (lo, hi), the percentile-bootstrap `level` interval of mean(values) over users."""
    return _percentiles(bootstrap_means(values, n_boot, seed), level)


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> PairedDiff:
    """a (U,), b (U,) per-user values of two systems on the same users (same order) -> mean(a) - mean(b)
    with the percentile-bootstrap interval of the difference, users resampled jointly."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same users: shapes {a.shape} and {b.shape}")
    d = a - b  # (U,) the per-user differences; mean over a resample = m_b(a) - m_b(b)
    lo, hi = _percentiles(bootstrap_means(d, n_boot, seed), level)
    return PairedDiff(diff=float(d.mean()), lo=lo, hi=hi, significant=bool(lo > 0.0 or hi < 0.0))
