"""The study's two ASIF evaluation protocols over layer grids, as pure functions of arrays."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.metrics.asif import DEFAULT_CHUNK, STUDY_GRID, asif_grid


def split_queries(n_words: int, query_fraction: float = 0.15, seed: int = 0):
    """Seeded split of word tokens into sorted (queries, anchors) index arrays."""
    if not 0 < query_fraction < 1:
        raise WordspaceError(f"query_fraction: must lie in (0, 1), got {query_fraction}")
    order = np.random.default_rng(seed).permutation(n_words)
    n_queries = round(query_fraction * n_words)
    return np.sort(order[:n_queries]), np.sort(order[n_queries:])


def _labels(words: Any, n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique labels and an integer code per word token."""
    words = np.asarray(words.values if isinstance(words, xr.DataArray) else words)
    if words.shape != (n_words,):
        raise WordspaceError(f"words: expected {n_words} labels (one per word token)")
    if words.dtype.kind not in "iuUSO":
        raise WordspaceError(f"words: labels must be strings or integers, got {words.dtype}")
    return np.unique(words, return_inverse=True)


def _evaluate(
    grid: xr.Dataset,
    queries: np.ndarray,
    candidates: np.ndarray,
    codes: np.ndarray,
    uniques: np.ndarray,
    exact_token: bool,
) -> xr.Dataset:
    retrieved = grid["retrieved"]
    found = retrieved.values >= 0
    word = np.where(found, codes[candidates[np.maximum(retrieved.values, 0)]], -1)
    valid = found[..., 0]
    cell_done = valid.any(axis=-1)

    def accuracy(hit: np.ndarray, among: np.ndarray) -> np.ndarray:
        total = (hit & among).sum(axis=-1) / np.maximum(among.sum(axis=-1), 1)
        return np.where(cell_done, total, np.nan)

    dims = ("layer_a", "layer_b", "k", "p")
    same = word == codes[queries][:, None]
    out = {
        "top1": (dims, accuracy(same[..., 0], valid)),
        "top5": (dims, accuracy(same[..., :5].any(axis=-1), valid)),
    }
    if exact_token:
        token = retrieved.values == np.arange(len(queries))[:, None]
        out["exact_top1"] = (dims, accuracy(token[..., 0], valid))
        out["exact_top5"] = (dims, accuracy(token[..., :5].any(axis=-1), valid))
    else:
        answerable = np.isin(codes[queries], codes[candidates])
        out["top1_answerable"] = (dims, accuracy(same[..., 0], valid & answerable))
        out["top5_answerable"] = (dims, accuracy(same[..., :5].any(axis=-1), valid & answerable))
    ds = xr.Dataset(out, coords={c: grid[c] for c in dims})
    flat = ds["top1"].fillna(-1).stack(cell=("k", "p"))
    best = flat.argmax("cell")
    ds["best_k"] = flat["k"][best].drop_vars(["cell", "k", "p"])
    ds["best_p"] = flat["p"][best].drop_vars(["cell", "k", "p"])
    best_cells = word.reshape(*word.shape[:2], -1, *word.shape[4:])[
        np.arange(word.shape[0])[:, None], np.arange(word.shape[1]), best.values
    ]
    missing = "" if uniques.dtype.kind in "USO" else -1
    label = np.where(best_cells >= 0, uniques[np.maximum(best_cells, 0)], missing)
    ds["retrieved_words"] = (("layer_a", "layer_b", "query", "rank"), label)
    mean = ds["top1"].mean(("layer_a", "layer_b"))
    overall = mean.fillna(-1).stack(cell=("k", "p")).argmax("cell").item()
    cells = mean.stack(cell=("k", "p"))["cell"].values
    ds = ds.assign_coords(
        query_word=("query", queries), query_text=("query", uniques[codes[queries]])
    )
    ds.attrs = dict(grid.attrs)
    ds.attrs.update(best_k_overall=int(cells[overall][0]), best_p_overall=float(cells[overall][1]))
    if not exact_token:
        ds.attrs["n_unanswerable"] = int((~answerable).sum())
    return ds


def _protocol(a_layers, b_layers, words, paired, ks, ps, only, query_fraction, seed, top, chunk):
    if top < 5:
        raise WordspaceError(f"top: the protocols report top-5 accuracy; use top >= 5, got {top}")
    n_words = a_layers.shape[-2]
    uniques, codes = _labels(words, n_words)
    queries, anchors = split_queries(n_words, query_fraction, seed)
    candidates = queries if paired else anchors
    grid = asif_grid(a_layers, b_layers, anchors=anchors, queries=queries, candidates=candidates,
                     ks=ks, ps=ps, only=only, top=top, chunk=chunk)  # fmt: skip
    ds = _evaluate(grid, queries, candidates, codes, uniques, exact_token=paired)
    ds.attrs.update(protocol="paired" if paired else "study", seed=seed,
                    query_fraction=query_fraction)  # fmt: skip
    return ds


_PROTOCOL_ARGS = """

    ``a_layers`` (query model) and ``b_layers`` (candidate model) are (layer, word, dim) arrays
    or DataArrays (numpy, dask or cupy) over the same word tokens; ``words`` labels each token
    (strings or integers). A seeded ``query_fraction`` of tokens are queries. Returns, per
    (layer_a, layer_b, k, p), ``top1``/``top5`` same-word accuracy over the usable queries,
    ``best_k``/``best_p`` per layer pair (by top-1; overall best in the attributes), the top
    retrieved word labels of every query at its pair's best cell (``retrieved_words``), and the
    counts of usable and NaN rows in the attributes.
"""


def asif_study_protocol(
    a_layers: Any,
    b_layers: Any,
    words: Any,
    *,
    ks: Sequence[int] = (100, 150, 200, 250),
    ps: Sequence[float] = tuple(range(1, 10)),
    only: Sequence[tuple[int, float]] | None = STUDY_GRID,
    query_fraction: float = 0.15,
    seed: int = 0,
    top: int = 5,
    chunk: int = DEFAULT_CHUNK,
) -> xr.Dataset:
    """The study's protocol: the other tokens are both anchors and candidates; a retrieval is
    correct when the candidate's word is the query's. Queries whose word never occurs among the
    anchors can never be right: ``n_unanswerable`` counts them and ``top1_answerable`` and
    ``top5_answerable`` leave them out."""
    return _protocol(a_layers, b_layers, words, False, ks, ps, only, query_fraction, seed, top,
                     chunk)  # fmt: skip


def asif_paired_protocol(
    a_layers: Any,
    b_layers: Any,
    words: Any,
    *,
    ks: Sequence[int] = (100, 150, 200, 250),
    ps: Sequence[float] = tuple(range(1, 10)),
    only: Sequence[tuple[int, float]] | None = STUDY_GRID,
    query_fraction: float = 0.15,
    seed: int = 0,
    top: int = 5,
    chunk: int = DEFAULT_CHUNK,
) -> xr.Dataset:
    """The paired protocol: the candidates are the queries' own representations in ``b_layers``
    and the other tokens are the anchors; adds exact-token accuracy (``exact_top1``,
    ``exact_top5``) to the same-word accuracy."""
    return _protocol(a_layers, b_layers, words, True, ks, ps, only, query_fraction, seed, top,
                     chunk)  # fmt: skip


asif_study_protocol.__doc__ += _PROTOCOL_ARGS
asif_paired_protocol.__doc__ += _PROTOCOL_ARGS
