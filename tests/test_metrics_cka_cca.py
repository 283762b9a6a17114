"""Linear CKA (biased, debiased) and CCA against straightforward numpy formulas."""

import os
import pickle
import subprocess
import sys
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.delayed import Delayed
from distributed import get_worker

from wordspace.errors import WordspaceError
from wordspace.metrics import (
    canonical_correlations,
    cca,
    cca_grid,
    cka_grid,
    gram_statistics,
    linear_cka,
    similarity_grid,
)
from wordspace.metrics import statistics as statistics_module
from wordspace.metrics.cca import _whitener


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The study's function (thesis section 3.3.2)."""
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    hsic = np.linalg.norm(xc.T @ yc, "fro") ** 2
    return hsic / (np.linalg.norm(xc.T @ xc, "fro") * np.linalg.norm(yc.T @ yc, "fro"))


def unbiased_hsic_gram(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, on n × n Gram matrices (times n(n-3), which cancels in CKA)."""
    n = k.shape[0]
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    ones = np.ones(n)
    return (
        np.trace(k @ l_)
        + (ones @ k @ ones) * (ones @ l_ @ ones) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * ones @ k @ l_ @ ones
    )


def reference_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    k, l_ = xc @ xc.T, yc @ yc.T
    return unbiased_hsic_gram(k, l_) / np.sqrt(
        unbiased_hsic_gram(k, k) * unbiased_hsic_gram(l_, l_)
    )


def reference_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations by QR of each centred space and SVD of Qxᵀ Qy."""
    qx, _ = np.linalg.qr(x - x.mean(axis=0))
    qy, _ = np.linalg.qr(y - y.mean(axis=0))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def related_pair(rng: np.random.Generator, n: int, d1: int, d2: int, offset: float = 3.0):
    x = rng.standard_normal((n, d1)) * rng.uniform(0.5, 2.0, d1) + offset
    mixing = rng.standard_normal((d1, d2))
    y = np.tanh(x @ mixing / np.sqrt(d1)) + 0.5 * rng.standard_normal((n, d2)) - offset
    return x, y


@pytest.fixture
def small_chunks(monkeypatch):
    """Keep the caller's word chunking, however small, so multi-chunk reductions are exercised,
    and product panels that cut across layers."""
    monkeypatch.setattr(statistics_module, "_MIN_CHUNK_WORDS", 1)
    monkeypatch.setattr(statistics_module, "_TARGET_CHUNK_BYTES", 1)
    monkeypatch.setattr(statistics_module, "_MIN_TASK_BYTES", 1)
    monkeypatch.setattr(statistics_module, "_PRODUCT_WORDS", 16)
    monkeypatch.setattr(statistics_module, "_PANEL_COLUMNS", 5)


def test_cka_matches_the_study_function_and_song_estimator():
    rng = np.random.default_rng(0)
    x, y = related_pair(rng, 400, 12, 7)
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), rel=1e-6)
    assert linear_cka(x, y, debiased=True) == pytest.approx(reference_debiased_cka(x, y), rel=1e-6)


def test_debiased_cka_matches_reference_with_large_offsets():
    rng = np.random.default_rng(1)
    x, y = related_pair(rng, 300, 6, 9, offset=1e3)
    assert linear_cka(x, y, debiased=True) == pytest.approx(reference_debiased_cka(x, y), rel=1e-6)


def test_cka_float32_and_float16_inputs_accumulate_accurately():
    rng = np.random.default_rng(2)
    x, y = related_pair(rng, 5000, 16, 8)
    expected = reference_cka(x.astype(np.float32).astype(np.float64), y.astype(np.float32))
    assert linear_cka(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(
        expected, rel=1e-5
    )
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    assert linear_cka(x16, y16) == pytest.approx(
        reference_cka(x16.astype(np.float64), y16.astype(np.float64)), rel=1e-5
    )


def test_float32_products_over_many_words_match_float64_to_1e6():
    rng = np.random.default_rng(3)
    n = 40_000
    x, y = related_pair(rng, n, 24, 16, offset=5.0)
    a = np.stack([x, x + rng.standard_normal(x.shape)]).astype(np.float32)
    b = np.stack([y, np.sqrt(np.abs(y))]).astype(np.float32)
    got = similarity_grid(a, b)
    expected = similarity_grid(a.astype(np.float64), b.astype(np.float64))
    for name in expected.data_vars:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize("workers", [1, 3])
def test_every_scheduler_and_chain_count_gives_the_same_grid(small_chunks, scheduler, workers):
    rng = np.random.default_rng(4)
    a = np.stack([related_pair(rng, 400, 6, 1)[0] for _ in range(2)])
    b = rng.standard_normal((3, 400, 5))
    a[1, 17] = np.nan
    expected = similarity_grid(a, b)
    with dask.config.set(scheduler=scheduler, num_workers=workers):
        got = similarity_grid(da.from_array(a, chunks=(1, 50, 6)), da.from_array(b, (3, 70, 5)))
    assert got.attrs == expected.attrs
    for name in expected.data_vars:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9)


def test_a_chain_keeps_its_scratch_between_tasks_and_travels_with_its_waiting_rows(
    small_chunks,
):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 60, 5)).astype(np.float32)
    b = rng.standard_normal((2, 60, 4)).astype(np.float32)
    stack_a, stack_b = da.from_array(a, chunks=(1, 20, 5)), da.from_array(b, chunks=(1, 20, 4))
    layout = statistics_module._Layout.of(stack_a, stack_b, same=False, debiased=False)
    readers = [statistics_module._layer_blocks_per_chunk(x) for x in (stack_a, stack_b)]
    blocks = list(zip(*readers, strict=True))  # per chunk of 20 words, the layer blocks to read
    shifts = [np.zeros((x.shape[0], x.shape[2]), np.float32) for x in (a, b)]
    add_words = statistics_module._add_words
    chain = add_words(None, blocks[0], slice(0, 10), shifts, layout, last=False)
    assert chain.filled == 10  # fewer words than a product (16): they wait for the next task
    buffers = chain._buffers
    assert add_words(chain, blocks[0], slice(10, 20), shifts, layout, last=False) is chain
    assert chain.filled == 10  # 10 + 10 > 16: the waiting 10 were added first, 10 now wait
    assert chain._buffers is buffers
    scratch = dict(chain._scratch.arrays)
    add_words(chain, blocks[1], slice(0, 5), shifts, layout, last=False)
    assert chain.filled == 15
    assert all(chain._scratch.arrays[key] is array for key, array in scratch.items())
    assert dask.sizeof.sizeof(chain) == chain.total.nbytes + sum(x.nbytes for x in scratch.values())
    moved = pickle.loads(pickle.dumps(chain))
    assert moved._scratch is None and np.array_equal(moved.total, chain.total)
    for resumed in (chain, moved):
        add_words(resumed, blocks[1], slice(5, 20), shifts, layout, last=False)
        assert resumed.filled == 15
        add_words(resumed, blocks[2], slice(0, 20), shifts, layout, last=False)
        assert resumed.filled == 0  # more words than a product: added in two of 10 at once
    assert np.array_equal(moved.total, chain.total)
    stats = statistics_module._finish(chain.total, layout)
    assert stats.n_words == 60
    centred = [x[1].astype(np.float64) - x[1].mean(axis=0, dtype=np.float64) for x in (a, b)]
    np.testing.assert_allclose(stats.gram_a[1], centred[0].T @ centred[0], rtol=1e-5)
    np.testing.assert_allclose(stats.cross[1, :, 1], centred[0].T @ centred[1], rtol=1e-5)


def test_chains_of_the_threaded_scheduler_add_into_one_total(small_chunks, monkeypatch):
    """One copy of the statistics per pass, not one per thread: each chain's totals are as
    large as the statistics (800 MB for two 13 x 768 models)."""
    totals = []
    make_chain = statistics_module._Chain.__init__

    def record_totals(chain, total, *args, **kwargs):
        totals.append(total)
        make_chain(chain, total, *args, **kwargs)

    monkeypatch.setattr(statistics_module._Chain, "__init__", record_totals)
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 300, 6)), rng.standard_normal((3, 300, 5))
    expected = similarity_grid(a, b)
    totals.clear()
    with dask.config.set(scheduler="threads", num_workers=3):
        got = similarity_grid(da.from_array(a, chunks=(1, 40, 6)), da.from_array(b, (3, 40, 5)))
    assert len(totals) == 3 and all(total is totals[0] for total in totals)
    for name in expected.data_vars:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9)


def test_local_schedulers_read_blocks_inside_the_chain_tasks(small_chunks, monkeypatch):
    """Read by tasks of their own, blocks ran in Dask's order, ahead of the chains needing them."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((2, 200, 3)), rng.standard_normal((2, 200, 4))
    seen = []
    add_words = statistics_module._add_words

    def recording(chain, blocks, *args):
        seen.extend(type(block) for input_blocks in blocks for block in input_blocks)
        return add_words(chain, blocks, *args)

    monkeypatch.setattr(statistics_module, "_add_words", recording)
    with dask.config.set(scheduler="threads"):
        similarity_grid(da.from_array(a, chunks=(1, 50, 3)), da.from_array(b, chunks=(1, 50, 4)))
    assert seen and set(seen) == {statistics_module._BlockReader}


def test_rows_whose_sum_overflows_are_kept_and_nan_rows_dropped():
    rows = np.array([[3e38, 3e38], [1, np.nan], [1, 2]], dtype=np.float32)
    with np.errstate(over="ignore"):
        assert list(statistics_module._finite_rows(rows, "A")) == [True, False, True]


def test_canonical_correlations_match_qr_svd():
    rng = np.random.default_rng(3)
    x, y = related_pair(rng, 600, 8, 5)
    expected = reference_correlations(x, y)
    got = canonical_correlations(x, y)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert np.all(np.diff(got) <= 0)
    assert cca(x, y) == pytest.approx(expected.mean(), rel=1e-6)


def test_canonical_correlations_match_sklearn_cca():
    from sklearn.cross_decomposition import CCA

    rng = np.random.default_rng(4)
    x, y = related_pair(rng, 2000, 3, 3)
    model = CCA(n_components=3, max_iter=5000, tol=1e-12).fit(x, y)
    x_scores, y_scores = model.transform(x, y)
    sklearn_corr = [np.corrcoef(x_scores[:, i], y_scores[:, i])[0, 1] for i in range(3)]
    np.testing.assert_allclose(canonical_correlations(x, y), sklearn_corr, rtol=1e-4)


def test_ridge_shrinks_towards_scaled_identity():
    rng = np.random.default_rng(5)
    x, y = related_pair(rng, 500, 6, 4)
    ridge = 0.3
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)

    def inverse_sqrt(c: np.ndarray) -> np.ndarray:
        c = (1 - ridge) * c + ridge * np.trace(c) / len(c) * np.eye(len(c))
        values, vectors = np.linalg.eigh(c)
        return vectors @ np.diag(values**-0.5) @ vectors.T

    whitened = inverse_sqrt(xc.T @ xc) @ xc.T @ yc @ inverse_sqrt(yc.T @ yc)
    expected = np.linalg.svd(whitened, compute_uv=False)
    np.testing.assert_allclose(canonical_correlations(x, y, ridge=ridge), expected, rtol=1e-6)
    assert cca(3.0 * x, y, ridge=ridge) == pytest.approx(cca(x, y, ridge=ridge), rel=1e-9)
    assert cca(x, y, ridge=ridge) < cca(x, y)


@pytest.mark.parametrize("constant", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rank_deficient_spaces_give_no_spurious_correlations(dtype, constant):
    rng = np.random.default_rng(6)
    n = 400
    base = rng.standard_normal((n, 3))
    # A collinear column (its rounding leaves a covariance with a Cholesky factor) and, with
    # `constant`, a constant column: rank 3 in 4 or 5 columns.
    extra = [np.full(n, 7.0)] if constant else []
    x = np.column_stack([base, *extra, base[:, 0] - 2 * base[:, 1]]).astype(dtype)
    y = rng.standard_normal((n, 4)).astype(dtype)
    got = canonical_correlations(x, y)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, reference_correlations(base, y), rtol=1e-4, atol=1e-6)
    assert got.max() < 0.5


def test_only_clearly_full_rank_covariances_take_the_cholesky_whitening():
    rng = np.random.default_rng(12)
    x = related_pair(rng, 500, 8, 6)[0]
    cov = np.cov(x, rowvar=False)
    precision = float(np.finfo(np.float32).eps)
    assert _whitener(cov, 0.0, precision).triangular
    # Smallest eigenvalue just above the rank cut (8 · eps · λ_max): kept, through eigh.
    values, vectors = np.linalg.eigh(cov)
    values[0] = 1.5 * 8 * precision * values[-1]
    near_cut = _whitener((vectors * values) @ vectors.T, 0.0, precision)
    assert not near_cut.triangular and near_cut.matrix.shape == (8, 8)


def test_fewer_words_than_dimensions_keeps_only_the_sample_span():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, 30))
    y = rng.standard_normal((10, 4))
    got = canonical_correlations(x, y)
    # Centred x spans 9 directions, which contain y's 4: sample CCA is exactly 1 there, and no
    # extra value comes from x's 21 null directions.
    assert got.shape == (4,)
    np.testing.assert_allclose(got, 1.0, atol=1e-6)


def test_grids_match_pairwise_references_and_use_layer_labels():
    rng = np.random.default_rng(8)
    n = 300
    a = np.stack([related_pair(rng, n, 10, 1)[0] for _ in range(3)])
    b = np.stack([np.tanh(a[i] @ rng.standard_normal((10, 6))) for i in (0, 2)])
    expected_cka = [[reference_cka(a[i], b[j]) for j in range(2)] for i in range(3)]
    expected_deb = [[reference_debiased_cka(a[i], b[j]) for j in range(2)] for i in range(3)]
    expected_cca = [[reference_correlations(a[i], b[j]).mean() for j in range(2)] for i in range(3)]
    np.testing.assert_allclose(cka_grid(a, b), expected_cka, rtol=1e-6)
    np.testing.assert_allclose(cka_grid(a, b, debiased=True), expected_deb, rtol=1e-6)
    np.testing.assert_allclose(cca_grid(a, b), expected_cca, rtol=1e-6)

    da_a = xr.DataArray(a, dims=("layer", "word", "dim"), coords={"layer": [1, 5, 9]})
    da_b = xr.DataArray(b, dims=("layer", "word", "dim"))
    ds = similarity_grid(da_a, da_b)
    assert ds.sizes == {"layer_a": 3, "layer_b": 2}
    assert list(ds.layer_a.values) == [1, 5, 9]
    assert ds.attrs["n_words"] == n and ds.attrs["n_excluded"] == 0
    np.testing.assert_allclose(ds["cka"], expected_cka, rtol=1e-6)
    np.testing.assert_allclose(ds["cka_debiased"], expected_deb, rtol=1e-6)
    np.testing.assert_allclose(ds["cca"], expected_cca, rtol=1e-6)
    assert list(similarity_grid(a, b, metrics=["cca"]).data_vars) == ["cca"]


def test_same_input_uses_the_symmetric_path_and_agrees_with_a_copy(small_chunks):
    rng = np.random.default_rng(9)
    a = np.stack([related_pair(rng, 250, 7, 1)[0] for _ in range(3)])
    stats = gram_statistics(a, a)
    assert stats.same
    ds_same = similarity_grid(a, a)
    ds_copy = similarity_grid(a, a.copy())
    for name in ("cka", "cka_debiased", "cca"):
        np.testing.assert_allclose(ds_same[name], ds_copy[name], rtol=1e-9)
        np.testing.assert_allclose(np.diag(ds_same[name]), 1.0, rtol=1e-9)
        np.testing.assert_allclose(ds_same[name], ds_same[name].T, rtol=1e-12)


@pytest.mark.parametrize("word_chunks", [1, 7, 64, 300])
def test_dask_chunking_does_not_change_results(small_chunks, word_chunks):
    rng = np.random.default_rng(10)
    n = 300
    a = np.stack([related_pair(rng, n, 5, 1)[0] for _ in range(2)])
    b = np.stack([related_pair(rng, n, 4, 1)[0] for _ in range(3)])
    expected = similarity_grid(a, b)
    lazy_a = da.from_array(a, chunks=(1, word_chunks, 5))
    lazy_b = da.from_array(b, chunks=(2, word_chunks + 3, 2))
    got = similarity_grid(lazy_a, lazy_b)
    for name in expected.data_vars:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9)


def test_zarr_backed_dataarrays(tmp_path, small_chunks):
    rng = np.random.default_rng(11)
    n = 500
    a = np.stack([related_pair(rng, n, 6, 1)[0] for _ in range(4)]).astype(np.float32)
    b = np.stack([related_pair(rng, n, 3, 1)[0] for _ in range(2)]).astype(np.float16)
    for name, values in (("a", a), ("b", b)):
        ds = xr.Dataset({"embedding": (("layer", "word", "dim"), values)})
        ds = ds.assign_coords(layer=np.arange(len(values)) + (10 if name == "b" else 0))
        ds.chunk({"layer": 1, "word": 128}).to_zarr(
            tmp_path / name, zarr_format=3, consolidated=False
        )
    lazy_a = xr.open_zarr(tmp_path / "a", consolidated=False)["embedding"]
    lazy_b = xr.open_zarr(tmp_path / "b", consolidated=False)["embedding"]
    assert isinstance(lazy_a.data, da.Array)
    ds = similarity_grid(lazy_a, lazy_b)
    assert list(ds.layer_b.values) == [10, 11]
    expected = [
        [reference_cka(a[i].astype(np.float64), b[j].astype(np.float64)) for j in range(2)]
        for i in range(4)
    ]
    np.testing.assert_allclose(ds["cka"], expected, rtol=1e-5)


def test_nan_rows_in_either_input_are_left_out_and_counted(small_chunks):
    rng = np.random.default_rng(12)
    n = 200
    a = np.stack([related_pair(rng, n, 5, 1)[0] for _ in range(2)])
    b = rng.standard_normal((1, n, 4))
    a[:, [3, 50, 51], :] = np.nan
    b[0, 120, 2] = np.nan  # one NaN component is enough to drop the word
    keep = np.setdiff1d(np.arange(n), [3, 50, 51, 120])
    ds = similarity_grid(da.from_array(a, chunks=(2, 40, 5)), b)
    assert ds.attrs["n_words"] == len(keep) and ds.attrs["n_excluded"] == 4
    expected = similarity_grid(a[:, keep], b[:, keep])
    for name in expected.data_vars:
        np.testing.assert_allclose(ds[name], expected[name], rtol=1e-9)


def test_debiased_cka_tends_to_zero_for_independent_data():
    rng = np.random.default_rng(13)
    means = []
    for n in (100, 1000, 10000):
        values = [
            linear_cka(rng.standard_normal((n, 20)), rng.standard_normal((n, 20)), debiased=True)
            for _ in range(5)
        ]
        means.append(np.mean(np.abs(values)))
    assert means[0] > means[1] > means[2]
    assert means[2] < 2e-3
    # The biased estimator stays well above zero at small n.
    assert linear_cka(rng.standard_normal((100, 20)), rng.standard_normal((100, 20))) > 0.1


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.ones((10, 3)), np.ones((11, 3)), "A has 10 words and B has 11"),
        (np.full((2, 3), 1.0), np.ones((2, 3)), "only 2 words are valid"),
        (np.ones((4, 2, 3, 1)), np.ones((4, 3)), "has 4 dimensions"),
        (np.array([["a", "b"]] * 5), np.ones((5, 3)), "floating-point"),
        (np.ones((10, 0)), np.ones((10, 3)), r"A has no dims \(shape \(10, 0\)\)"),
        (np.ones((4, 5)), np.ones((0, 5, 3)), r"B has no layers \(shape \(0, 5, 3\)\)"),
        (np.ones((0, 4)), np.ones((0, 3)), "A has no words"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, y, message):
    with pytest.raises(WordspaceError, match=message):
        linear_cka(x, y)


def test_infinite_values_and_too_few_valid_words_raise():
    rng = np.random.default_rng(14)
    x, y = rng.standard_normal((50, 3)), rng.standard_normal((50, 2))
    x_inf = x.copy()
    x_inf[7, 1] = np.inf
    with pytest.raises(WordspaceError, match="A contains infinite values"):
        cka_grid(x_inf, y)
    y_nan = y.copy()
    y_nan[2:] = np.nan
    with pytest.raises(WordspaceError, match="only 2 words are valid"):
        cca(x, y_nan)
    with pytest.raises(WordspaceError, match="unknown or empty"):
        similarity_grid(x, y, metrics=["cka", "svcca"])
    with pytest.raises(WordspaceError, match="ridge=1.5"):
        cca(x, y, ridge=1.5)


# Last in the file: the module-scoped client stays the default scheduler once it exists.
def test_distributed_client_gives_the_same_grid(client, small_chunks):
    rng = np.random.default_rng(5)
    a = np.stack([related_pair(rng, 300, 4, 1)[0] for _ in range(3)]).astype(np.float32)
    b = rng.standard_normal((2, 300, 3)).astype(np.float32)
    with dask.config.set(scheduler="sync"):
        expected = similarity_grid(a, b)
    got = similarity_grid(da.from_array(a, chunks=(1, 40, 4)), da.from_array(b, chunks=(2, 50, 3)))
    for name in expected.data_vars:  # float32 products of other groups of words: ~1e-9 apart
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-8)


def test_in_memory_inputs_reach_a_cluster_outside_the_task_graph(client):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((3, 12_000, 100)).astype(np.float32)  # 14 MB
    b = rng.standard_normal((12_000, 20)).astype(np.float32)
    with dask.config.set(scheduler="sync"):
        expected = similarity_grid(a, b)
    with warnings.catch_warnings():  # distributed warns when a graph passes 10 MB
        warnings.filterwarnings("error", message="Sending large graph")
        got = similarity_grid(a, b)
    for name in expected.data_vars:  # near-zero values (independent data): atol
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-9)


def test_a_cluster_reads_store_blocks_in_the_chain_tasks_and_fetches_scattered_ones(
    client, tmp_path
):
    values = np.random.default_rng(8).standard_normal((2, 200, 3)).astype(np.float32)
    da.to_zarr(da.from_array(values, chunks=(1, 50, -1)), str(tmp_path / "a.zarr"))
    stored = statistics_module._layer_blocks_per_chunk(da.from_zarr(str(tmp_path / "a.zarr")))
    scattered = statistics_module._layer_blocks_per_chunk(
        statistics_module.as_layer_stack(values, "A")
    )
    assert {type(block) for chunk in stored for block in chunk} == {statistics_module._BlockReader}
    assert {type(block) for chunk in scattered for block in chunk} == {Delayed}
    np.testing.assert_array_equal(stored[1][0].read(), values[:1, 50:100])


def worker_address_and_words(stats: statistics_module.GramStatistics) -> tuple[str, int]:
    return get_worker().address, stats.n_words


def test_a_cluster_summarises_the_statistics_on_a_worker(client):
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((2, 300, 4)), rng.standard_normal((300, 3))
    b[7] = np.nan
    address, words = gram_statistics(a, b, summary=worker_address_and_words)
    assert address in client.scheduler_info()["workers"] and words == 299


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_process_confined_to_one_cpu_runs_one_chain():
    """Thread counts follow the CPUs this process may use (taskset, a Slurm allocation, a
    container's quota), not the machine's count."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "import dask.threaded; from wordspace.metrics import statistics; "
        "print(statistics._concurrent_tasks(dask.threaded.get, on_gpu=False))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
