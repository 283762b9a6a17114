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


@numba.njit(nogil=True)
def _kth_largest(scratch, count, k):  # pragma: no cover - compiled
    """The k-th largest of scratch[:count] by quickselect (Hoare partition), reordering it."""
    target = count - k
    lo, hi = 0, count - 1
    while lo < hi:
        a, b, c = scratch[lo], scratch[(lo + hi) >> 1], scratch[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while scratch[i] < pivot:
                i += 1
            while scratch[j] > pivot:
                j -= 1
            if i <= j:
                scratch[i], scratch[j] = scratch[j], scratch[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return scratch[target]
    return scratch[lo]


@numba.njit(nogil=True)
def _keep_top(vals, items, scratch, count, k):  # pragma: no cover - compiled
    """Keep the k best of vals[:count] in place, in their order; return the k-th value."""
    scratch[:count] = vals[:count]
    kth = _kth_largest(scratch, count, k)
    need = k
    for j in range(count):
        if vals[j] > kth:
            need -= 1
    kept = 0
    for j in range(count):
        value = vals[j]
        if value > kth or (value == kth and need > 0):
            if value == kth:
                need -= 1
            vals[kept] = value
            items[kept] = items[j]
            kept += 1
    return kth


@numba.njit(nogil=True)
def _merge_row(state_vals, state_items, values, offset, items, out_vals, out_items):
    """One row of :func:`_merge_top`: append the block's entries that can still enter to a
    buffer holding the state (2k at most); whenever it fills, keep its k best and from then on
    reject everything not above the k-th value (a later item loses a tie)."""
    k, width = out_vals.shape[0], state_vals.shape[0]
    capacity = min(width + values.shape[0], 2 * k)
    buf_vals = np.empty(capacity, dtype=out_vals.dtype)
    buf_items = np.empty(capacity, dtype=out_items.dtype)
    scratch = np.empty(capacity, dtype=out_vals.dtype)
    buf_vals[:width] = state_vals
    buf_items[:width] = state_items
    count = width
    filling = width < k  # until the buffer first fills, every entry enters
    bar = state_vals.min() if not filling else out_vals.dtype.type(0)
    n = values.shape[0]
    c = 0
    while c < n:
        if not filling and not values[c] > bar:
            c += 1
            continue
        if count == capacity:
            bar = _keep_top(buf_vals, buf_items, scratch, count, k)
            count = k
            filling = False
            continue
        buf_vals[count] = values[c]
        buf_items[count] = items[c] if items.shape[0] else offset + c
        count += 1
        c += 1
    if count > k:
        _keep_top(buf_vals, buf_items, scratch, count, k)
    out_vals[:] = buf_vals[:k]
    out_items[:] = buf_items[:k]


@numba.njit(parallel=True, nogil=True, cache=True)
def _merge_top(state_vals, state_items, values, offset, items, out_vals, out_items):
    for r in numba.prange(values.shape[0]):  # pragma: no cover - compiled
        row_items = items[r] if items.shape[1] else items[0]
        _merge_row(state_vals[r], state_items[r], values[r], offset, row_items, out_vals[r],
                   out_items[r])  # fmt: skip


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
        item_dtype = (
            items.dtype if items is not None else np.int64 if state is None else state[1].dtype
        )
        out_shape = (values.shape[0], min(k, width + values.shape[1]))
        out = np.empty(out_shape, values.dtype), np.empty(out_shape, item_dtype)
        state = state or (np.empty((values.shape[0], 0), values.dtype), out[1][:, :0])
        _merge_top(np.ascontiguousarray(state[0], dtype=values.dtype),
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
    n_cand = candidates.shape[0]
    top = min(top, n_cand)
    out_vals = np.empty((q_cols.shape[0], top), dtype=q_vals.dtype)
    out_items = np.empty((q_cols.shape[0], top), dtype=np.int64)
    _sparse_scores_top(
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
