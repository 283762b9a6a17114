"""The CCA finish's GIL-free BLAS and LAPACK calls against numpy."""

import numpy as np
import pytest

from wordspace.metrics import _lapack


def fortran(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    return np.asfortranarray(rng.standard_normal((rows, columns)))


def positive_definite(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((3 * n, n))
    return np.asfortranarray(x.T @ x)


def test_cholesky_and_triangular_inverse_match_numpy():
    rng = np.random.default_rng(0)
    cov = positive_definite(rng, 40)
    factor = cov.copy(order="F")
    assert _lapack.cholesky(factor)
    np.testing.assert_allclose(np.tril(factor), np.linalg.cholesky(cov), rtol=1e-10, atol=1e-12)
    _lapack.invert_lower(factor)
    expected = np.linalg.inv(np.linalg.cholesky(cov))
    np.testing.assert_allclose(np.tril(factor), expected, rtol=1e-9, atol=1e-12)


def test_cholesky_reports_a_matrix_that_is_not_positive_definite():
    rng = np.random.default_rng(1)
    cov = positive_definite(rng, 20)
    cov[5, 5] = -1.0
    assert not _lapack.cholesky(cov)


@pytest.mark.parametrize("right", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
def test_triangular_products_match_numpy(right: bool, transpose: bool):
    rng = np.random.default_rng(2)
    lower = fortran(rng, 30, 30)  # the upper triangle must be ignored
    triangle = np.tril(lower).T if transpose else np.tril(lower)
    x = fortran(rng, 17, 30) if right else fortran(rng, 30, 17)
    expected = x @ triangle if right else triangle @ x
    got = _lapack.multiply_lower(lower, x, right=right, transpose=transpose)
    assert got is x
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12), (20, 20)])
def test_smaller_gram_and_eigenvalues_match_numpy(shape: tuple[int, int]):
    rng = np.random.default_rng(3)
    x = fortran(rng, *shape)
    expected = x @ x.T if shape[0] <= shape[1] else x.T @ x
    gram = _lapack.smaller_gram(x)
    np.testing.assert_allclose(np.tril(gram), np.tril(expected), rtol=1e-12, atol=1e-12)
    values = _lapack.eigenvalues(gram)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(expected), rtol=1e-10, atol=1e-10)


def test_c_ordered_matrices_are_refused():
    rng = np.random.default_rng(4)
    with pytest.raises(TypeError, match="Fortran-ordered"):
        _lapack.cholesky(np.ascontiguousarray(positive_definite(rng, 5)))
