"""ASIF retrieval across layer pairs (study figs. 4.11, 4.15) and its (k, p) table (table 3.1).

Protocol (study section 3.3.3): a random `query_share` of the words valid in both models is held
out as queries; the rest are the anchors. A query's word in model A retrieves among the held-out
words in model B; it is a hit at rank r when the word retrieved there is the same word (text).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.metrics.asif import STUDY_GRID, asif_grid, asif_sweep
from wordspace.pipeline.analyses.common import (
    layer_ticks,
    load_model,
    pair_key,
    save_figure,
    texts,
    valid_words,
)
from wordspace.storage.analyses import write_analysis

NAME = "asif"


def split_anchors_queries(
    valid: np.ndarray, query_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted word indices of the anchors and of the held-out queries among the valid words."""
    if not 0 < query_share < 1:
        raise WordspaceError(f"query_share: must lie strictly between 0 and 1, got {query_share}")
    indices = np.flatnonzero(valid)
    if len(indices) < 2:
        raise WordspaceError("ASIF needs at least 2 words valid in both models")
    shuffled = np.random.default_rng(seed).permutation(indices)
    n_queries = min(len(indices) - 1, max(1, round(query_share * len(indices))))
    return np.sort(shuffled[n_queries:]), np.sort(shuffled[:n_queries])


def retrieval_hits(retrieved: np.ndarray, query_text: np.ndarray) -> np.ndarray:
    """(..., query, rank) bool: the candidate retrieved there is the query's own word.

    Candidates are the queries themselves in the other model, so `retrieved` indexes `query_text`.
    """
    words = query_text[np.clip(retrieved, 0, None)]
    return (retrieved >= 0) & (words == query_text[:, None])


def _with_layer(x: xr.DataArray) -> xr.DataArray:
    return x if "layer" in x.dims else x.expand_dims("layer")


def layer_pair_hits(
    a: xr.DataArray,
    b: xr.DataArray,
    text: np.ndarray,
    *,
    k: int,
    p: float,
    query_share: float,
    seed: int,
    top: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Hits (layer_a, layer_b, query, rank), anchors, queries and the k used (at most #anchors)."""
    a, b = _with_layer(a), _with_layer(b)
    anchors, queries = split_anchors_queries(valid_words(a, b), query_share, seed)
    k = min(k, len(anchors))
    grid = asif_grid(
        a,
        b,
        anchors=anchors,
        queries=queries,
        candidates=queries,
        ks=(k,),
        ps=(p,),
        top=min(top, len(queries)),
    )
    hits = retrieval_hits(grid["retrieved"].values[:, :, 0, 0], text[queries])
    return hits, anchors, queries, k


def asif_maps(
    a: xr.DataArray,
    b: xr.DataArray,
    text: Any,
    *,
    k: int = 250,
    p: float = 4,
    sweep: Sequence[tuple[int, float]] = STUDY_GRID,
    query_share: float = 0.15,
    seed: int = 0,
    top: int = 5,
) -> xr.Dataset:
    """Top-1/top-5 accuracy of every layer pair at (k, p), the (k, p) table at the best pair,
    and the words retrieved there (for the error analysis).

    `a`, `b`: (layer, word, dim) over the same words; `text`: each word's text.
    """
    a, b = _with_layer(a), _with_layer(b)
    text = texts(text)
    hits, anchors, queries, k = layer_pair_hits(
        a, b, text, k=k, p=p, query_share=query_share, seed=seed, top=top
    )
    top1, top5 = hits[..., 0].mean(axis=-1), hits.any(axis=-1).mean(axis=-1)
    best_a, best_b = np.unravel_index(np.lexsort((top5.ravel(), top1.ravel()))[-1], top1.shape)
    cells = [(int(cell_k), float(cell_p)) for cell_k, cell_p in sweep if cell_k <= len(anchors)]
    if (k, float(p)) not in cells:
        cells.append((k, float(p)))
    ks, ps = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
    swept = asif_sweep(
        a[best_a].values[anchors],
        b[best_b].values[anchors],
        a[best_a].values[queries],
        b[best_b].values[queries],
        ks=ks,
        ps=ps,
        only=cells,
        top=min(top, len(queries)),
    )["retrieved"].values
    sweep_hits = retrieval_hits(swept, text[queries])
    in_sweep = np.zeros((len(ks), len(ps)), bool)
    for cell_k, cell_p in cells:
        in_sweep[ks.index(cell_k), ps.index(cell_p)] = True
    sweep_top1 = np.where(in_sweep, sweep_hits[..., 0].mean(-1), np.nan)
    sweep_top5 = np.where(in_sweep, sweep_hits.any(-1).mean(-1), np.nan)
    best_k, best_p = np.unravel_index(np.nanargmax(sweep_top1 + 1e-9 * sweep_top5), in_sweep.shape)
    query_text = text[queries]
    return xr.Dataset(
        {
            "top1": (("layer_a", "layer_b"), top1),
            "top5": (("layer_a", "layer_b"), top5),
            "sweep_top1": (("k", "p"), sweep_top1),
            "sweep_top5": (("k", "p"), sweep_top5),
            "query_word": (("query",), query_text.astype(str)),
            "query_index": (("query",), queries),
            "retrieved_word": (("query", "rank"), query_text[swept[best_k, best_p]].astype(str)),
            "anchor_word": (("anchor",), text[anchors].astype(str)),
        },
        coords={
            "layer_a": [str(v) for v in a["layer"].values],
            "layer_b": [str(v) for v in b["layer"].values],
            "k": ks,
            "p": ps,
        },
        attrs={
            "model_a": str(a.name),
            "model_b": str(b.name),
            "k": k,
            "p": float(p),
            "best_layer_a": str(a["layer"].values[best_a]),
            "best_layer_b": str(b["layer"].values[best_b]),
            "best_k": int(ks[best_k]),
            "best_p": float(ps[best_p]),
            "query_share": query_share,
            "seed": seed,
            "n_anchors": len(anchors),
            "n_queries": len(queries),
        },
    )


def run(
    url: str | os.PathLike,
    a: str,
    b: str,
    *,
    k: int = 250,
    p: float = 4,
    query_share: float = 0.15,
    seed: int = 0,
) -> xr.Dataset:
    """ASIF maps of models `a` (queries) and `b` (candidates) from the store, stored."""
    emb_a, emb_b = load_model(url, a), load_model(url, b)
    results = asif_maps(
        emb_a, emb_b, emb_a["text"].values, k=k, p=p, query_share=query_share, seed=seed
    )
    return write_analysis(url, NAME, pair_key(a, b), results)


def reading(results: xr.Dataset) -> str:
    a, b = results.attrs["model_a"], results.attrs["model_b"]
    best = results["top1"].sel(
        layer_a=results.attrs["best_layer_a"], layer_b=results.attrs["best_layer_b"]
    )
    return (
        f"ASIF retrieves {b} words from {a} best with layer {results.attrs['best_layer_a']} × "
        f"{results.attrs['best_layer_b']}: top-1 {float(best):.0%} "
        f"(k={results.attrs['k']}, p={results.attrs['p']:g}); best (k, p) there is "
        f"({results.attrs['best_k']}, {results.attrs['best_p']:g}) with top-1 "
        f"{float(np.nanmax(results['sweep_top1'])):.0%}"
    )


def plot(results: xr.Dataset, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Top-1 and top-5 heatmaps with the best pair marked, and the (k, p) table."""
    figure, axes = plt.subplots(
        1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1, 0.9]}, layout="constrained"
    )
    for axis, name in zip(axes[:2], ("top1", "top5"), strict=True):
        values = results[name].values
        image = axis.imshow(values.T, origin="lower", aspect="auto", cmap="viridis", vmin=0)
        i, j = np.unravel_index(np.argmax(values), values.shape)
        axis.plot(i, j, marker="*", color="red", markersize=14, markeredgecolor="white")
        layer_ticks(axis, results["layer_a"].values, "x")
        layer_ticks(axis, results["layer_b"].values, "y")
        axis.set_xlabel(f"{results.attrs['model_a']} layer")
        axis.set_ylabel(f"{results.attrs['model_b']} layer")
        axis.set_title(
            f"ASIF {name.replace('top', 'top-')} (k={results.attrs['k']}, "
            f"p={results.attrs['p']:g}); max {values.max():.0%}"
        )
        figure.colorbar(image, ax=axis, shrink=0.85)
    table = results["sweep_top1"].values
    axis = axes[2]
    image = axis.imshow(table, origin="lower", aspect="auto", cmap="magma")
    for (i, j), value in np.ndenumerate(table):
        if np.isfinite(value):
            axis.text(
                j,
                i,
                f"{value:.0%}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if value < np.nanmax(table) * 0.7 else "black",
            )
    axis.set_xticks(range(len(results["p"])), [f"{v:g}" for v in results["p"].values])
    axis.set_yticks(range(len(results["k"])), [str(v) for v in results["k"].values])
    axis.set_xlabel("p")
    axis.set_ylabel("k")
    axis.set_title(
        f"top-1 by (k, p) at {results.attrs['best_layer_a']} × {results.attrs['best_layer_b']}"
    )
    figure.colorbar(image, ax=axis, shrink=0.85)
    figure.suptitle(f"ASIF: {results.attrs['model_a']} → {results.attrs['model_b']}")
    return save_figure(figure, out_dir, stem)
