"""The compiled (numba) kernels of `wordspace.metrics.topk`, in a module of their own so that
numba (about 45 MB resident) is loaded only by processes that rank ASIF candidates."""

import numba
import numpy as np


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
    """One row of :func:`merge_top_rows`: append the block's entries that can still enter to a
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
def merge_top_rows(state_vals, state_items, values, offset, items, out_vals, out_items):
    for r in numba.prange(values.shape[0]):  # pragma: no cover - compiled
        row_items = items[r] if items.shape[1] else items[0]
        _merge_row(state_vals[r], state_items[r], values[r], offset, row_items, out_vals[r],
                   out_items[r])  # fmt: skip


@numba.njit(parallel=True, nogil=True, cache=True)
def sparse_scores_top_rows(q_cols, q_vals, c_indptr, c_rows, c_vals, n_cand, out_vals, out_items):
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
