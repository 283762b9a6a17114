"""Linear CKA (Kornblith et al. 2019), biased and debiased, from accumulated Gram statistics."""

from functools import partial
from typing import Any

import numpy as np

from wordspace.metrics.statistics import GramStatistics, gram_statistics


def cka_from_statistics(stats: GramStatistics, debiased: bool = False) -> np.ndarray:
    """CKA of every layer of A (rows) with every layer of B (columns).

    Biased: ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F). Debiased: the same ratio with each product
    replaced by the unbiased HSIC estimator of Song et al. (2012) in feature-space form,
    ``‖XcᵀYc‖²_F - n/(n-2) Σ‖xc‖²‖yc‖² + ‖Xc‖²_F ‖Yc‖²_F / ((n-1)(n-2))`` (the factor
    1/(n(n-3)) cancels). The debiased self-similarity can be negative for tiny n; then the
    value is NaN.
    """
    cross_sq = np.stack([np.einsum("dbe,dbe->b", block, block) for block in stats.cross])
    self_sq_a = np.einsum("lde,lde->l", stats.gram_a, stats.gram_a)
    self_sq_b = np.einsum("lde,lde->l", stats.gram_b, stats.gram_b)
    if not debiased:
        return cross_sq / np.sqrt(np.outer(self_sq_a, self_sq_b))
    if stats.q_ab is None:
        raise ValueError("these statistics were accumulated without debiased=True")
    n = stats.n_words
    trace_a = np.einsum("ldd->l", stats.gram_a)
    trace_b = np.einsum("ldd->l", stats.gram_b)

    def hsic(products_sq: np.ndarray, q: np.ndarray, traces: np.ndarray) -> np.ndarray:
        return products_sq - n / (n - 2) * q + traces / ((n - 1) * (n - 2))

    numerator = hsic(cross_sq, stats.q_ab, np.outer(trace_a, trace_b))
    norm_a = hsic(self_sq_a, stats.q_a, trace_a**2)
    norm_b = hsic(self_sq_b, stats.q_b, trace_b**2)
    with np.errstate(invalid="ignore"):
        return numerator / np.sqrt(np.outer(norm_a, norm_b))


def cka_grid(a: Any, b: Any, debiased: bool = False) -> np.ndarray:
    """Linear CKA of every layer of ``a`` ``(La, n, da)`` with every layer of ``b``: ``(La, Lb)``.

    Words that are NaN in either input are left out (``similarity_grid`` reports how many).
    """
    summary = partial(cka_from_statistics, debiased=debiased)
    return gram_statistics(a, b, debiased=debiased, summary=summary)


def linear_cka(x: Any, y: Any, debiased: bool = False) -> float:
    """Linear CKA of ``x`` ``(n, d1)`` and ``y`` ``(n, d2)``; see ``cka_from_statistics``."""
    return float(cka_grid(x, y, debiased=debiased)[0, 0])
