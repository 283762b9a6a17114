"""Invariances and bounds of linear CKA and CCA (hypothesis property tests)."""

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import special_ortho_group

from wordspace.metrics import canonical_correlations, cca, linear_cka, similarity_grid
from wordspace.metrics import statistics as statistics_module


@st.composite
def spaces(draw, min_words: int = 30):
    """A pair of related, full-rank spaces (n, d1), (n, d2) with random scales and offsets."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(min_words, 120))
    d1, d2 = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1)) * rng.uniform(0.2, 5.0, d1) + rng.uniform(-50, 50, d1)
    noise = draw(st.floats(0.05, 3.0))
    y = x @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return x, y, rng


relative = {"rel": 1e-6, "abs": 1e-9}


@settings(max_examples=30, deadline=None)
@given(spaces())
def test_cka_invariances(pair):
    x, y, rng = pair
    rotation = special_ortho_group.rvs(x.shape[1], random_state=rng) if x.shape[1] > 1 else 1.0
    transformed = 3.7 * (x @ np.atleast_2d(rotation)) + rng.uniform(-100, 100, x.shape[1])
    for debiased in (False, True):
        value = linear_cka(x, y, debiased=debiased)
        assert linear_cka(transformed, y, debiased=debiased) == pytest.approx(value, **relative)
        assert linear_cka(y, x, debiased=debiased) == pytest.approx(value, **relative)
        assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, rel=1e-9)
    assert -1e-12 <= linear_cka(x, y) <= 1 + 1e-12


@settings(max_examples=30, deadline=None)
@given(spaces())
def test_cca_invariances_and_bounds(pair):
    x, y, rng = pair
    correlations = canonical_correlations(x, y)
    assert len(correlations) == min(x.shape[1], y.shape[1])
    assert np.all((correlations >= 0) & (correlations <= 1))
    assert np.all(np.diff(correlations) <= 1e-12)
    # CCA is invariant to any invertible linear map, and to translation.
    mixing = rng.standard_normal((x.shape[1], x.shape[1])) + 3 * np.eye(x.shape[1])
    assert cca(x @ mixing + 5.0, y) == pytest.approx(cca(x, y), rel=1e-5)
    assert cca(y, x) == pytest.approx(cca(x, y), rel=1e-9)
    for ridge in (0.0, 0.4):
        assert cca(0.01 * x, y, ridge=ridge) == pytest.approx(cca(x, y, ridge=ridge), rel=1e-8)


@settings(max_examples=20, deadline=None)
@given(spaces(), st.integers(1, 40), st.integers(1, 40))
def test_dask_agrees_with_numpy_for_any_chunking(pair, chunk_a, chunk_b):
    x, y, _ = pair
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(statistics_module, "_MIN_CHUNK_WORDS", 1)
        patch.setattr(statistics_module, "_TARGET_CHUNK_BYTES", 1)
        patch.setattr(statistics_module, "_MIN_TASK_BYTES", 1)
        lazy = similarity_grid(da.from_array(x, chunks=(chunk_a, 1)), da.from_array(y, chunk_b))
    eager = similarity_grid(x, y)
    for name in eager.data_vars:
        np.testing.assert_allclose(lazy[name], eager[name], rtol=1e-8, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(spaces(min_words=40), st.sets(st.integers(0, 39), max_size=20))
def test_nan_rows_are_excluded(pair, missing):
    x, y, _ = pair
    x_nan = x.copy()
    x_nan[sorted(missing)] = np.nan
    keep = np.setdiff1d(np.arange(len(x)), sorted(missing))
    got = similarity_grid(x_nan, y)
    assert got.attrs["n_words"] == len(keep)
    expected = similarity_grid(x[keep], y[keep])
    for name in expected.data_vars:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-8, atol=1e-10)
