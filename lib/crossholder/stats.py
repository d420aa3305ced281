"""Statistics of robustness counts: Wilson score intervals and the exact McNemar test."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["wilson_interval", "mcnemar_exact"]


def wilson_interval(k: int | np.ndarray, n: int | np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval for a proportion ``k / n``."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / n, np.nan)
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """The exact two-sided McNemar test on the discordant counts: ``min(1, 2 P(X <= min(only_a,
    only_b)))`` with ``X ~ Binomial(only_a + only_b, 1/2)``; 1.0 when nothing is discordant. Exact
    (integer arithmetic) for any count."""
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return min(1.0, 2 * tail)
