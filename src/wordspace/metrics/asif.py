"""ASIF zero-shot retrieval (Norelli et al. 2023), streamed block by block on Dask.

Semantics: rows are L2-normalised (not centred) and compared by cosine with the anchors; each
relative representation keeps its ``k`` largest cosines (ties to the lower anchor) and zeroes
the rest; kept values below 0 become 0 and the others are raised to the power ``p`` (the official
code raises negatives too, which flips their sign for even ``p``: we do not); each relative
representation is then L2-normalised, and a query's score for a candidate is the dot product of
their relative representations; the best candidates come first, ties to the lower index.

Cost: one pass of (row block x anchor block) gemms with a running top-k at the largest ``k``
per side and layer. The queries' relative representations of every layer are kept (queries x
k); each candidate block's are computed once, scored against every query layer and (k, p) by a
fused sparse kernel, and dropped, so a layer grid costs one relative pass per layer plus a
sparse product per pair. Every block is a Dask task; memory is O(queries x k + chunk x k) beside
the caller's arrays, which are split into views, never copied.
"""

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.metrics._backend import array_module, to_numpy
from wordspace.metrics._blocks import in_memory_blocks
from wordspace.metrics.topk import (
    TopState,
    anchor_major,
    merge_top,
    ranked_items,
    sparse_matrix_scores_top,
    sparse_scores_top,
)

STUDY_GRID: tuple[tuple[int, int], ...] = (
    (100, 1), (100, 2), (100, 3), (100, 4), (150, 4), (200, 4),
    (250, 4), (250, 5), (250, 6), (250, 7), (250, 8), (250, 9),
)  # fmt: skip
"""The (k, p) cells the study searched (Bolaños 2024, section 3.3.3)."""

DEFAULT_CHUNK = 2048
ANCHOR_BLOCK_ROWS = 4
"""Anchor blocks hold this many row chunks: fewer, larger gemms and top-k merges."""
CANDIDATE_LOOKAHEAD = 4
"""Candidate blocks whose relative representations may be ahead of the score chain."""


def _data(x: Any) -> Any:
    return x.data if isinstance(x, xr.DataArray) else x


def _as_dask(x: Any, name: str, rows: int) -> da.Array:
    x = _data(x)
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise WordspaceError(f"{name}: expected a (rows, dim) array, got shape {x.shape}")
    if not isinstance(x, da.Array):
        x = in_memory_blocks(x, rows, axis=0)
    if not np.issubdtype(x.dtype, np.floating):
        raise WordspaceError(f"{name}: expected floating-point values, got {x.dtype}")
    return x


def _unit_rows(x: Any, dtype: Any) -> Any:
    xp = array_module(x)
    x = x.astype(dtype, copy=False)
    norm = xp.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / xp.where(norm > 0, norm, 1)


def _blocks(x: da.Array, chunk: int) -> tuple[list[Any], list[int]]:
    x = x.rechunk((chunk, -1))
    offsets = np.concatenate([[0], np.cumsum(x.chunks[0])[:-1]]).tolist()
    return list(x.to_delayed().ravel()), offsets


def _relative_step(
    state: TopState | None, rows: Any, anchors: Any, offset: int, k: int, dtype: Any
) -> TopState:
    # normalised here rather than once per block: no normalised copy of the inputs stays alive
    cosines = _unit_rows(rows, dtype) @ _unit_rows(anchors, dtype).T
    values, items = merge_top(state, cosines, k, offset=offset)
    return values, items.astype(np.int32, copy=False)


def _relative_state(rows: Any, anchors: list[Any], offsets: list[int], k: int, dtype: Any) -> Any:
    """The delayed top-k cosines of a row block to the anchors, in anchor order."""
    step = dask.delayed(_relative_step, pure=True)
    state = None
    for anchor_block, offset in zip(anchors, offsets, strict=True):
        state = step(state, rows, anchor_block, offset, k, dtype)
    return state


def _after(value: Any, *earlier: Any) -> Any:
    """``value``, once the ``earlier`` tasks are done: orders tasks without passing data."""
    return value


def _weights(state: TopState, cells: Sequence[tuple[int, float]]) -> list[TopState]:
    """Per (k, p) cell, the anchor columns and weights of the relative representations, from a
    state at the largest k."""
    xp = array_module(state[0])
    values, cols = state
    by_k = {k: merge_top(None, values, k, items=cols) for k, _ in cells if k < values.shape[1]}
    out = []
    for k, p in cells:
        values, cols = by_k.get(k, state)
        weights = xp.maximum(values, 0) ** p
        norm = xp.sqrt((weights * weights).sum(axis=1, keepdims=True))
        out.append((cols, weights / xp.where(norm > 0, norm, 1)))
    return out


def _candidate_side(state: TopState, cells: Sequence[tuple[int, float]], n_anchors: int) -> list:
    """Per cell, a candidate block's relative representations as the score step takes them."""
    if array_module(state[0]) is not np:
        return _weights(state, cells)
    return [anchor_major(cols, weights, n_anchors) for cols, weights in _weights(state, cells)]


def _score_step(
    states: list[list[TopState]] | None,
    q_sides: list[list[TopState]],
    c_side: list[Any],
    offset: int,
    top: int,
    n_anchors: int,
) -> list[list[TopState]]:
    """Fold one candidate block into the running top of every query block and cell."""
    merged = []
    for i, q_side in enumerate(q_sides):
        cell_states = []
        for j, ((q_cols, q_weights), prepared) in enumerate(zip(q_side, c_side, strict=True)):
            if array_module(q_weights) is np:
                block = sparse_scores_top(q_cols, q_weights, prepared, top)
            else:
                import cupyx.scipy.sparse

                block = sparse_matrix_scores_top(
                    q_cols, q_weights, *prepared, n_anchors, top, cupyx.scipy.sparse
                )
            state = None if states is None else states[i][j]
            cell_states.append(merge_top(state, block[0], top, items=block[1] + offset))
        merged.append(cell_states)
    return merged


def _ranked(states: list[list[TopState]], n_layers: int) -> np.ndarray:
    """(query layers, cells, queries, top) from the final states, listed by (layer, block)."""
    per_block = [
        np.stack([to_numpy(ranked_items(state)) for state in cell_states]) for cell_states in states
    ]
    n_blocks = len(per_block) // n_layers
    return np.stack(
        [
            np.concatenate(per_block[i * n_blocks : (i + 1) * n_blocks], axis=1)
            for i in range(n_layers)
        ]
    )


def _candidate_pass(
    q_sides: list[Any],
    candidate_blocks: list[Any],
    c_offsets: list[int],
    anchors: tuple[list[Any], list[int]],
    cells: Sequence[tuple[int, float]],
    top: int,
    k: int,
    dtype: Any,
    n_anchors: int,
    n_layers: int,
) -> Any:
    """Delayed (query layers, cells, queries, top) candidate positions for one candidate layer.

    Its candidate blocks go through one chain: each block's relative representations are
    scored against every query block of every query layer (``q_sides``, by layer then block),
    then dropped. A block's gemms wait until the chain is ``CANDIDATE_LOOKAHEAD`` blocks behind,
    so the candidate side is never whole in memory, whatever order the scheduler picks.
    """
    side = dask.delayed(_candidate_side, pure=True)
    step = dask.delayed(_score_step, pure=True)
    states, chain = None, []
    for i, (block, offset) in enumerate(zip(candidate_blocks, c_offsets, strict=True)):
        if i >= CANDIDATE_LOOKAHEAD:
            block = dask.delayed(_after, pure=True)(block, chain[i - CANDIDATE_LOOKAHEAD])
        c_state = _relative_state(block, *anchors, k, dtype)
        states = step(states, q_sides, side(c_state, cells, n_anchors), offset, top, n_anchors)
        chain.append(states)
    return dask.delayed(_ranked, pure=True)(states, n_layers)


def _valid_rows(arrays: list[da.Array]) -> tuple[Any, Any]:
    """Which rows hold no NaN in any of ``arrays``, and whether any of them holds an infinity."""
    valid = ~da.isnan(arrays[0]).any(axis=1)
    infinite = da.isinf(arrays[0]).any()
    for x in arrays[1:]:
        valid &= ~da.isnan(x).any(axis=1)
        infinite |= da.isinf(x).any()
    return valid, infinite


def _check_cells(ks: Sequence[int], ps: Sequence[float], only: Any) -> list[tuple[int, float]]:
    ks, ps = [int(k) for k in ks], [float(p) for p in ps]
    if not ks or not ps:
        raise WordspaceError("ks/ps: give at least one k and one p")
    if len(set(ks)) != len(ks) or len(set(ps)) != len(ps):
        raise WordspaceError("ks/ps: values must be distinct")
    if min(ks) < 1:
        raise WordspaceError(f"k: must be at least 1, got {min(ks)}")
    if min(ps) < 1:
        raise WordspaceError(
            f"p: must be at least 1 (ASIF raises similarities to p >= 1), got {min(ps)}"
        )
    if only is None:
        return [(k, p) for k in ks for p in ps]
    cells = [(int(k), float(p)) for k, p in only]
    missing = [cell for cell in cells if cell[0] not in ks or cell[1] not in ps]
    if missing:
        raise WordspaceError(f"only: cells {missing} are not in ks x ps; add their k and p")
    return cells


def _retrieve_grid(
    x_layers: list[tuple[Any, Any]],
    y_layers: list[tuple[Any, Any]],
    cells: list[tuple[int, float]],
    top: int,
    chunk: int,
) -> tuple[np.ndarray, dict[str, int]]:
    """Retrieved candidate indices, shape (len(x_layers), len(y_layers), cells, queries, top).

    ``x_layers`` holds (anchors_x, queries_x) per layer of the query model, ``y_layers``
    (anchors_y, candidates_y) per layer of the candidate model. A row with NaN in any layer is
    left out (an anchor when NaN on either side); left-out queries get -1.
    """
    if top < 1:
        raise WordspaceError(f"top: must be at least 1, got {top}")
    if chunk < 1:
        raise WordspaceError(f"chunk: must be at least 1, got {chunk}")
    anchor_chunk = chunk * ANCHOR_BLOCK_ROWS
    xs = [
        (_as_dask(a, "anchors_x", anchor_chunk), _as_dask(q, "queries_x", chunk))
        for a, q in x_layers
    ]
    ys = [
        (_as_dask(a, "anchors_y", anchor_chunk), _as_dask(c, "candidates_y", chunk))
        for a, c in y_layers
    ]
    n_anchors, n_queries, n_candidates = xs[0][0].shape[0], xs[0][1].shape[0], ys[0][1].shape[0]
    for a, q in xs:
        if a.shape[1] != q.shape[1]:
            raise WordspaceError(
                f"queries_x: dimension {q.shape[1]} differs from anchors_x's {a.shape[1]}; "
                "queries and anchors must come from the same model layer"
            )
    for a, c in ys:
        if a.shape[1] != c.shape[1]:
            raise WordspaceError(
                f"candidates_y: dimension {c.shape[1]} differs from anchors_y's {a.shape[1]}; "
                "candidates and anchors must come from the same model layer"
            )
    sizes = {
        "anchors_x": {a.shape[0] for a, _ in xs},
        "anchors_y": {a.shape[0] for a, _ in ys},
        "queries_x": {q.shape[0] for _, q in xs},
        "candidates_y": {c.shape[0] for _, c in ys},
    }
    if sizes["anchors_x"] != {n_anchors} or sizes["anchors_y"] != {n_anchors}:
        raise WordspaceError(
            f"anchors_y: {sorted(sizes['anchors_y'])} rows but anchors_x has "
            f"{sorted(sizes['anchors_x'])}; row i of both must be the same word token"
        )
    if n_queries == 0:
        raise WordspaceError("queries_x: the query set is empty; give at least one query row")

    inputs = {
        "anchors_x or anchors_y": [a for a, _ in xs] + [a for a, _ in ys],
        "queries_x": [q for _, q in xs],
        "candidates_y": [c for _, c in ys],
    }
    checked = dask.compute(*(_valid_rows(arrays) for arrays in inputs.values()))
    for name, (_, infinite) in zip(inputs, checked, strict=True):
        if bool(to_numpy(infinite)):
            raise WordspaceError(
                f"{name} contains infinite values; replace them with NaN to leave those words out"
            )
    anchor_ok, query_ok, candidate_ok = (np.asarray(to_numpy(valid)) for valid, _ in checked)
    counts = {
        "n_anchors": int(anchor_ok.sum()),
        "n_queries": int(query_ok.sum()),
        "n_candidates": int(candidate_ok.sum()),
        "n_nan_anchors": int(n_anchors - anchor_ok.sum()),
        "n_nan_queries": int(n_queries - query_ok.sum()),
        "n_nan_candidates": int(n_candidates - candidate_ok.sum()),
    }
    k_max = max(k for k, _ in cells)
    if k_max > counts["n_anchors"]:
        raise WordspaceError(
            f"k: {k_max} exceeds the {counts['n_anchors']} usable anchors "
            f"({counts['n_nan_anchors']} with NaN left out); use a smaller k or more anchors"
        )
    if counts["n_queries"] == 0:
        raise WordspaceError("queries_x: every query row contains NaN; nothing to retrieve")
    if top > counts["n_candidates"]:
        raise WordspaceError(
            f"top: {top} exceeds the {counts['n_candidates']} usable candidates; lower top"
        )

    def rows(x: da.Array, ok: np.ndarray) -> da.Array:
        return x if ok.all() else x[ok]

    dtype = np.result_type(np.float32, *(x.dtype for pair in xs + ys for x in pair))
    q_sides = []
    for anchors, queries in xs:
        anchor_blocks, offsets = _blocks(rows(anchors, anchor_ok), anchor_chunk)
        query_blocks, _ = _blocks(rows(queries, query_ok), chunk)
        for block in query_blocks:
            state = _relative_state(block, anchor_blocks, offsets, k_max, dtype)
            q_sides.append(dask.delayed(_weights, pure=True)(state, cells))
    passes = []
    for anchors, candidates in ys:
        anchor_side = _blocks(rows(anchors, anchor_ok), anchor_chunk)
        candidate_blocks, c_offsets = _blocks(rows(candidates, candidate_ok), chunk)
        passes.append(
            _candidate_pass(q_sides, candidate_blocks, c_offsets, anchor_side, cells, top, k_max,
                            dtype, counts["n_anchors"], len(xs))
        )  # fmt: skip
    (positions,) = dask.compute(passes)  # (candidate layer, query layer, cell, query, rank)
    positions = np.asarray(positions).swapaxes(0, 1)
    candidate_index = np.flatnonzero(candidate_ok)
    retrieved = np.full((len(xs), len(ys), len(cells), n_queries, top), -1, dtype=np.int64)
    retrieved[:, :, :, query_ok] = candidate_index[positions]
    return retrieved, counts


def _cell_dataset(
    retrieved: np.ndarray,
    cells: list[tuple[int, float]],
    ks: Sequence[int],
    ps: Sequence[float],
    counts: dict[str, int],
    layers_a: Any,
    layers_b: Any,
) -> xr.Dataset:
    ks, ps = list(ks), list(ps)
    shape = retrieved.shape
    full = np.full((shape[0], shape[1], len(ks), len(ps), shape[3], shape[4]), -1, np.int64)
    for i, (k, p) in enumerate(cells):
        full[:, :, ks.index(k), ps.index(p)] = retrieved[:, :, i]
    return xr.Dataset(
        {"retrieved": (("layer_a", "layer_b", "k", "p", "query", "rank"), full)},
        coords={
            "layer_a": layers_a,
            "layer_b": layers_b,
            "k": ks,
            "p": ps,
            "query": np.arange(shape[3]),
            "rank": np.arange(shape[4]),
        },
        attrs=dict(counts),
    )


def asif_sweep(
    anchors_x: Any,
    anchors_y: Any,
    queries_x: Any,
    candidates_y: Any,
    *,
    ks: Sequence[int] = (100, 150, 200, 250),
    ps: Sequence[float] = tuple(range(1, 10)),
    only: Sequence[tuple[int, float]] | None = None,
    top: int = 5,
    chunk: int = DEFAULT_CHUNK,
) -> xr.Dataset:
    """ASIF retrieval for every (k, p) of ``ks`` x ``ps`` (or the ``only`` cells) in one pass.

    Returns a Dataset with ``retrieved`` (k, p, query, rank): indices into ``candidates_y``, best
    first; -1 for queries with NaN and for cells left out by ``only``. Attributes count the usable
    and the NaN rows. Inputs are (rows, dim) numpy, cupy or dask arrays or DataArrays.
    """
    cells = _check_cells(ks, ps, only)
    retrieved, counts = _retrieve_grid(
        [(anchors_x, queries_x)], [(anchors_y, candidates_y)], cells, top, chunk
    )
    ds = _cell_dataset(retrieved, cells, ks, ps, counts, [0], [0])
    return ds.isel(layer_a=0, layer_b=0, drop=True)


def asif_retrieve(
    anchors_x: Any,
    anchors_y: Any,
    queries_x: Any,
    candidates_y: Any,
    *,
    k: int = 250,
    p: float = 6,
    top: int = 5,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Indices into ``candidates_y`` of the ``top`` best candidates per query, best first.

    ``anchors_x[i]`` and ``anchors_y[i]`` are the same word token in the two spaces. Rows with
    NaN are left out: such a query's row is -1, such a candidate is never retrieved.
    """
    ds = asif_sweep(anchors_x, anchors_y, queries_x, candidates_y, ks=(k,), ps=(p,), top=top,
                    chunk=chunk)  # fmt: skip
    return ds["retrieved"].values[0, 0]


def _layers(x: Any, name: str) -> tuple[da.Array, np.ndarray]:
    """A (layer, word, dim) dask array and its layer labels."""
    labels = None
    if isinstance(x, xr.DataArray):
        if "layer" in x.dims:
            x = x.transpose("layer", ...)
            labels = x["layer"].values if "layer" in x.coords else None
        x = x.data
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if not isinstance(x, da.Array):
        x = in_memory_blocks(x, 1 if x.ndim == 3 else max(len(x), 1), axis=0)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise WordspaceError(f"{name}: expected (layer, word, dim), got shape {x.shape}")
    return x, np.arange(x.shape[0]) if labels is None else labels


def _word_index(index: Any, n_words: int, name: str) -> np.ndarray:
    index = np.asarray(index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise WordspaceError(f"{name}: expected a 1-D array of integer word indices")
    if index.size and (index.min() < 0 or index.max() >= n_words):
        raise WordspaceError(f"{name}: word indices must lie in [0, {n_words})")
    return index


def asif_grid(
    a_layers: Any,
    b_layers: Any,
    *,
    anchors: Any,
    queries: Any,
    candidates: Any,
    ks: Sequence[int] = (250,),
    ps: Sequence[float] = (4,),
    only: Sequence[tuple[int, float]] | None = None,
    top: int = 5,
    chunk: int = DEFAULT_CHUNK,
) -> xr.Dataset:
    """ASIF retrieval for every layer pair: queries in ``a_layers``, candidates in ``b_layers``.

    ``a_layers`` and ``b_layers`` are (layer, word, dim) arrays or DataArrays over the same
    words; ``anchors`` and ``queries`` index words of both, ``candidates`` words of
    ``b_layers``. Each layer's relative representations are computed once and reused for every
    pair. Returns ``retrieved`` (layer_a, layer_b, k, p, query, rank): positions in
    ``candidates``, -1 for left-out queries and cells; a word with NaN in any layer of a model
    is left out of that role.
    """
    a, layers_a = _layers(a_layers, "a_layers")
    b, layers_b = _layers(b_layers, "b_layers")
    if a.shape[1] != b.shape[1]:
        raise WordspaceError(
            f"b_layers: {b.shape[1]} words but a_layers has {a.shape[1]}; both must index the "
            "same word tokens"
        )
    anchors = _word_index(anchors, a.shape[1], "anchors")
    queries = _word_index(queries, a.shape[1], "queries")
    candidates = _word_index(candidates, b.shape[1], "candidates")
    cells = _check_cells(ks, ps, only)
    retrieved, counts = _retrieve_grid(
        [(a[i][anchors], a[i][queries]) for i in range(a.shape[0])],
        [(b[i][anchors], b[i][candidates]) for i in range(b.shape[0])],
        cells,
        top,
        chunk,
    )
    return _cell_dataset(retrieved, cells, ks, ps, counts, layers_a, layers_b)
