"""Statistics against scipy: Wilson score intervals and the exact McNemar test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from crossholder import stats


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (512, 1000), (1, 500)])
def test_wilson_interval_matches_scipy(k, n):
    lo, hi = stats.wilson_interval(k, n)
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert float(lo) == pytest.approx(ref.low, abs=1e-6) and float(hi) == pytest.approx(ref.high, abs=1e-6)


def test_wilson_interval_of_nothing_is_nan():
    lo, hi = stats.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


@pytest.mark.parametrize("a,b", [(0, 0), (3, 0), (7, 2), (40, 55), (300, 260)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(a, b):
    ref = 1.0 if a + b == 0 else sps.binomtest(min(a, b), a + b, 0.5).pvalue
    assert stats.mcnemar_exact(a, b) == pytest.approx(ref, rel=1e-9)


def test_wilson_interval_known_values():
    lo, hi = stats.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-3)
