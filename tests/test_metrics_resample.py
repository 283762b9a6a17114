"""Group-bootstrap statistics from per-group sums equal the statistics of the resampled rows."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from wordspace.errors import WordspaceError
from wordspace.metrics import gram_statistics
from wordspace.metrics.grid import grids_from_statistics
from wordspace.metrics.resample import resampled_statistics
from wordspace.pipeline.analyses.common import group_bootstrap, resampled_means

METRICS = ["cka", "cka_debiased", "cca"]


def _data(seed=0, n=240, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((3, n, 7))
    b = 0.6 * a[1, :, :5] + rng.standard_normal((n, 5))
    a[2, 17, 3] = np.nan  # a word left out everywhere
    b[40, 0] = np.nan
    groups = np.array([f"utt{i}" for i in rng.integers(0, 25, n)], dtype=object)
    return a.astype(dtype), np.stack([b, 2 * b + 1]).astype(dtype), groups


def _resampled_rows(groups, weights):
    labels, inverse = np.unique(groups, return_inverse=True)
    return np.concatenate(
        [np.repeat(np.flatnonzero(inverse == g), int(weights[g])) for g in range(len(labels))]
    )


@pytest.mark.parametrize("same", [False, True])
def test_bootstrap_statistics_equal_recomputation_on_the_resampled_rows(same):
    a, b, groups = _data()
    if same:
        b = a
    weights = group_bootstrap(groups, 6, np.random.default_rng(1))
    weights = np.vstack([np.ones(weights.shape[1]), weights])
    combined = resampled_statistics(a, b, groups, weights, debiased=True)
    assert len(combined) == len(weights)
    for stats, row in zip(combined, weights, strict=True):
        rows = _resampled_rows(groups, row)
        sub_a = a[:, rows]
        expected = gram_statistics(sub_a, sub_a if same else b[:, rows], debiased=True)
        assert (stats.n_words, stats.n_excluded) == (expected.n_words, expected.n_excluded)
        for name in ("gram_a", "gram_b", "cross", "q_ab", "q_a", "q_b"):
            np.testing.assert_allclose(
                getattr(stats, name), getattr(expected, name), rtol=1e-9, atol=1e-8
            )
        got = grids_from_statistics(stats, METRICS, ridge=1e-3)
        want = grids_from_statistics(expected, METRICS, ridge=1e-3)
        for metric in METRICS:
            np.testing.assert_allclose(got[metric], want[metric], rtol=0, atol=1e-6)


def test_float32_inputs_match_recomputation_to_1e_6():
    a, b, groups = _data(seed=2, dtype=np.float32)
    weights = group_bootstrap(groups, 3, np.random.default_rng(3))
    for stats, row in zip(resampled_statistics(a, b, groups, weights), weights, strict=True):
        rows = _resampled_rows(groups, row)
        expected = gram_statistics(a[:, rows], b[:, rows])
        got, want = (grids_from_statistics(s, ["cka", "cca"]) for s in (stats, expected))
        for metric in ("cka", "cca"):
            np.testing.assert_allclose(got[metric], want[metric], rtol=0, atol=1e-6)


def test_each_group_once_is_the_full_data():
    a, b, groups = _data(seed=4)
    (stats,) = resampled_statistics(a, b, groups, np.ones((1, len(np.unique(groups)))))
    expected = gram_statistics(a, b)
    np.testing.assert_allclose(stats.cross, expected.cross, rtol=1e-10, atol=1e-9)
    assert stats.n_words == expected.n_words == 238


def test_resampled_means_equal_the_means_of_the_resampled_items():
    rng = np.random.default_rng(5)
    values = rng.random((4, 90))
    groups = rng.integers(0, 12, 90).astype(str)
    weights = group_bootstrap(groups, 5, np.random.default_rng(6))
    means = resampled_means(values, groups, weights)
    for mean, row in zip(means, weights, strict=True):
        np.testing.assert_allclose(mean, values[:, _resampled_rows(groups, row)].mean(axis=1))


def test_group_bootstrap_draws_as_many_groups_as_there_are():
    groups = np.repeat(["s1", "s2", "s3", "s4"], 5)
    weights = group_bootstrap(groups, 7, np.random.default_rng(0))
    assert weights.shape == (7, 4)
    assert (weights.sum(axis=1) == 4).all()


def test_bad_weights_and_groups_are_one_clear_error():
    a, b, groups = _data()
    with pytest.raises(WordspaceError, match="one column per distinct group"):
        resampled_statistics(a, b, groups, np.ones((2, 3)))
    with pytest.raises(WordspaceError, match="one group label per word"):
        resampled_statistics(a, b, groups[:-1], np.ones((1, 25)))


# Last in the file: the module-scoped client stays the default scheduler once it exists.
def test_resamples_stay_in_this_process_under_a_distributed_client(client):
    a, b, groups = _data(seed=6)
    weights = group_bootstrap(groups, 2, np.random.default_rng(6))
    with dask.config.set(scheduler="sync"):
        expected = [s.cross for s in resampled_statistics(a, b, groups, weights)]
    got = [s.cross for s in resampled_statistics(a, b, groups, weights)]
    for cross, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(cross, want)
    assert client.run(lambda dask_worker: len(dask_worker.data)) == {
        address: 0 for address in client.scheduler_info()["workers"]
    }
