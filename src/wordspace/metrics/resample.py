"""Statistics of many weighted resamples of word groups (a group bootstrap) from one pass.

A bootstrap over speakers or utterances redraws whole groups of words with replacement. Every
statistic of `statistics.GramStatistics` is a sum over words, so a resample's statistics are its
groups' statistics weighted by how many times each group was drawn: the per-group sums are
computed once, and each block of them is combined for every resample by one matrix product,
instead of one pass over the words per resample. With duplicated groups the statistics are
exactly those of the duplicated rows (`gram_statistics` of the resampled words).
"""

from typing import Any

import dask
import numpy as np

from wordspace.errors import WordspaceError
from wordspace.metrics.statistics import (
    GramStatistics,
    _finish,
    _finite_rows,
    _Layout,
    _row_norms,
    as_layer_stack,
)

# Memory for the resamples' flat totals, and for one block of per-group products.
_RESAMPLE_BYTES = 2**30
_GROUP_BLOCK_BYTES = 2**27


def resampled_statistics(
    a: Any, b: Any, groups: Any, weights: Any, debiased: bool = False
) -> list[GramStatistics]:
    """The statistics of each weighted resample of word groups.

    ``a``, ``b``: in-memory ``(layer, word, dim)`` or ``(word, dim)`` arrays of the same words
    (pass the same object twice for one model with itself); ``groups``: one label per word;
    ``weights``: ``(resamples, groups)`` multiplicities, columns in the order of
    ``np.unique(groups)``. Resample r holds each word of group g ``weights[r, g]`` times, and its
    statistics equal ``gram_statistics`` of those repeated rows. Words with NaN in either input
    are left out (counted, times their weight, in ``n_excluded``).
    """
    same = a is b
    stack_a = _in_memory_stack(a, "A")
    stack_b = stack_a if same else _in_memory_stack(b, "B")
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    weights = np.asarray(weights, dtype=np.float64)
    if not len(inverse) == stack_a.shape[1] == stack_b.shape[1]:
        raise WordspaceError(
            f"A, B and groups have {stack_a.shape[1]}, {stack_b.shape[1]} and {len(inverse)} "
            "words; pass one group label per word of both"
        )
    if weights.ndim != 2 or weights.shape[1] != len(labels) or (weights < 0).any():
        raise WordspaceError(
            f"weights of shape {weights.shape}: pass non-negative (resamples, {len(labels)}) "
            "multiplicities, one column per distinct group"
        )
    layout = _Layout.of(stack_a, stack_b, same, debiased)
    compute_dtype = layout.compute_dtype
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(labels)))
    x = _centred_rows(stack_a[:, order], compute_dtype)
    valid = _finite_rows(x, "A")
    y = None
    if not same:
        y = _centred_rows(stack_b[:, order], compute_dtype)
        valid &= _finite_rows(y, "B")
        y[~valid] = 0
    # A left-out word becomes a zero row: it adds nothing to any sum or product.
    x[~valid] = 0
    per_batch = max(1, _RESAMPLE_BYTES // (8 * layout.size))
    results = []
    for first in range(0, len(weights), per_batch):
        batch = weights[first : first + per_batch]
        results += [_finish(row, layout) for row in _totals(x, y, valid, starts, batch, layout)]
    return results


def _in_memory_stack(x: Any, name: str) -> np.ndarray:
    # Computed here, not on a cluster: the arrays are in memory and shipping them costs more
    # (set before `as_layer_stack`, which would otherwise scatter them to the cluster's workers).
    with dask.config.set(scheduler="sync"):
        return np.asarray(as_layer_stack(x, name).compute())


def _centred_rows(stack: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``(layer, word, dim)`` -> ``(word, layer * dim)`` minus the column means of the finite
    rows, so that the sums are of nearly centred data (`_finish` centres them exactly)."""
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isinf(stack), np.nan, stack), axis=1, dtype=np.float64)
    rows = np.subtract(stack.transpose(1, 0, 2), np.nan_to_num(mean)[None], dtype=dtype)
    return rows.reshape(rows.shape[0], -1)


def _product_terms(
    x: np.ndarray, y: np.ndarray | None, layout: _Layout
) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """Every matrix statistic as ``(field, offset in it, P, Q)``: the field's entries from the
    offset on are ``PᵀQ`` summed over the words."""
    (la, da_), (lb, db) = layout.shape_a, layout.shape_b
    terms = []
    if not layout.same:
        terms += [
            ("gram_a", i * da_ * da_, *[x[:, i * da_ : (i + 1) * da_]] * 2) for i in range(la)
        ]
        terms += [("gram_b", j * db * db, *[y[:, j * db : (j + 1) * db]] * 2) for j in range(lb)]
    if layout.debiased:
        norms = _row_norms(x, la)
        if not layout.same:
            norms = np.concatenate([norms, _row_norms(y, lb)], axis=1)
            y = np.concatenate([y, norms], axis=1)
        x = np.concatenate([x, norms], axis=1)
        norms64 = norms.astype(np.float64)
        terms.append(("norms_norms", 0, norms64, norms64))
    terms.append(("products", 0, x, x if layout.same else y))
    return terms


def _totals(
    x: np.ndarray,
    y: np.ndarray | None,
    valid: np.ndarray,
    starts: np.ndarray,
    weights: np.ndarray,
    layout: _Layout,
) -> np.ndarray:
    """``(resamples, size)``: each resample's flat statistics, the weighted groups' sums."""
    offsets = layout.offsets()
    totals = np.empty((len(weights), layout.size))
    ends = np.append(starts[1:], len(valid))

    def put(name: str, per_group: np.ndarray, at: int = 0) -> None:
        start = offsets[name][0] + at
        per_group = per_group.reshape(len(starts), -1)
        totals[:, start : start + per_group.shape[1]] = weights @ per_group

    put("n", np.add.reduceat(valid.astype(np.float64), starts))
    put("dropped", np.add.reduceat((~valid).astype(np.float64), starts))
    put("sum_a", np.add.reduceat(x, starts, axis=0, dtype=np.float64))
    if not layout.same:
        put("sum_b", np.add.reduceat(y, starts, axis=0, dtype=np.float64))
    for name, at, left, right in _product_terms(x, y, layout):
        width = right.shape[1]
        block = max(1, _GROUP_BLOCK_BYTES // (8 * len(starts) * width))
        for column in range(0, left.shape[1], block):
            part = left[:, column : column + block]
            per_group = np.empty((len(starts), part.shape[1], width))
            for group, (start, end) in enumerate(zip(starts, ends, strict=True)):
                per_group[group] = part[start:end].T @ right[start:end]
            put(name, per_group, at + column * width)
    return totals
