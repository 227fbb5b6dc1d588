"""Bootstrap intervals over users, on cases whose answer holds by construction."""

from __future__ import annotations

import numpy as np
import pytest

from recspec.evaluation.intervals import bootstrap_ci, bootstrap_means, paired_difference


def _hits(U: int, rate: float) -> np.ndarray:
    """(U,) 0/1 values with exactly round(rate * U) ones (mean = rate whatever U)."""
    x = np.zeros(U)
    x[: round(rate * U)] = 1.0
    return x


def test_constant_values_give_a_zero_width_interval_at_the_value():
    lo, hi = bootstrap_ci(np.full(50, 0.25), n_boot=200)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_interval_contains_the_mean_and_narrows_as_users_grow():
    widths = []
    for U in (40, 400, 4000):
        x = _hits(U, 0.3)
        lo, hi = bootstrap_ci(x, n_boot=500)
        assert lo < x.mean() < hi
        widths.append(hi - lo)
    # the standard error shrinks as 1/sqrt(U): x10 users, about a third of the width
    assert widths[0] > 2 * widths[1] > 4 * widths[2]


def test_paired_difference_of_identical_arrays_is_zero_and_not_significant():
    x = _hits(300, 0.2)
    d = paired_difference(x, x.copy(), n_boot=300)
    assert d.diff == 0.0 and d.lo == 0.0 and d.hi == 0.0
    assert not d.significant


def test_clearly_shifted_pair_is_significant_both_ways():
    b = _hits(1000, 0.1)
    a = b.copy()
    a[500:800] = 1.0  # a finds 30% more users than b, never fewer
    d = paired_difference(a, b, n_boot=300)
    assert d.diff == pytest.approx(0.3)
    assert d.significant and 0.0 < d.lo < 0.3 < d.hi
    r = paired_difference(b, a, n_boot=300)
    assert r.significant and r.hi < 0.0


def test_paired_resamples_share_users():
    # the same seed draws the same user indices, so the paired means are the difference of the single means
    rng = np.random.default_rng(3)
    a, b = rng.random(200), rng.random(200)
    ma, mb, md = (bootstrap_means(v, n_boot=50, seed=7) for v in (a, b, a - b))
    np.testing.assert_allclose(md, ma - mb, atol=1e-12)


def test_the_seed_decides_the_interval():
    x = np.random.default_rng(0).random(500)
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1)
    assert bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=2)
    assert paired_difference(x, x[::-1], seed=4) == paired_difference(x, x[::-1], seed=4)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="same users"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(np.zeros(3), level=1.0)
