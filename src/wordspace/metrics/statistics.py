"""Sufficient statistics of two stacks of layers, accumulated in one Dask pass over word chunks.

Every layer-pair metric here (linear CKA, debiased CKA, CCA) is a function of a few sums over
words: the column sums, each layer's ``XᵀX``, every cross product ``XₐᵀY_b`` and, for debiased
CKA, sums built from the rows' squared norms. Each word chunk contributes those sums through a
few BLAS calls on its stacked layers, ``(words, layers * dim)``; the chunks' contributions are
added in float64 by a Dask tree reduction, so memory is bounded by the size of the statistics and
no ``n × n`` matrix ever exists.

Numerics. Before the products, each layer is shifted by the column mean of the first word chunk,
so the sums are of nearly centred data and the exact centring done at the end does not cancel
digits. The per-chunk products run in float32 for float16/float32 inputs (float64 for float64
inputs); the sums across chunks are always float64.

Missing words. A word (row) with a NaN anywhere in either input is left out, and counted;
infinite values are an error.
"""

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from wordspace.errors import WordspaceError
from wordspace.metrics._backend import array_module, to_numpy

# Words per chunk are raised (by merging chunks) to at least this many, and to about
# _TARGET_CHUNK_BYTES of input, so each chunk's gemm outweighs the cost of emitting its statistics.
_MIN_CHUNK_WORDS = 8192
_TARGET_CHUNK_BYTES = 2**27
_SPLIT_EVERY = 4


@dataclass(frozen=True)
class _Layout:
    """Where each statistic lives in the flat float64 vector that a chunk emits."""

    shape_a: tuple[int, int]  # (layers, dim) of A
    shape_b: tuple[int, int]
    same: bool  # A is B: one stacked Gram matrix holds every product
    debiased: bool
    compute_dtype: np.dtype

    def fields(self) -> list[tuple[str, tuple[int, ...]]]:
        (la, da_), (lb, db) = self.shape_a, self.shape_b
        fields: list[tuple[str, tuple[int, ...]]] = [("n", (1,)), ("dropped", (1,))]
        fields.append(("sum_a", (la * da_,)))
        if self.same:
            fields.append(("gram_a", (la * da_, la * da_)))
        else:
            fields += [
                ("sum_b", (lb * db,)),
                ("gram_a", (la, da_, da_)),
                ("gram_b", (lb, db, db)),
                ("cross", (la * da_, lb * db)),
            ]
        if self.debiased:
            norms = la if self.same else la + lb
            fields += [("norms_norms", (norms, norms)), ("a_norms", (la * da_, norms))]
            if not self.same:
                fields.append(("b_norms", (lb * db, norms)))
        return fields

    def offsets(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        offsets, start = {}, 0
        for name, shape in self.fields():
            offsets[name] = (start, shape)
            start += int(np.prod(shape))
        return offsets

    @property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.fields())


@dataclass
class GramStatistics:
    """Centred second-order statistics of every layer of A and B over the words valid in both.

    ``gram_a[i]`` is ``XᵢcᵀXᵢc`` for layer i of A (column-centred), ``gram_b[j]`` likewise for B,
    ``cross`` is ``XcᵀYc`` of the stacked layers, shape ``(La, da, Lb, db)``. With
    ``debiased=True`` the statistics also hold the centred row-norm products
    ``q[i, j] = Σ_words ‖xᵢc‖² ‖yⱼc‖²`` that the unbiased HSIC estimator needs (``q_ab``, and
    ``q_a``/``q_b`` of each layer with itself).
    """

    n_words: int
    n_excluded: int
    gram_a: np.ndarray
    gram_b: np.ndarray
    cross: np.ndarray
    same: bool
    precision: float  # machine epsilon of the per-chunk products
    q_ab: np.ndarray | None = None
    q_a: np.ndarray | None = None
    q_b: np.ndarray | None = None

    @property
    def n_layers(self) -> tuple[int, int]:
        return self.gram_a.shape[0], self.gram_b.shape[0]


def as_layer_stack(x: Any, name: str) -> da.Array:
    """Return ``x`` as a dask array ``(layer, word, dim)``.

    Accepts numpy, cupy or dask arrays of shape ``(word, dim)`` or ``(layer, word, dim)`` and
    xarray DataArrays with dims ``(word, dim)`` or ``(layer, word, dim)`` (in any order).
    """
    if hasattr(x, "dims") and hasattr(x, "coords"):  # xarray.DataArray, duck-typed
        x = x.transpose(*[d for d in ("layer", "word") if d in x.dims], ...).data
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise WordspaceError(
            f"{name} must be an array (numpy, cupy, dask or xarray), got {type(x)}"
        )
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise WordspaceError(
            f"{name} has {x.ndim} dimensions; pass (word, dim) or (layer, word, dim) arrays"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise WordspaceError(f"{name} has dtype {x.dtype}; pass floating-point embeddings")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64)
    if not isinstance(x, da.Array):
        words = _chunk_words(x.shape[0] * x.shape[2] * x.dtype.itemsize)
        x = da.from_array(x, chunks=(-1, words, -1), asarray=False)
    return x


def _chunk_words(row_bytes: int) -> int:
    return max(_MIN_CHUNK_WORDS, _TARGET_CHUNK_BYTES // max(row_bytes, 1))


def _with_large_word_chunks(x: da.Array, rows: int) -> da.Array:
    current = max(x.chunks[1])
    if current >= rows:
        return x
    return x.rechunk({1: -(-rows // current) * current})


def gram_statistics(a: Any, b: Any, debiased: bool = False) -> GramStatistics:
    """Accumulate the statistics of every layer of ``a`` against every layer of ``b``.

    ``a is b`` computes only the upper triangle of the products. Runs on whatever Dask scheduler
    is active (a distributed client if one exists).
    """
    same = a is b
    stack_a = as_layer_stack(a, "A")
    stack_b = stack_a if same else as_layer_stack(b, "B")
    if stack_a.shape[1] != stack_b.shape[1]:
        raise WordspaceError(
            f"A has {stack_a.shape[1]} words and B has {stack_b.shape[1]}; "
            "pass embeddings of the same words in the same order"
        )
    compute_dtype = np.dtype(
        np.float64 if np.float64 in (stack_a.dtype, stack_b.dtype) else np.float32
    )
    row_bytes = stack_a.shape[0] * stack_a.shape[2] * stack_a.dtype.itemsize
    if not same:
        row_bytes += stack_b.shape[0] * stack_b.shape[2] * stack_b.dtype.itemsize
    stack_a = _with_large_word_chunks(stack_a, _chunk_words(row_bytes))
    layout = _Layout(
        shape_a=(stack_a.shape[0], stack_a.shape[2]),
        shape_b=(stack_b.shape[0], stack_b.shape[2]),
        same=same,
        debiased=debiased,
        compute_dtype=compute_dtype,
    )
    meta = array_module(stack_a._meta).empty((0, 0), dtype=np.float64)
    shift_a = _first_chunk_shift(stack_a, compute_dtype)
    if same:
        args = (stack_a, "lwd", shift_a, "ld")
    else:
        stack_b = stack_b.rechunk({1: stack_a.chunks[1]})
        args = (stack_a, "lwd", stack_b, "mwe", shift_a, "ld")
        args += (_first_chunk_shift(stack_b, compute_dtype), "me")
    per_chunk = da.blockwise(
        _chunk_statistics,
        "wk",
        *args,
        new_axes={"k": layout.size},
        adjust_chunks={"w": 1},
        concatenate=True,
        meta=meta,
        layout=layout,
    )
    total = to_numpy(per_chunk.sum(axis=0, split_every=_SPLIT_EVERY).compute())
    return _finish(total, layout)


def _first_chunk_shift(x: da.Array, dtype: np.dtype) -> da.Array:
    first = x[:, : x.chunks[1][0], :]
    return first.map_blocks(_column_shift, dtype=dtype, drop_axis=1, compute_dtype=dtype)


def _column_shift(block: Any, compute_dtype: np.dtype) -> Any:
    """Column means of a block over its finite rows (0 where a column has none)."""
    xp = array_module(block)
    finite = xp.isfinite(block)
    sums = xp.where(finite, block, 0).sum(axis=1, dtype=np.float64)
    counts = xp.maximum(finite.sum(axis=1), 1)
    return (sums / counts).astype(compute_dtype)


def _stacked_rows(block: Any, shift: Any, compute_dtype: np.dtype) -> Any:
    """``(layer, word, dim)`` block -> contiguous ``(word, layer * dim)`` rows, shifted."""
    xp = array_module(block)
    rows = xp.subtract(block.transpose(1, 0, 2), shift[None], dtype=compute_dtype)
    return rows.reshape(rows.shape[0], -1)


def _finite_rows(rows: Any, name: str) -> Any:
    xp = array_module(rows)
    finite = xp.isfinite(rows).all(axis=1)
    if not bool(finite.all()) and bool(xp.isinf(rows[~finite]).any()):
        raise WordspaceError(
            f"{name} contains infinite values; replace them with NaN to leave those words out"
        )
    return finite


def _chunk_statistics(*blocks: Any, layout: _Layout) -> Any:
    """One word chunk's contribution to every statistic, as a flat float64 row ``(1, size)``."""
    if layout.same:
        block_a, shift_a = blocks
        x = _stacked_rows(block_a, shift_a, layout.compute_dtype)
        valid = _finite_rows(x, "A")
    else:
        block_a, block_b, shift_a, shift_b = blocks
        x = _stacked_rows(block_a, shift_a, layout.compute_dtype)
        y = _stacked_rows(block_b, shift_b, layout.compute_dtype)
        valid = _finite_rows(x, "A") & _finite_rows(y, "B")
    xp = array_module(x)
    n = int(valid.sum())
    if n < x.shape[0]:
        x = x[valid]
        y = None if layout.same else y[valid]
    out = xp.empty((1, layout.size), dtype=np.float64)
    offsets = layout.offsets()

    def put(name: str, value: Any) -> None:
        start, shape = offsets[name]
        out[0, start : start + int(np.prod(shape))] = value.reshape(-1)

    put("n", xp.asarray([n]))
    put("dropped", xp.asarray([len(valid) - n]))
    put("sum_a", x.sum(axis=0, dtype=np.float64))
    (la, da_), (lb, db) = layout.shape_a, layout.shape_b
    if layout.same:
        put("gram_a", x.T @ x)
    else:
        put("sum_b", y.sum(axis=0, dtype=np.float64))
        put("gram_a", xp.stack([_self_product(x[:, i * da_ : (i + 1) * da_]) for i in range(la)]))
        put("gram_b", xp.stack([_self_product(y[:, j * db : (j + 1) * db]) for j in range(lb)]))
        put("cross", x.T @ y)
    if layout.debiased:
        norms = _row_norms(x, la)
        if not layout.same:
            norms = xp.concatenate([norms, _row_norms(y, lb)], axis=1)
        put("a_norms", x.T @ norms)
        norms64 = norms.astype(np.float64)
        put("norms_norms", norms64.T @ norms64)
        if not layout.same:
            put("b_norms", y.T @ norms)
    return out


def _row_norms(rows: Any, layers: int) -> Any:
    """Squared norm of each row's slice per layer, ``(words, layers)``, with no temporary copy."""
    per_layer = rows.reshape(rows.shape[0], layers, -1)
    return array_module(rows).einsum("nld,nld->nl", per_layer, per_layer)


def _self_product(x: Any) -> Any:
    # ``x.T @ x`` on one buffer lets numpy/cupy call syrk (half the flops of gemm).
    return x.T @ x


def _unpack(total: np.ndarray, layout: _Layout) -> dict[str, np.ndarray]:
    return {
        name: total[start : start + int(np.prod(shape))].reshape(shape)
        for name, (start, shape) in layout.offsets().items()
    }


def _finish(total: np.ndarray, layout: _Layout) -> GramStatistics:
    """Centre the accumulated (shifted) sums and derive the row-norm products."""
    s = _unpack(total, layout)
    n, dropped = int(round(s["n"][0])), int(round(s["dropped"][0]))
    if n < 3:
        raise WordspaceError(
            f"only {n} words are valid (non-NaN) in both A and B; at least 3 are needed"
        )
    (la, da_), (lb, db) = layout.shape_a, layout.shape_b
    mean_a = s["sum_a"] / n
    if layout.same:
        cross = s["gram_a"]
        cross -= np.outer(s["sum_a"], mean_a)
        cross = cross.reshape(la, da_, la, da_)
        gram_a = np.stack([cross[i, :, i, :] for i in range(la)])
        gram_b, mean_b = gram_a, mean_a
    else:
        mean_b = s["sum_b"] / n
        cross = s["cross"]
        cross -= np.outer(s["sum_a"], mean_b)
        cross = cross.reshape(la, da_, lb, db)
        gram_a = s["gram_a"] - n * _layer_outer(mean_a.reshape(la, da_))
        gram_b = s["gram_b"] - n * _layer_outer(mean_b.reshape(lb, db))
    stats = GramStatistics(
        n_words=n,
        n_excluded=dropped,
        gram_a=gram_a,
        gram_b=gram_b,
        cross=cross,
        same=layout.same,
        precision=float(np.finfo(layout.compute_dtype).eps),
    )
    if layout.debiased:
        _add_row_norm_products(stats, s, mean_a.reshape(la, da_), mean_b.reshape(lb, db))
    return stats


def _layer_outer(means: np.ndarray) -> np.ndarray:
    return means[:, :, None] * means[:, None, :]


def _add_row_norm_products(
    stats: GramStatistics, s: dict[str, np.ndarray], mean_a: np.ndarray, mean_b: np.ndarray
) -> None:
    """Set ``q[i, j] = Σ ‖xᵢ - μᵢ‖² ‖yⱼ - νⱼ‖²`` from sums of the shifted rows ``x̃``.

    With ρᵢ = ‖x̃ᵢ‖² and ‖x̃ᵢ - μᵢ‖² = ρᵢ - 2 x̃ᵢ·μᵢ + ‖μᵢ‖², expanding the product and summing
    over words needs only Σρᵢρⱼ, Σx̃ᵢρⱼ, Σρᵢ = tr(x̃ᵢᵀx̃ᵢ) and μᵢᵀ(x̃ᵢᵀx̃ⱼ)μⱼ.
    """
    n = stats.n_words
    la, lb = stats.n_layers
    means = [*mean_a] if stats.same else [*mean_a, *mean_b]
    grams = [*stats.gram_a] if stats.same else [*stats.gram_a, *stats.gram_b]
    sq_means = np.array([m @ m for m in means])
    rho = s["norms_norms"]
    # Σρᵢ over the shifted data = centred trace + n‖μᵢ‖².
    sums_of_norms = np.array([np.trace(g) for g in grams]) + n * sq_means
    # mean_dot[i, j] = μᵢ · Σ x̃ᵢ ρⱼ
    mean_dot = np.einsum("lk,lkj->lj", mean_a, s["a_norms"].reshape(la, -1, rho.shape[1]))
    if not stats.same:
        b_dot = np.einsum("lk,lkj->lj", mean_b, s["b_norms"].reshape(lb, -1, rho.shape[1]))
        mean_dot = np.concatenate([mean_dot, b_dot])

    def q(i: Any, j: Any, mean_cross_mean: np.ndarray) -> np.ndarray:
        return (
            rho[i, j]
            - 2 * mean_dot[i, j]
            - 2 * mean_dot[j, i]
            + sq_means[j] * sums_of_norms[i]
            + sq_means[i] * sums_of_norms[j]
            + 4 * mean_cross_mean
            + n * sq_means[i] * sq_means[j]
        )

    a_idx = np.arange(la)
    b_idx = a_idx if stats.same else la + np.arange(lb)
    # μᵢᵀ C_ij μⱼ over the centred cross blocks (equal to the shifted form minus n‖μᵢ‖²‖μⱼ‖²,
    # which the formula above already accounts for in its last term).
    cross_b = np.einsum("adbe,be->adb", stats.cross, mean_b)
    mcm_ab = np.einsum("adb,ad->ab", cross_b, mean_a)
    mcm_a = np.einsum("ade,ad,ae->a", stats.gram_a, mean_a, mean_a)
    mcm_b = np.einsum("bde,bd,be->b", stats.gram_b, mean_b, mean_b)
    stats.q_ab = q(a_idx[:, None], b_idx[None, :], mcm_ab)
    stats.q_a = q(a_idx, a_idx, mcm_a)
    stats.q_b = q(b_idx, b_idx, mcm_b)
