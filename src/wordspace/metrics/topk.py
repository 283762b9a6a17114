"""Exact row-wise top-k with ties broken by the lower column, on numpy or cupy blocks.

The running top-k of a stream of blocks keeps, in every state and block, the invariant that
among equal values an earlier column holds a lower item index; merging a state with a block
whose items all come later preserves it, so the result never depends on how the stream was cut.
"""

from typing import Any

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
    Numpy blocks go through a fused kernel, others through array operations.
    """
    xp = array_module(values)
    width = 0 if state is None else state[0].shape[1]
    if xp is np:
        from wordspace.metrics._topk_kernels import merge_top_rows  # numba, on first use only

        item_dtype = (
            items.dtype if items is not None else np.int64 if state is None else state[1].dtype
        )
        out_shape = (values.shape[0], min(k, width + values.shape[1]))
        out = np.empty(out_shape, values.dtype), np.empty(out_shape, item_dtype)
        state = state or (np.empty((values.shape[0], 0), values.dtype), out[1][:, :0])
        merge_top_rows(np.ascontiguousarray(state[0], dtype=values.dtype),
                   np.ascontiguousarray(state[1], dtype=item_dtype), np.ascontiguousarray(values),
                   offset, np.empty((1, 0), item_dtype) if items is None
                   else np.ascontiguousarray(items), *out)  # fmt: skip
        return out
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


def anchor_major(c_cols: np.ndarray, c_vals: np.ndarray, n_anchors: int) -> Any:
    """Sparse rows given as (rows, nnz) column and value arrays, as a scipy CSC matrix."""
    import scipy.sparse

    n_cand, nnz = c_cols.shape
    return scipy.sparse.csr_matrix(
        (c_vals.ravel(), c_cols.ravel(), np.arange(0, n_cand * nnz + 1, nnz)),
        shape=(n_cand, n_anchors),
    ).tocsc()


def sparse_scores_top(
    q_cols: np.ndarray, q_vals: np.ndarray, candidates: Any, top: int
) -> TopState:
    """Best ``top`` candidates per query by the dot product of sparse rows (numpy, fused kernel).

    Query rows are (rows, nnz) column and value arrays, ``candidates`` an :func:`anchor_major`
    matrix; returns values and candidate rows, best first, ties to the lower candidate.
    """
    from wordspace.metrics._topk_kernels import sparse_scores_top_rows  # numba, on first use only

    n_cand = candidates.shape[0]
    top = min(top, n_cand)
    out_vals = np.empty((q_cols.shape[0], top), dtype=q_vals.dtype)
    out_items = np.empty((q_cols.shape[0], top), dtype=np.int64)
    sparse_scores_top_rows(
        np.ascontiguousarray(q_cols),
        np.ascontiguousarray(q_vals),
        candidates.indptr,
        candidates.indices,
        candidates.data.astype(q_vals.dtype, copy=False),
        n_cand,
        out_vals,
        out_items,
    )
    return out_vals, out_items


DENSE_QUERY_BYTES = 1 << 28
"""Largest dense slab of query rows the sparse-matrix path expands at once."""


def sparse_matrix_scores_top(
    q_cols: Any, q_vals: Any, c_cols: Any, c_vals: Any, n_anchors: int, top: int, sparse: Any
) -> TopState:
    """As :func:`sparse_scores_top` through a sparse-matrix module (cupyx.scipy.sparse on GPU).

    The candidates stay sparse and the queries are expanded to dense rows a slab at a time, so
    the product is one sparse x dense multiplication (SpMM) per slab: a sparse x sparse product
    would have a nearly dense result, which GPU sparse libraries build slowly. The result is a
    valid top-k state (ties in item order) but not sorted best first.
    """
    xp = array_module(q_vals)
    n_cand, nnz = c_cols.shape
    indptr = xp.arange(0, n_cand * nnz + 1, nnz)
    candidates = sparse.csr_matrix((c_vals.ravel(), c_cols.ravel(), indptr), (n_cand, n_anchors))
    slab = max(1, DENSE_QUERY_BYTES // (n_anchors * q_vals.dtype.itemsize))
    tops = []
    for start in range(0, q_cols.shape[0], slab):
        cols, vals = q_cols[start : start + slab], q_vals[start : start + slab]
        dense = xp.zeros((cols.shape[0], n_anchors), dtype=q_vals.dtype)
        dense[xp.arange(cols.shape[0])[:, None], cols] = vals
        tops.append(merge_top(None, xp.ascontiguousarray((candidates @ dense.T).T), top))
    return xp.concatenate([t[0] for t in tops]), xp.concatenate([t[1] for t in tops])
