"""ASIF retrieval: exact agreement with a dense implementation, streaming invariances, bad input."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.metrics import (
    asif_grid,
    asif_paired_protocol,
    asif_retrieve,
    asif_study_protocol,
    asif_sweep,
    topk,
)
from wordspace.metrics._blocks import in_memory_blocks
from wordspace.metrics.topk import (
    anchor_major,
    merge_top,
    sparse_matrix_scores_top,
    sparse_scores_top,
)


def _dense(ax, ay, qx, cy, k, p, top):
    """The semantics written out on whole matrices, ties to the lower index by lexsort."""

    def first(scores, n):
        cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        return np.lexsort((cols, -scores), axis=1)[:, :n]

    def relative(rows, anchors):
        unit_r = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        sims = unit_r @ (anchors / np.linalg.norm(anchors, axis=1, keepdims=True)).T
        keep = first(sims, k)
        out = np.zeros_like(sims)
        np.put_along_axis(out, keep, np.maximum(np.take_along_axis(sims, keep, 1), 0) ** p, 1)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return first(relative(qx, ax) @ relative(cy, ay).T, top)


@pytest.fixture(scope="module")
def spaces():
    rng = np.random.default_rng(0)
    ax = rng.standard_normal((240, 12))
    rotation = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    ay = ax @ rotation + 0.4 * rng.standard_normal((240, 12))
    return ax, ay, rng.standard_normal((40, 12)), rng.standard_normal((90, 12))


@pytest.mark.parametrize("chunk", [1, 13, 64, 4096])
def test_matches_dense_semantics_for_any_chunking(spaces, chunk):
    got = asif_retrieve(*spaces, k=25, p=3, top=5, chunk=chunk)
    np.testing.assert_array_equal(got, _dense(*spaces, 25, 3, 5))


def test_sweep_equals_separate_retrievals_and_dense(spaces):
    ds = asif_sweep(*spaces, ks=(5, 30), ps=(1, 2.5, 4), only=[(5, 1), (30, 2.5), (30, 4)])
    assert ds["retrieved"].dims == ("k", "p", "query", "rank")
    for k, p in [(5, 1), (30, 2.5), (30, 4)]:
        cell = ds["retrieved"].sel(k=k, p=p).values
        np.testing.assert_array_equal(cell, asif_retrieve(*spaces, k=k, p=p, chunk=17))
        np.testing.assert_array_equal(cell, _dense(*spaces, k, p, 5))
    assert (ds["retrieved"].sel(k=5, p=4).values == -1).all()


def test_numpy_dask_and_dataarray_agree(spaces):
    ax, ay, qx, cy = spaces
    expected = asif_retrieve(ax, ay, qx, cy, k=20, p=4)
    lazy = [da.from_array(a, chunks=(c, 5)) for a, c in zip(spaces, (31, 100, 7, 45), strict=True)]
    np.testing.assert_array_equal(asif_retrieve(*lazy, k=20, p=4, chunk=50), expected)
    wrapped = [xr.DataArray(a, dims=("word", "dim")) for a in lazy]
    np.testing.assert_array_equal(asif_retrieve(*wrapped, k=20, p=4), expected)


def test_planted_rotation_is_retrieved_and_independent_spaces_are_at_chance():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1200, 32))
    rotation = np.linalg.qr(rng.standard_normal((32, 32)))[0]
    y = x @ rotation + 0.05 * rng.standard_normal(x.shape)
    anchors, queries = slice(0, 1000), slice(1000, 1200)
    hits = asif_retrieve(x[anchors], y[anchors], x[queries], y[queries], k=100, p=4)[:, 0]
    assert np.mean(hits == np.arange(200)) > 0.98
    z = rng.standard_normal(y.shape)
    hits = asif_retrieve(x[anchors], z[anchors], x[queries], z[queries], k=100, p=4)[:, 0]
    assert np.mean(hits == np.arange(200)) < 0.05


def test_ties_go_to_the_lower_index_in_running_and_final_top():
    rng = np.random.default_rng(2)
    values = rng.integers(0, 4, (30, 50)).astype(np.float32)
    state = None
    for start in range(0, 50, 7):
        state = merge_top(state, values[:, start : start + 7], 9, offset=start)
    order = np.lexsort((np.broadcast_to(np.arange(50), values.shape), -values), axis=1)[:, :9]
    np.testing.assert_array_equal(np.sort(state[1], axis=1), np.sort(order, axis=1))
    ax = rng.standard_normal((50, 6))
    cy = np.repeat(rng.standard_normal((10, 6)), 2, axis=0)  # each candidate twice
    got = asif_retrieve(ax, ax, rng.standard_normal((8, 6)), cy, k=10, p=2, top=2)
    assert (got[:, 0] % 2 == 0).all() and (got[:, 1] == got[:, 0] + 1).all()


@pytest.mark.parametrize("seed", range(4))
def test_running_top_and_its_reduction_match_a_full_sort(seed):
    rng = np.random.default_rng(seed)
    n, k, small = 300, int(rng.integers(20, 120)), int(rng.integers(1, 20))
    values = rng.integers(0, int(rng.integers(2, 40)), (6, n)).astype(np.float32)
    cuts = [0, *np.sort(rng.choice(np.arange(1, n), 5, replace=False)), n]
    state = None
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        state = merge_top(state, values[:, start:stop], k, offset=start)
    cols = np.broadcast_to(np.arange(n), values.shape)
    best = np.lexsort((cols, -values), axis=1)
    np.testing.assert_array_equal(state[1], np.sort(best[:, :k], axis=1))
    reduced = merge_top(None, state[0], small, items=state[1])
    np.testing.assert_array_equal(reduced[1], np.sort(best[:, :small], axis=1))
    np.testing.assert_array_equal(reduced[0], np.take_along_axis(values, reduced[1], axis=1))


@pytest.mark.parametrize("slab_rows", [2, 1000])
def test_sparse_matrix_path_matches_the_kernel(monkeypatch, slab_rows):
    monkeypatch.setattr(topk, "DENSE_QUERY_BYTES", slab_rows * 60 * 8)
    rng = np.random.default_rng(3)
    cols = [np.sort(rng.permuted(np.tile(np.arange(60), (n, 1)), axis=1)[:, :8]) for n in (9, 30)]
    vals = [rng.random(c.shape) for c in cols]
    kernel = sparse_scores_top(cols[0], vals[0], anchor_major(cols[1], vals[1], 60), 4)
    values, items = sparse_matrix_scores_top(
        cols[0], vals[0], cols[1], vals[1], 60, 4, scipy.sparse
    )
    order = np.argsort(-values, axis=1, kind="stable")
    np.testing.assert_array_equal(np.take_along_axis(items, order, 1), kernel[1])


def test_nan_rows_are_left_out_and_counted(spaces):
    ax, ay, qx, cy = (a.copy() for a in spaces)
    ax[3, 0] = np.nan
    qx[5, 1] = np.nan
    cy[7, 2] = np.nan
    ds = asif_sweep(ax, ay, qx, cy, ks=(20,), ps=(3,))
    assert (ds.attrs["n_nan_anchors"], ds.attrs["n_nan_queries"]) == (1, 1)
    assert ds.attrs["n_nan_candidates"] == 1
    got = ds["retrieved"].values[0, 0]
    assert (got[5] == -1).all() and not (got == 7).any()
    keep_a, keep_c = np.arange(240) != 3, np.arange(90) != 7
    expected = np.flatnonzero(keep_c)[
        _dense(ax[keep_a], ay[keep_a], np.delete(qx, 5, 0), cy[keep_c], 20, 3, 5)
    ]
    np.testing.assert_array_equal(np.delete(got, 5, 0), expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k": 241}, "k: 241 exceeds"),
        ({"p": 0.5}, "p: must be at least 1"),
        ({"queries_x": np.zeros((0, 12))}, "query set is empty"),
        ({"queries_x": np.zeros((4, 11))}, "queries_x: dimension 11"),
        ({"anchors_y": np.zeros((239, 12))}, "anchors_y: \\[239\\] rows"),
        ({"queries_x": np.full((4, 12), -np.inf)}, "queries_x contains infinite values"),
        ({"anchors_y": np.full((240, 12), np.inf)}, "anchors_x or anchors_y contains infinite"),
    ],
)
def test_bad_input_is_one_clear_error(spaces, change, message):
    ax, ay, qx, cy = spaces
    args = {"anchors_x": ax, "anchors_y": ay, "queries_x": qx, "candidates_y": cy} | change
    k, p = args.pop("k", 10), args.pop("p", 2)
    with pytest.raises(WordspaceError, match=message):
        asif_retrieve(**args, k=k, p=p)


def _layered(seed=4, n=500, d=10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 50, n)
    x = rng.standard_normal((50, d))[labels] + 0.3 * rng.standard_normal((n, d))
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    a = np.stack([x, x + 0.1 * rng.standard_normal(x.shape)])
    b = np.stack([x @ rotation, rng.standard_normal(x.shape), x @ rotation + 0.2])
    return labels, a, b


def test_grid_equals_pairwise_retrievals():
    _, a, b = _layered()
    anchors, queries = np.arange(0, 400), np.arange(400, 500)
    lazy_b = xr.DataArray(da.from_array(b, chunks=(1, 111, 10)), dims=("layer", "word", "dim"))
    ds = asif_grid(a, lazy_b, anchors=anchors, queries=queries, candidates=anchors,
                   ks=(10, 30), ps=(2,), chunk=64)  # fmt: skip
    assert ds["retrieved"].shape == (2, 3, 2, 1, 100, 5)
    for i in range(2):
        for j in range(3):
            direct = asif_retrieve(a[i, :400], b[j, :400], a[i, 400:], b[j, :400], k=30, p=2)
            np.testing.assert_array_equal(ds["retrieved"].values[i, j, 1, 0], direct)


def test_study_and_paired_protocols():
    labels, a, b = _layered()
    words = np.array([f"w{i}" for i in labels])
    study = asif_study_protocol(a, b, words, ks=(20, 40), ps=(1, 4), only=None, seed=3)
    assert study["top1"].dims == ("layer_a", "layer_b", "k", "p")
    assert study["top1"].sel(layer_b=0).min() > 0.9  # rotated text layer
    assert study.attrs["n_queries"] == 75 and "n_unanswerable" in study.attrs
    assert study["retrieved_words"].shape == (2, 3, 75, 5)
    best = study["retrieved_words"].values[0, 0, :, 0]
    assert np.mean(best == study["query_text"].values) == study["top1"].sel(
        layer_a=0, layer_b=0, k=study["best_k"][0, 0], p=study["best_p"][0, 0]
    )
    paired = asif_paired_protocol(a, b, labels, ks=(20,), ps=(4,), only=None, seed=3)
    assert paired["exact_top1"].sel(layer_b=0).min() > 0.5
    assert paired["exact_top1"].sel(layer_b=1).max() < 0.2  # independent text layer
    assert (paired["top1"] >= paired["exact_top1"]).all()


def test_grid_streams_many_candidate_blocks_with_identical_results():
    """More candidate blocks than the lookahead, several query layers, a NaN word: every pair
    of the grid equals its own retrieval and the dense semantics."""
    _, a, b = _layered(seed=5, n=300)
    a[1, 7, 0] = np.nan  # word 7: left out as an anchor for every pair, still a candidate
    anchors, queries = np.arange(0, 250), np.arange(250, 300)
    ds = asif_grid(a, b, anchors=anchors, queries=queries, candidates=anchors,
                   ks=(12,), ps=(3,), chunk=16)  # fmt: skip
    keep = anchors != 7
    for i in range(2):
        for j in range(3):
            got = ds["retrieved"].values[i, j, 0, 0]
            ax, ay = a[i, anchors][keep], b[j, anchors][keep]
            expected = _dense(ax, ay, a[i, queries], b[j, anchors], 12, 3, 5)
            np.testing.assert_array_equal(got, expected)


def test_numpy_inputs_are_split_into_views_not_copied():
    x = np.arange(40.0).reshape(10, 4)
    blocks = in_memory_blocks(x, 3, axis=0).to_delayed().ravel()
    assert [len(block.compute()) for block in blocks] == [3, 3, 3, 1]
    assert all(np.shares_memory(block.compute(), x) for block in blocks)
    stacked = np.arange(60.0).reshape(2, 10, 3)
    by_word = in_memory_blocks(stacked, 4, axis=1)
    assert by_word.chunks == ((2,), (4, 4, 2), (3,))
    np.testing.assert_array_equal(by_word.compute(), stacked)


# Last in the file: the module-scoped client stays the default scheduler once it exists.
def test_in_memory_inputs_reach_a_cluster_outside_the_task_graph(client):
    rng = np.random.default_rng(7)
    anchors_x, anchors_y = rng.standard_normal((2, 6000, 256)).astype(np.float32)  # 12 MB
    queries_x, candidates_y = anchors_x[:50] + 0.1, anchors_y
    retrieve = dict(k=20, p=4, top=3)
    with dask.config.set(scheduler="sync"):
        expected = asif_retrieve(anchors_x, anchors_y, queries_x, candidates_y, **retrieve)
    with warnings.catch_warnings():  # distributed warns when a graph passes 10 MB
        warnings.filterwarnings("error", message="Sending large graph")
        got = asif_retrieve(anchors_x, anchors_y, queries_x, candidates_y, **retrieve)
    np.testing.assert_array_equal(got, expected)
