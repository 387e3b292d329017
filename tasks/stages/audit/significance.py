"""The two statistics every audit finding rests on: a one-sided binomial tail and Benjamini-Hochberg."""

from __future__ import annotations

import numpy as np
from scipy.stats import binom


def upper_tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(X >= k) for X ~ Binomial(n, p), elementwise: how surprising k successes in n are at rate p."""
    return binom.sf(np.asarray(k) - 1, np.asarray(n), np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12))


def discoveries(p_values: np.ndarray, tested: int, rate: float) -> np.ndarray:
    """Benjamini-Hochberg at false discovery rate `rate` over `tested` hypotheses, of which `p_values` are the ones
    kept for a second look (a p above `rate` can never pass, so the rest need not be seen): a mask of p_values."""
    p = np.asarray(p_values, dtype=float)
    if not p.size:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    ranked = p[order] <= rate * np.arange(1, p.size + 1) / max(tested, p.size)
    passed = np.zeros(p.size, dtype=bool)
    if ranked.any():
        passed[order[: int(np.nonzero(ranked)[0].max()) + 1]] = True
    return passed
