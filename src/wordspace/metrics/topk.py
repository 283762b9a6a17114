"""Exact row-wise top-k with ties broken by the lower column, on numpy or cupy blocks.

The running top-k of a stream of blocks keeps, in every state and block, the invariant that
among equal values an earlier column holds a lower item index; merging a state with a block
whose items all come later preserves it, so the result never depends on how the stream was cut.
"""

from typing import Any

import numba
import numpy as np

from wordspace.metrics._backend import array_module

TopState = tuple[Any, Any]
"""Values and item indices of a running top-k, both (rows, k)."""


def top_k_columns(values: Any, k: int) -> Any:
    """Columns of the ``k`` largest entries of each row (ties to the lower column), ascending."""
    xp = array_module(values)
    n_rows, n_cols = values.shape
    if k >= n_cols:
        return xp.broadcast_to(xp.arange(n_cols), (n_rows, n_cols))
    kth = xp.partition(values, n_cols - k, axis=1)[:, n_cols - k, None]
    above = values > kth
    tied = values == kth
    need = k - above.sum(axis=1)
    crowded = xp.flatnonzero(tied.sum(axis=1) > need)
    if crowded.size:
        tied[crowded] &= xp.cumsum(tied[crowded], axis=1) <= need[crowded, None]
    return xp.nonzero(above | tied)[1].reshape(n_rows, k)


def _beating(values: Any, items: Any, offset: int, bar: Any) -> TopState:
    """The entries of each row above ``bar`` (rows, 1), packed left in column order, padded."""
    xp = array_module(values)
    rows, cols = xp.nonzero(values > bar)
    counts = xp.bincount(rows, minlength=values.shape[0])
    width = int(counts.max()) if rows.size else 0
    rank = xp.arange(rows.size) - xp.repeat(xp.cumsum(counts) - counts, counts)
    packed = xp.full((values.shape[0], width), -xp.inf, dtype=values.dtype)
    packed[rows, rank] = values[rows, cols]
    packed_items = xp.zeros((values.shape[0], width), dtype=xp.int64)
    packed_items[rows, rank] = cols + offset if items is None else items[rows, cols]
    return packed, packed_items


def merge_top(
    state: TopState | None, values: Any, k: int, *, offset: int = 0, items: Any = None
) -> TopState:
    """Fold a block into a running top-k; the block's items must all follow the state's.

    Column ``c`` of ``values`` is item ``offset + c``, or ``items[:, c]`` when ``items`` is given.
    """
    xp = array_module(values)
    width = 0 if state is None else state[0].shape[1]
    if width == k:
        # only entries strictly above a row's current k-th value can enter (later items lose ties)
        values, items = _beating(values, items, offset, state[0].min(axis=1, keepdims=True))
        if values.shape[1] == 0:
            return state
    if width:
        values = xp.concatenate([state[0], values], axis=1)
    cols = top_k_columns(values, k)
    block_cols = cols - width
    if items is None:
        chosen = block_cols + offset
    else:
        chosen = xp.take_along_axis(items, xp.maximum(block_cols, 0), axis=1)
    if width:
        held = xp.take_along_axis(state[1], xp.minimum(cols, width - 1), axis=1)
        chosen = xp.where(block_cols < 0, held, chosen)
    return xp.take_along_axis(values, cols, axis=1), chosen


def ranked_items(state: TopState) -> Any:
    """Items of a top-k state ordered best first, ties to the lower item."""
    xp = array_module(state[0])
    order = xp.argsort(-state[0], axis=1, kind="stable")
    return xp.take_along_axis(state[1], order, axis=1)


@numba.njit(parallel=True, nogil=True, cache=True)
def _sparse_scores_top(q_cols, q_vals, c_indptr, c_rows, c_vals, n_cand, out_vals, out_items):
    top = out_vals.shape[1]
    for r in numba.prange(q_cols.shape[0]):
        acc = np.zeros(n_cand, dtype=out_vals.dtype)
        for t in range(q_cols.shape[1]):
            weight = q_vals[r, t]
            if weight == 0:
                continue
            anchor = q_cols[r, t]
            for e in range(c_indptr[anchor], c_indptr[anchor + 1]):
                acc[c_rows[e]] += weight * c_vals[e]
        filled = 0
        for c in range(n_cand):
            score = acc[c]
            if filled == top and score <= out_vals[r, top - 1]:
                continue
            j = min(filled, top - 1)
            # strict comparison: an equal score already held (a lower candidate) stays ahead
            while j > 0 and out_vals[r, j - 1] < score:
                out_vals[r, j] = out_vals[r, j - 1]
                out_items[r, j] = out_items[r, j - 1]
                j -= 1
            out_vals[r, j] = score
            out_items[r, j] = c
            filled = min(filled + 1, top)


def sparse_scores_top(
    q_cols: np.ndarray,
    q_vals: np.ndarray,
    c_cols: np.ndarray,
    c_vals: np.ndarray,
    n_anchors: int,
    top: int,
) -> TopState:
    """Best ``top`` candidates per query by the dot product of sparse rows (numpy, fused kernel).

    Rows are given as (rows, nnz) column and value arrays; returns values and candidate rows,
    best first, ties to the lower candidate.
    """
    import scipy.sparse

    n_cand, nnz = c_cols.shape
    top = min(top, n_cand)
    by_anchor = scipy.sparse.csr_matrix(
        (c_vals.ravel(), c_cols.ravel(), np.arange(0, n_cand * nnz + 1, nnz)),
        shape=(n_cand, n_anchors),
    ).tocsc()
    out_vals = np.empty((q_cols.shape[0], top), dtype=q_vals.dtype)
    out_items = np.empty((q_cols.shape[0], top), dtype=np.int64)
    _sparse_scores_top(
        np.ascontiguousarray(q_cols),
        np.ascontiguousarray(q_vals),
        by_anchor.indptr,
        by_anchor.indices,
        by_anchor.data.astype(q_vals.dtype, copy=False),
        n_cand,
        out_vals,
        out_items,
    )
    return out_vals, out_items


def sparse_matrix_scores_top(
    q_cols: Any, q_vals: Any, c_cols: Any, c_vals: Any, n_anchors: int, top: int, sparse: Any
) -> TopState:
    """As :func:`sparse_scores_top` through a sparse-matrix module (cupyx.scipy.sparse on GPU).

    The result is a valid top-k state (ties in item order) but not sorted best first.
    """
    xp = array_module(q_vals)

    def csr(cols: Any, vals: Any) -> Any:
        n, nnz = cols.shape
        indptr = xp.arange(0, n * nnz + 1, nnz)
        return sparse.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(n, n_anchors))

    scores = (csr(q_cols, q_vals) @ csr(c_cols, c_vals).T).toarray()
    return merge_top(None, scores, top)
