"""CCA in closed form from accumulated covariances: whiten each space, then take the singular
values of the whitened cross-covariance.

Rank cut: a covariance's eigen-directions with eigenvalue at most ``d · eps · λ_max`` are dropped
before whitening (d the dimension, eps the machine epsilon of the per-chunk products: float32 for
float16/float32 inputs, float64 for float64 inputs). They are null directions up to rounding
(constant or collinear columns, fewer words than dimensions) and whitening them would turn
rounding noise into correlations of 1. Canonical correlations are then
``min(rank_a, rank_b)`` values. For full-rank but ill-conditioned spaces, use ``ridge``.

A space whose covariance is clearly above the cut (see ``_clearly_full_rank``) is whitened by the
inverse of its covariance's Cholesky factor instead: the same correlations (whitenings differ by a
rotation), and each pair's whitened cross-covariance is then two triangular products (``trmm``),
half the flops of two ``gemm``.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from wordspace.errors import WordspaceError
from wordspace.metrics import _lapack
from wordspace.metrics.statistics import GramStatistics, _on_all_cores, gram_statistics


@dataclass(frozen=True)
class _Whitener:
    """A whitening ``W`` (``Wᵀ C W = I`` on the kept directions), applied as ``WᵀX`` or ``XW``.

    ``matrix`` is ``W`` itself (d, rank), or with ``triangular`` the inverse ``L⁻¹`` of the
    Cholesky factor ``C = L Lᵀ`` (``W = L⁻ᵀ``) in its lower triangle, applied in place by
    triangular products.
    """

    matrix: np.ndarray
    triangular: bool

    def left(self, x: np.ndarray) -> np.ndarray:
        """``Wᵀx``; a Fortran-ordered ``x`` may be overwritten."""
        if self.triangular:
            return _lapack.multiply_lower(
                self.matrix, np.asfortranarray(x), right=False, transpose=False
            )
        return self.matrix.T @ x

    def right(self, x: np.ndarray) -> np.ndarray:
        """``xW``; a Fortran-ordered ``x`` may be overwritten."""
        if self.triangular:
            return _lapack.multiply_lower(
                self.matrix, np.asfortranarray(x), right=True, transpose=True
            )
        return x @ self.matrix


def _kept(eigenvalues: np.ndarray, d: int, precision: float) -> np.ndarray:
    """The rank cut: eigenvalues (ascending) above ``d · precision · λ_max``; none if λ_max <= 0."""
    if eigenvalues[-1] <= 0:
        return np.zeros(len(eigenvalues), dtype=bool)
    return eigenvalues > eigenvalues[-1] * d * precision


def _clearly_full_rank(cov: np.ndarray, precision: float) -> bool:
    """Whether ``C − 2·d·precision·‖C‖_F·I`` has a Cholesky factor, which proves every
    eigenvalue of ``C`` above the rank cut (``‖C‖_F ≥ λ_max``; twice the cut, so that the
    factorisation's own rounding cannot pass a direction the cut drops). It costs a third of
    ``eigvalsh``; spaces it cannot settle take the exact cut."""
    d = cov.shape[0]
    bound = 2 * d * precision * np.linalg.norm(cov)
    shifted = np.array(cov, order="F")
    shifted.flat[:: d + 1] -= bound
    return bound > 0 and _lapack.cholesky(shifted)


def _whitener(cov: np.ndarray, ridge: float, precision: float) -> _Whitener:
    """The whitening of the ridged ``C`` on its kept eigen-directions: triangular when ``C`` is
    clearly full rank (then its own Cholesky factorisation cannot fail)."""
    d = cov.shape[0]
    if ridge:
        cov = (1 - ridge) * cov + (ridge * np.trace(cov) / d) * np.eye(d)
    if _clearly_full_rank(cov, precision):
        inverse = np.array(cov, order="F")
        _lapack.cholesky(inverse)
        _lapack.invert_lower(inverse)
        return _Whitener(inverse, triangular=True)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    keep = _kept(eigenvalues, d, precision)
    return _Whitener(eigenvectors[:, keep] / np.sqrt(eigenvalues[keep]), triangular=False)


def _correlations(white_a: _Whitener, cross: np.ndarray, white_b: _Whitener) -> np.ndarray:
    # Whitening the block's transpose gives the transposed result, with the same singular
    # values, from one Fortran-ordered copy of the block (C-ordered: its transpose is a strided
    # view) that both triangular products overwrite. With every step's GIL released (see
    # ``_lapack``), 13 x 13 pairs of 768 and their whitenings took 4.4-4.8 s against 5.5-6.4 s.
    whitened = white_a.right(white_b.left(np.array(cross.T, order="F")))
    # The eigenvalues of the smaller Gram matrix are several times faster than an SVD at d = 768.
    squared = _lapack.eigenvalues(_lapack.smaller_gram(np.asfortranarray(whitened)))[::-1]
    return np.sqrt(np.clip(squared, 0.0, 1.0))


def check_ridge(ridge: float, name: str = "ridge") -> None:
    """An error naming ``name`` unless the CCA shrinkage ``ridge`` is in [0, 1]."""
    if not 0.0 <= ridge <= 1.0:
        raise WordspaceError(f"{name}={ridge} is outside [0, 1]; pass a shrinkage in [0, 1]")


def canonical_correlations_from_statistics(
    stats: GramStatistics, ridge: float = 0.0
) -> list[list[np.ndarray]]:
    """Canonical correlations (decreasing) of every layer pair: ``result[i][j]`` for A_i, B_j."""
    check_ridge(ridge)
    la, lb = stats.n_layers
    grams = [*stats.gram_a] if stats.same else [*stats.gram_a, *stats.gram_b]
    whiteners = _parallel_map(lambda g: _whitener(g, ridge, stats.precision), grams)
    white_a, white_b = whiteners[:la], whiteners[-lb:]
    pairs = [(i, j) for i in range(la) for j in range(i if stats.same else 0, lb)]
    values = _parallel_map(
        lambda p: _correlations(white_a[p[0]], stats.cross[p[0], :, p[1], :], white_b[p[1]]), pairs
    )
    result: list[list[Any]] = [[None] * lb for _ in range(la)]
    for (i, j), correlations in zip(pairs, values, strict=True):
        result[i][j] = correlations
        if stats.same:
            result[j][i] = correlations
    return result


def _parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``map`` over threads with single-threaded BLAS: many small eigen-problems run several
    times faster side by side than one after another on threaded LAPACK (which collapses when the
    cores are shared)."""
    with threadpool_limits(limits=1):
        return _on_all_cores(fn, items)


def cca_from_statistics(stats: GramStatistics, ridge: float = 0.0) -> np.ndarray:
    """Mean canonical correlation of every layer pair, ``(La, Lb)`` (NaN where a space is empty)."""
    rows = canonical_correlations_from_statistics(stats, ridge)
    return np.array([[c.mean() if c.size else np.nan for c in row] for row in rows])


def canonical_correlations(x: Any, y: Any, ridge: float = 0.0) -> np.ndarray:
    """Canonical correlations of ``x`` ``(n, d1)`` and ``y`` ``(n, d2)``, decreasing.

    ``ridge`` shrinks each covariance towards a scaled identity, ``(1-r) C + r (tr C / d) I``.
    """
    check_ridge(ridge)
    summary = partial(canonical_correlations_from_statistics, ridge=ridge)
    return gram_statistics(x, y, summary=summary)[0][0]


def cca(x: Any, y: Any, ridge: float = 0.0) -> float:
    """Mean canonical correlation of ``x`` and ``y``, the study's CCA similarity."""
    return float(cca_grid(x, y, ridge)[0, 0])


def cca_grid(a: Any, b: Any, ridge: float = 0.0) -> np.ndarray:
    """Mean canonical correlation of every layer of ``a`` with every layer of ``b``, (La, Lb)."""
    check_ridge(ridge)
    return gram_statistics(a, b, summary=partial(cca_from_statistics, ridge=ridge))
