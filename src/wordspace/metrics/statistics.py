"""Sufficient statistics of two stacks of layers, accumulated in one Dask pass over word chunks.

Every layer-pair metric here (linear CKA, debiased CKA, CCA) is a function of a few sums over
words: the column sums, each layer's ``XᵀX``, every cross product ``XₐᵀY_b`` and, for debiased
CKA, sums built from the rows' squared norms. The layers of a block of words are stacked side by
side, ``(words, layers * dim)``, and the cross products of a block are a few BLAS ``gemm`` calls,
one per panel of A's layers against all of B's (when A is B, only the panels on and above the
diagonal). No ``n × n`` matrix ever exists.

The pass. The words are cut into as many equal, contiguous shares as the active Dask scheduler runs
tasks at once, and each share is a chain of tasks, one per word chunk (or part of a chunk) in it. A
task copies its words, shifted, into the chain's row buffer, and the buffer's words are added into
the chain's float64 totals in place, in one product, when the task's words would not fit beside
them, when it is full, and at the end of the chain. A chunk of more words than a product is read
once and added in several equal products. So products span the boundaries of small chunks (which
need no merging) and only rows of small chunks wait between tasks. On the local threaded scheduler
on CPUs every chain adds into one shared set of totals; elsewhere (a cluster, processes, a GPU)
each chain has its own, and they are added pairwise at the end. A last task, where the sum lies,
centres it and computes the caller's summary (the metrics' grids): on a cluster the statistics stay
on a worker and only the summary reaches the client. So each chain allocates its scratch (and
totals) once, however many chunks it reads, and memory is bounded by the size of the statistics and
one chunk per chain, not by n.

Each task reads its own chunk, one layer block at a time, each block copied into the row buffer
before the next is read (a chunk larger than a product: all its blocks, then its products).
Read as tasks of their own, the reads ran in Dask's priority order: in a 13 x 13 grid pass over
46,906 words on the threaded scheduler one thread ran read tasks for eight seconds while a chain
waited for its next chunk, the chains finished seven seconds apart, and the memory that held a
chunk's blocks went back to the system between tasks, so reads kept paying for fresh pages; on a
two-worker cluster one worker ran 332 of the 468 reads, and chains (800 MB of totals each) moved
to the worker holding their next blocks. Only blocks that depend on data already held by a
cluster (scattered in-memory inputs, persisted arrays) are still fetched by Dask before the task.
With the local threaded scheduler each task gets an equal share of the cores' BLAS threads
(distributed workers already run single-threaded BLAS), so Dask threads and BLAS threads never
oversubscribe.

Numerics. Before the products, each layer is shifted by its column means over the first
``_SHIFT_WORDS`` words, so the sums are of nearly centred data and the exact centring done at the
end does not cancel digits. For float16/float32 inputs the products run in float32 (``sgemm``,
twice the speed of ``dgemm``) on blocks of ``_PRODUCT_WORDS`` words, and each block's products are
added into the float64 totals, so float32 rounding never builds up over more than one block;
float64 inputs run in float64 throughout.

Missing words. A word (row) with a NaN anywhere in either input is left out, and counted;
infinite values are an error.
"""

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import dask
import dask.array as da
import dask.multiprocessing
import dask.threaded
import numpy as np
from dask.delayed import Delayed, delayed
from dask.local import get_sync
from dask.optimization import cull
from dask.sizeof import sizeof
from dask.system import CPU_COUNT
from threadpoolctl import threadpool_limits

from wordspace.errors import WordspaceError
from wordspace.metrics._backend import array_module, to_numpy
from wordspace.metrics._blocks import distributed_client, in_memory_blocks

SummaryT = TypeVar("SummaryT")

# In-memory inputs are cut into chunks of at least this many words and about
# _TARGET_CHUNK_BYTES of input.
_MIN_CHUNK_WORDS = 8192
_TARGET_CHUNK_BYTES = 2**27
# Dask chunks of less input than this are merged, so Dask's per-task overhead stays small. Larger
# ones are read as they are: merging would copy every row once more, into fresh memory, before
# the chain copies it into its row buffer (13 x 13 layers of 768 over 46,906 words from 3,072-word
# store blocks: 3.7 GB of merged copies, seconds of page faults on a 60 s pass).
_MIN_TASK_BYTES = 2**24
# Words per float32 product. On shifted (nearly centred) data, CKA and CCA from float32 products
# of 2,048 to 16,384 words added into float64 stay within 2e-8 of float64 products (46,906 words).
# 4,096 keeps the float32 -> float64 additions to a few per cent of the gemm time and the stacked
# rows of a 13 x 768 model to 160 MB.
_PRODUCT_WORDS = 4096
# Words whose column means shift the data before the products: enough for nearly centred sums,
# and a third of the first store chunk that the shift would otherwise read in full.
_SHIFT_WORDS = 1024
# Chains of tasks on one GPU in the local threaded scheduler. Measured on an H200 (13 x 768
# layers, 46,906 words): 2 chains are as fast as 11, and each further thread pays seconds of
# CUDA/cuBLAS start-up on its first product (79 s for a first call with 11 threads).
_GPU_CHAINS = 2
# Columns of A per product panel, at most: A's columns are cut into equal panels. A product
# packs all of B's rows for its panel, so wider panels pack them fewer times: for two 13 x 768
# models on 2 cores (one 4,096-word product per core, float64 additions included), panels of
# 2,496 and 3,328 columns ran at 351 and 367 GFLOP/s against 327 for panels of one layer (768).
# Their float32 scratch is 3,328 x 9,984 floats (133 MB) per chain.
_PANEL_COLUMNS = 4096


@dataclass(frozen=True)
class _Layout:
    """Where each statistic lives in the flat float64 vector that a chunk emits."""

    shape_a: tuple[int, int]  # (layers, dim) of A
    shape_b: tuple[int, int]
    same: bool  # A is B: one stacked Gram matrix holds every product
    debiased: bool
    compute_dtype: np.dtype

    @classmethod
    def of(cls, stack_a: Any, stack_b: Any, same: bool, debiased: bool) -> "_Layout":
        """The layout for two (layer, word, dim) stacks: float32 products unless one is float64."""
        float64 = np.float64 in (stack_a.dtype, stack_b.dtype)
        return cls(
            shape_a=(stack_a.shape[0], stack_a.shape[2]),
            shape_b=(stack_b.shape[0], stack_b.shape[2]),
            same=same,
            debiased=debiased,
            compute_dtype=np.dtype(np.float64 if float64 else np.float32),
        )

    @property
    def norm_columns(self) -> int:
        """Columns appended to each input's rows for debiased CKA: the squared norms of the rows'
        layers (A's, and B's unless A is B). So the product panels also give the sums of each
        column times each norm, ``Σ x ρ``, at the panels' speed, not as products of their own
        (a skinny product ran at 47 GFLOP/s on a 4,096 x 9,984 block, one thread)."""
        if not self.debiased:
            return 0
        return self.shape_a[0] if self.same else self.shape_a[0] + self.shape_b[0]

    @property
    def data_widths(self) -> list[int]:
        """Columns of each input's layers side by side (one input when A is B)."""
        shapes = [self.shape_a] if self.same else [self.shape_a, self.shape_b]
        return [layers * dim for layers, dim in shapes]

    @property
    def row_widths(self) -> list[int]:
        """Columns of each input's rows: its layers, then the norm columns."""
        return [width + self.norm_columns for width in self.data_widths]

    def fields(self) -> list[tuple[str, tuple[int, ...]]]:
        """The statistics, in order: the products of the (widened) rows as one matrix,
        ``products``, and without norm columns the sums and each layer's Gram matrix."""
        (la, da_), (lb, db) = self.shape_a, self.shape_b
        widths = self.row_widths
        fields: list[tuple[str, tuple[int, ...]]] = [("n", (1,)), ("dropped", (1,))]
        fields.append(("sum_a", (la * da_,)))
        if not self.same:
            fields += [("sum_b", (lb * db,)), ("gram_a", (la, da_, da_)), ("gram_b", (lb, db, db))]
        fields.append(("products", (widths[0], widths[-1])))
        if self.debiased:
            fields.append(("norms_norms", (self.norm_columns, self.norm_columns)))
        return fields

    def offsets(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        offsets, start = {}, 0
        for name, shape in self.fields():
            offsets[name] = (start, shape)
            start += int(np.prod(shape))
        return offsets

    @property
    def panel_columns(self) -> int:
        """Columns of A per product panel: A's columns in equal panels of ``_PANEL_COLUMNS``
        or fewer."""
        columns = self.row_widths[0]
        panels = -(-columns // _PANEL_COLUMNS)
        return -(-columns // panels)

    @property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.fields())

    def views(self, total: Any) -> dict[str, Any]:
        """Each statistic as a view of the flat vector ``total``, in its own shape."""
        return {
            name: total[start : start + int(np.prod(shape))].reshape(shape)
            for name, (start, shape) in self.offsets().items()
        }


class _SharedTotals:
    """One set of float64 totals in host memory that every chain of the local threaded scheduler
    adds into, and the lock each addition takes.

    Chains in one process need no totals of their own: with one copy, the pass holds the
    statistics once however many threads run it (two 13 x 768 models: 800 MB, not 800 MB per
    thread), and no chain's totals are added into another's at the end. Additions are a few
    per cent of the pass, so the lock is rarely contended. The order in which chains add their
    products varies from run to run, so results agree to rounding, not bit for bit (four runs over
    40,000 random words: CKA and CCA identical, debiased CKA, whose estimator cancels digits,
    within 4e-13). GPU chains keep their own totals: a lock orders kernel launches, not the
    kernels, which may overlap on per-thread streams.
    """

    def __init__(self, size: int) -> None:
        self.total = np.empty(size, dtype=np.float64)
        self.lock = threading.Lock()
        # Zero them on every core now, which faults the fresh pages in: otherwise the chain that
        # adds first faults them all in alone while the others wait for it at the end (on the
        # development VM, 0.7 s per 266 MB of fresh memory).
        _on_all_cores(lambda part: part.fill(0), np.array_split(self.total, CPU_COUNT))

    def chain(self) -> "_Chain":
        """A new chain adding into these totals."""
        return _Chain(self.total, lock=self.lock)

    def __dask_tokenize__(self) -> int:
        return id(self)


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
    given = tuple(x.shape)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise WordspaceError(
            f"{name} has {x.ndim} dimensions; pass (word, dim) or (layer, word, dim) arrays"
        )
    empty = [axis for axis, size in zip(("layer", "word", "dim"), x.shape, strict=True) if not size]
    if empty:
        raise WordspaceError(
            f"{name} has no {empty[0]}s (shape {given}); pass embeddings with at least one layer, "
            "3 words and one dimension"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise WordspaceError(f"{name} has dtype {x.dtype}; pass floating-point embeddings")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64)
    if not isinstance(x, da.Array):
        row_bytes = x.shape[0] * x.shape[2] * x.dtype.itemsize
        words = max(_MIN_CHUNK_WORDS, _TARGET_CHUNK_BYTES // max(row_bytes, 1))
        x = in_memory_blocks(x, words, axis=1)
    return x


def _with_large_word_chunks(x: da.Array, rows: int) -> da.Array:
    current = max(x.chunks[1])
    if current >= rows:
        return x
    return x.rechunk({1: -(-rows // current) * current})


def gram_statistics(
    a: Any,
    b: Any,
    debiased: bool = False,
    summary: Callable[[GramStatistics], SummaryT] | None = None,
) -> GramStatistics | SummaryT:
    """Accumulate the statistics of every layer of ``a`` against every layer of ``b``.

    ``a is b`` computes only the upper triangle of the scratch. Runs on whatever Dask scheduler
    is active (a distributed client if one exists). With ``summary``, returns
    ``summary(statistics)``, computed in the task that completes the statistics (on a cluster,
    a worker), so only its result travels to the client: the statistics of two 13 x 768 models
    are 800 MB.
    """
    same = a is b
    stack_a = as_layer_stack(a, "A")
    stack_b = stack_a if same else as_layer_stack(b, "B")
    if stack_a.shape[1] != stack_b.shape[1]:
        raise WordspaceError(
            f"A has {stack_a.shape[1]} words and B has {stack_b.shape[1]}; "
            "pass embeddings of the same words in the same order"
        )
    layout = _Layout.of(stack_a, stack_b, same, debiased)
    compute_dtype = layout.compute_dtype
    row_bytes = stack_a.shape[0] * stack_a.shape[2] * stack_a.dtype.itemsize
    if not same:
        row_bytes += stack_b.shape[0] * stack_b.shape[2] * stack_b.dtype.itemsize
    stack_a = _with_large_word_chunks(stack_a, -(-_MIN_TASK_BYTES // row_bytes)).rechunk({2: -1})
    stacks = [stack_a]
    if not same:
        stacks.append(stack_b.rechunk({1: stack_a.chunks[1], 2: -1}))
    chunks = list(zip(*[_layer_blocks_per_chunk(stack) for stack in stacks], strict=True))
    first_words = [_layer_blocks_per_chunk(stack[:, :_SHIFT_WORDS])[0] for stack in stacks]
    shifts = [delayed(_column_shift)(blocks, compute_dtype) for blocks in first_words]
    scheduler = dask.base.get_scheduler(collections=shifts)
    xp = array_module(stack_a._meta)
    # No more chains than products (each holds a scratch, and on a cluster its own totals).
    chains = _concurrent_tasks(scheduler, on_gpu=xp is not np)
    chains = max(1, min(chains, stack_a.shape[1] // _PRODUCT_WORDS))
    shared = _SharedTotals(layout.size) if scheduler is dask.threaded.get and xp is np else None
    states = []
    for share in _equal_shares(stack_a.chunks[1], chains):
        state = None
        for i, (chunk, words) in enumerate(share):
            last = i == len(share) - 1
            state = delayed(_add_words)(state, chunks[chunk], words, shifts, layout, last, shared)
        states.append(state)
    while len(states) > 1:
        pairs = [states[i : i + 2] for i in range(0, len(states), 2)]
        states = [delayed(_add_into)(*pair) if len(pair) == 2 else pair[0] for pair in pairs]
    return _compute(delayed(_summarize)(states[0], layout, summary), scheduler, chains)


def _layer_blocks_per_chunk(stack: da.Array) -> list[list[Any]]:
    """For each word chunk of a ``(layer, word, dim)`` array, its blocks of layers, in order.

    A block whose graph holds everything needed to read it (a store's slice, an array's values)
    is read by the task that uses it. One that depends on data already on a cluster (scattered
    or persisted) stays a Dask block, which Dask fetches before the task runs.
    """
    blocks = stack.to_delayed()
    graph = dict(blocks.flat[0].__dask_graph__())
    readers = np.vectorize(lambda block: _reader_or_block(graph, block), otypes=[object])(blocks)
    return [list(readers[:, word, 0]) for word in range(readers.shape[1])]


def _reader_or_block(graph: dict, block: Delayed) -> Any:
    """A ``_BlockReader`` for ``block`` unless its graph refers to keys it does not define."""
    needed = cull(graph, [block.key])[0]
    held_elsewhere = {key for node in needed.values() for key in node.dependencies} - needed.keys()
    return block if held_elsewhere else _BlockReader(needed, block.key)


class _BlockReader:
    """One block of a Dask array, read by the task that needs it: the part of the array's graph
    that block depends on, run synchronously."""

    def __init__(self, needed: dict, key: Any) -> None:
        self.graph, self.key = needed, key

    def read(self) -> Any:
        return get_sync(self.graph, self.key)


def _read(block: Any) -> Any:
    """A block's values: read now if it is a ``_BlockReader``, else already computed by Dask."""
    return block.read() if isinstance(block, _BlockReader) else block


def _equal_shares(chunk_words: tuple[int, ...], shares: int) -> list[list[tuple[int, slice]]]:
    """Cut the words into ``shares`` equal contiguous runs: each a list of ``(chunk, words in
    the chunk)``, so that chains of tasks finish together whatever the chunk sizes."""
    bounds = np.cumsum((0, *chunk_words)).tolist()
    result = []
    for share in range(shares):
        start, stop = share * bounds[-1] // shares, (share + 1) * bounds[-1] // shares
        result.append(
            [
                (chunk, slice(max(start, first) - first, min(stop, last) - first))
                for chunk, (first, last) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
                if max(start, first) < min(stop, last)
            ]
        )
    return result


def _concurrent_tasks(scheduler: Any, on_gpu: bool) -> int:
    """How many tasks ``scheduler`` should run at once (a distributed client's threads in all)."""
    client = distributed_client(scheduler)
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    if scheduler is dask.threaded.get and on_gpu:
        return _GPU_CHAINS
    if scheduler in (dask.threaded.get, dask.multiprocessing.get):
        return dask.config.get("num_workers", None) or CPU_COUNT
    return 1


def _compute(result: Delayed, scheduler: Any, tasks: int) -> Any:
    """Compute ``result``; the local threaded scheduler gets one thread per chain (so only those
    threads ever touch a GPU), and they share this process's BLAS threads."""
    if scheduler is not dask.threaded.get:
        return result.compute(scheduler=scheduler)
    with threadpool_limits(limits=max(1, CPU_COUNT // tasks)):
        return result.compute(scheduler=scheduler, num_workers=tasks)


def _column_shift(blocks: list[Any], compute_dtype: np.dtype) -> Any:
    """Column means ``(layer, dim)`` of a chunk over its finite rows (0 where a column has none)."""
    means = []
    for block in blocks:
        block = _read(block)
        xp = array_module(block)
        finite = xp.isfinite(block)
        sums = xp.where(finite, block, 0).sum(axis=1, dtype=np.float64)
        means.append(sums / xp.maximum(finite.sum(axis=1), 1))
    return xp.concatenate(means).astype(compute_dtype)


def _copy_shifted_rows(blocks: list[Any], shift: Any, words: slice, out: Any) -> None:
    """Rows ``words`` of a chunk's layer blocks, shifted, into the first rows of ``out``, a
    ``(words, columns)`` buffer whose first ``layers * dim`` columns hold the layers side by side;
    blocks still to be read are read one at a time. Each layer goes into its own column slice (a
    view in numpy and cupy alike, whatever columns follow)."""
    rows = out[: words.stop - words.start]
    dim = shift.shape[1]
    layer = 0
    for block in blocks:
        block = _read(block)
        for values in block:  # one layer's (word, dim) values
            columns = slice(layer * dim, (layer + 1) * dim)
            array_module(block).subtract(values[words], shift[layer], out=rows[:, columns])
            layer += 1


def _finite_rows(rows: Any, name: str) -> Any:
    """Which rows hold no NaN; an error if any value is infinite."""
    xp = array_module(rows)
    finite = xp.isfinite(rows.sum(axis=1))  # a NaN or inf makes the sum non-finite
    if not bool(finite.all()):
        suspects = xp.flatnonzero(~finite)  # or finite values whose sum overflowed
        finite[suspects] = xp.isfinite(rows[suspects]).all(axis=1)
        if bool(xp.isinf(rows[suspects]).any()):
            raise WordspaceError(
                f"{name} contains infinite values; replace them with NaN to leave those words out"
            )
    return finite


def _add_words(
    chain: "_Chain | None",
    blocks: list[list[Any]],
    words: slice,
    shifts: list[Any],
    layout: _Layout,
    last: bool,
    shared: _SharedTotals | None = None,
) -> "_Chain":
    """Add ``words`` of a chunk to the chain (a new chain if None: adding into the ``shared``
    totals if given, else into totals of its own).

    The words waiting in the chain's row buffers are added into its float64 totals first if
    these words would not fit beside them. Then these words are shifted into the buffers and
    added when the buffers are full or the chain ends; more words than a product holds are read
    once and added in equal products. So only the rows of small chunks wait for the next task
    (and travel with a chain that moves to another worker).

    ``blocks`` holds the chunk's layer blocks of A (and of B unless A is B). The chain has no
    other consumer, so it is updated in place.
    """
    count = words.stop - words.start
    xp = array_module(shifts[0])
    if chain is None:
        chain = shared.chain() if shared else _Chain(xp.zeros(layout.size, dtype=np.float64))
    buffers = chain.row_buffers(layout.row_widths, xp, layout.compute_dtype)
    if chain.filled + count > _PRODUCT_WORDS:
        _add_waiting_rows(chain, buffers, layout)
    products = -(-count // _PRODUCT_WORDS)
    if products > 1:
        blocks = [[_read(block) for block in input_blocks] for input_blocks in blocks]
    for part in range(products):
        start = words.start + part * count // products
        stop = words.start + (part + 1) * count // products
        for input_blocks, shift, buffer in zip(blocks, shifts, buffers, strict=True):
            _copy_shifted_rows(input_blocks, shift, slice(start, stop), buffer[chain.filled :])
        chain.filled += stop - start
        if products > 1 or last or chain.filled == _PRODUCT_WORDS:
            _add_waiting_rows(chain, buffers, layout)
    return chain


def _add_waiting_rows(chain: "_Chain", buffers: list[Any], layout: _Layout) -> None:
    """Add the words waiting in the chain's row ``buffers`` into its totals, and empty them."""
    if chain.filled:
        rows = [buffer[: chain.filled] for buffer in buffers]
        xp = array_module(chain.total)
        _add_rows(layout.views(chain.total), chain.scratch(xp, layout.compute_dtype), rows, layout)
        chain.filled = 0


def _add_rows(sums: dict[str, Any], scratch: "_Scratch", rows: list[Any], layout: _Layout) -> None:
    """Add the statistics of stacked, shifted rows ``(words, layers * dim + norm columns)`` of A
    (and of B) into ``sums``, leaving out words with a NaN in either."""
    xp = scratch.xp
    (la, _), (lb, _) = layout.shape_a, layout.shape_b
    widths = layout.data_widths
    data = [r[:, :width] for r, width in zip(rows, widths, strict=True)]
    # Column sums first, one gemv each: a NaN or inf anywhere makes them non-finite, so rows
    # are checked one by one only in blocks that hold such values (or sums that overflow).
    part_words = len(rows[0])
    ones = scratch.array("ones", (part_words,))
    ones.fill(1)
    column_sums = [ones @ d for d in data]
    n = part_words
    if not all(bool(xp.isfinite(c).all()) for c in column_sums):
        valid = _finite_rows(data[0], "A")
        if not layout.same:
            valid &= _finite_rows(data[1], "B")
        rows = [r[valid] for r in rows]
        data = [r[:, :width] for r, width in zip(rows, widths, strict=True)]
        column_sums = [d.sum(axis=0, dtype=np.float64) for d in data]
        n = int(valid.sum())
    scratch.add(sums["n"], n)
    scratch.add(sums["dropped"], part_words - n)
    scratch.add(sums["sum_a"], column_sums[0])
    if layout.debiased:
        norms = _row_norms(data[0], la)
        if not layout.same:
            norms = xp.concatenate([norms, _row_norms(data[1], lb)], axis=1)
        for r, width in zip(rows, widths, strict=True):
            r[:, width:] = norms
        norms64 = norms.astype(np.float64)
        scratch.add(sums["norms_norms"], norms64.T @ norms64)
    if layout.same:
        scratch.add_cross(sums["products"], rows[0], rows[0], layout.panel_columns, upper=True)
    else:
        scratch.add(sums["sum_b"], column_sums[1])
        scratch.add(sums["gram_a"], scratch.layer_grams(data[0], la))
        scratch.add(sums["gram_b"], scratch.layer_grams(data[1], lb))
        scratch.add_cross(sums["products"], rows[0], rows[1], layout.panel_columns, upper=False)


class _Chain:
    """A chain's float64 totals, the words waiting in its row buffers, and the scratch its tasks
    share.

    Its tasks run one after another, so the scratch (the row buffers of a block of words, a
    product panel: ~400 MB for two 13 x 768 models) is allocated once per chain rather than once
    per task. Fresh memory is dear: in a 13 x 13 grid pass over 46,906 words, a quarter of the
    samples were the kernel zeroing newly faulted pages. The scratch is not pickled: a chain
    moved to another worker takes its totals and only the rows still waiting for a product.
    """

    def __init__(
        self,
        total: Any,
        waiting: list[Any] | None = None,
        lock: AbstractContextManager | None = None,
    ) -> None:
        self.total = total
        self.lock = lock or nullcontext()  # taken to add into ``total``
        self.filled = 0  # words waiting in the row buffers
        self._waiting = waiting or []  # those words' rows, per input, after a move
        self._buffers: list[Any] = []
        self._scratch: _Scratch | None = None

    def scratch(self, xp: Any, dtype: np.dtype) -> "_Scratch":
        if self._scratch is None:
            self._scratch = _Scratch(xp, dtype, self.lock)
        return self._scratch

    def row_buffers(self, widths: list[int], xp: Any, dtype: np.dtype) -> list[Any]:
        """One ``(_PRODUCT_WORDS, width)`` buffer per input, holding the waiting words."""
        if not self._buffers:
            scratch = self.scratch(xp, dtype)
            self._buffers = [
                scratch.array(f"rows{i}", (_PRODUCT_WORDS, width)) for i, width in enumerate(widths)
            ]
            if self._waiting:
                self.filled = len(self._waiting[0])
                for buffer, rows in zip(self._buffers, self._waiting, strict=True):
                    buffer[: self.filled] = rows
                self._waiting = []
        return self._buffers

    def __reduce__(self) -> tuple[Any, ...]:
        waiting = self._waiting or [
            buffer[: self.filled] for buffer in self._buffers if self.filled
        ]
        return _Chain, (self.total, waiting)


@sizeof.register(_Chain)
def _sizeof_chain(chain: _Chain) -> int:
    scratch = chain._scratch.arrays.values() if chain._scratch else ()
    return int(chain.total.nbytes + sum(array.nbytes for array in (*scratch, *chain._waiting)))


class _Scratch:
    """Arrays kept across a chunk's blocks of words, so no large array is allocated per block.

    (Fresh large arrays cost page faults that, on a busy machine, rival the products.)
    """

    def __init__(self, xp: Any, dtype: np.dtype, lock: AbstractContextManager) -> None:
        self.xp, self.dtype, self.lock, self.arrays = xp, dtype, lock, {}

    def add(self, target: Any, value: Any) -> None:
        """``target += value`` in place, holding the lock of the totals ``target`` is part of."""
        with self.lock:
            target += value

    def array(self, key: str, shape: tuple[int, ...]) -> Any:
        if (key, shape) not in self.arrays:
            self.arrays[key, shape] = self.xp.empty(shape, dtype=self.dtype)
        return self.arrays[key, shape]

    def add_cross(self, total: Any, x: Any, y: Any, panel: int, upper: bool) -> None:
        """``total += xᵀy``, one ``gemm`` per ``panel`` columns of ``x`` into a small float32
        scratch. With ``upper`` (``x`` is ``y``) only the blocks on and above the diagonal:
        the diagonal block as ``leftᵀleft`` (a ``syrk``, half the flops), then one ``gemm``."""
        buffer = self.array("panel", (panel * y.shape[1],))
        for start in range(0, x.shape[1], panel):
            stop = min(start + panel, x.shape[1])
            left = x[:, start:stop]
            if upper:
                self._add_product(total[start:stop, start:stop], left, left, buffer)
            first = stop if upper else 0
            if first < y.shape[1]:
                self._add_product(total[start:stop, first:], left, y[:, first:], buffer)

    def _add_product(self, target: Any, left: Any, right: Any, buffer: Any) -> None:
        """``target += leftᵀright``, the product computed in ``buffer`` (numpy takes
        ``leftᵀleft`` of one array as a ``syrk``)."""
        out = buffer[: target.size].reshape(target.shape)
        self.add(target, self.xp.matmul(left.T, right, out=out))

    def layer_grams(self, rows: Any, layers: int) -> Any:
        """``XᵢᵀXᵢ`` of each layer's columns of ``rows`` (one syrk each), ``(layers, dim, dim)``."""
        dim = rows.shape[1] // layers
        out = self.array("grams", (layers, dim, dim))
        for i in range(layers):
            x = rows[:, i * dim : (i + 1) * dim]
            self.xp.matmul(x.T, x, out=out[i])
        return out


def _add_into(chain: _Chain, other: _Chain) -> _Chain:
    """Both chains' totals in ``chain``, added in place (each chain has exactly one consumer),
    unless they already add into the same totals."""
    if other.total is not chain.total:
        chain.total += other.total
    return chain


def _row_norms(rows: Any, layers: int) -> Any:
    """Squared norm of each row's slice per layer, ``(words, layers)``, with no temporary copy."""
    per_layer = rows.reshape(rows.shape[0], layers, rows.shape[1] // layers)
    return array_module(rows).einsum("nld,nld->nl", per_layer, per_layer)


def _summarize(
    chain: _Chain, layout: _Layout, summary: Callable[[GramStatistics], SummaryT] | None
) -> GramStatistics | SummaryT:
    """The centred statistics of the chains' summed totals, or ``summary`` of them."""
    stats = _finish(to_numpy(chain.total), layout)
    return stats if summary is None else summary(stats)


def _finish(total: np.ndarray, layout: _Layout) -> GramStatistics:
    """Centre the accumulated (shifted) sums and derive the row-norm scratch."""
    s = layout.views(total)
    n, dropped = int(round(s["n"][0])), int(round(s["dropped"][0]))
    if n < 3:
        raise WordspaceError(
            f"only {n} words are valid (non-NaN) in both A and B; at least 3 are needed"
        )
    (la, da_), (lb, db) = layout.shape_a, layout.shape_b
    products, columns_a = s["products"], la * da_
    mean_a = s["sum_a"] / n
    if layout.same:
        _mirror_upper_panels(products, layout.panel_columns)
        columns_b = columns_a
        centred = _subtract_outer(products[:columns_a, :columns_b], s["sum_a"], mean_a)
        cross = centred.reshape(la, da_, la, da_)
        gram_a = np.stack([cross[i, :, i, :] for i in range(la)])
        gram_b, mean_b = gram_a, mean_a
    else:
        mean_b, columns_b = s["sum_b"] / n, lb * db
        centred = _subtract_outer(products[:columns_a, :columns_b], s["sum_a"], mean_b)
        cross = centred.reshape(la, da_, lb, db)
        gram_a, gram_b = s["gram_a"], s["gram_b"]
        for grams, sums, means in ((gram_a, s["sum_a"], mean_a), (gram_b, s["sum_b"], mean_b)):
            layers = len(grams)
            per_layer = zip(grams, sums.reshape(layers, -1), means.reshape(layers, -1), strict=True)
            for layer_grams, layer_sums, layer_means in per_layer:
                _subtract_outer(layer_grams, layer_sums, layer_means)
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
        # The products of the rows with the norm columns: Σ x̃ ρ for A's and B's columns.
        a_norms = products[:columns_a, columns_b:]
        b_norms = None if layout.same else products[columns_a:, :columns_b].T
        means = (mean_a.reshape(la, da_), mean_b.reshape(lb, db))
        _add_row_norm_products(stats, s["norms_norms"], a_norms, b_norms, *means)
    return stats


def _mirror_upper_panels(matrix: np.ndarray, panel: int) -> None:
    """Fill the blocks below the diagonal panels from those above (all the pass computes)."""
    for start in range(0, len(matrix), panel):
        stop = start + panel
        matrix[stop:, start:stop] = matrix[start:stop, stop:].T


def _subtract_outer(target: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``target -= outer(left, right)`` in place, a band of rows at a time (no full-size
    temporary: the stacked Gram matrix of two 13 x 768 models is 800 MB), the bands on all
    cores: this runs after the chains, when the cores are otherwise idle."""
    band = max(1, (1 << 23) // max(1, target.shape[1]))

    def subtract(start: int) -> None:
        target[start : start + band] -= np.outer(left[start : start + band], right)

    _on_all_cores(subtract, range(0, target.shape[0], band))
    return target


def _on_all_cores(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``map`` over one thread per core (numpy and BLAS release the GIL)."""
    with ThreadPoolExecutor(CPU_COUNT) as pool:
        return list(pool.map(fn, items))


def _add_row_norm_products(
    stats: GramStatistics,
    rho: np.ndarray,
    a_norms: np.ndarray,
    b_norms: np.ndarray | None,
    mean_a: np.ndarray,
    mean_b: np.ndarray,
) -> None:
    """Set ``q[i, j] = Σ ‖xᵢ - μᵢ‖² ‖yⱼ - νⱼ‖²`` from sums of the shifted rows ``x̃``: ``rho``
    holds Σρᵢρⱼ, ``a_norms`` and ``b_norms`` Σx̃ρⱼ for A's and B's columns.

    With ρᵢ = ‖x̃ᵢ‖² and ‖x̃ᵢ - μᵢ‖² = ρᵢ - 2 x̃ᵢ·μᵢ + ‖μᵢ‖², expanding the product and summing
    over words needs only Σρᵢρⱼ, Σx̃ᵢρⱼ, Σρᵢ = tr(x̃ᵢᵀx̃ᵢ) and μᵢᵀ(x̃ᵢᵀx̃ⱼ)μⱼ.
    """
    n = stats.n_words
    la, lb = stats.n_layers
    means = [*mean_a] if stats.same else [*mean_a, *mean_b]
    grams = [*stats.gram_a] if stats.same else [*stats.gram_a, *stats.gram_b]
    sq_means = np.array([m @ m for m in means])
    # Σρᵢ over the shifted data = centred trace + n‖μᵢ‖².
    sums_of_norms = np.array([np.trace(g) for g in grams]) + n * sq_means
    # mean_dot[i, j] = μᵢ · Σ x̃ᵢ ρⱼ
    mean_dot = np.einsum("lk,lkj->lj", mean_a, a_norms.reshape(la, -1, rho.shape[1]))
    if b_norms is not None:
        b_dot = np.einsum("lk,lkj->lj", mean_b, b_norms.reshape(lb, -1, rho.shape[1]))
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
