"""ASIF retrieval across layer pairs (study figs. 4.11, 4.15) and its (k, p) table (table 3.1).

The study's protocol (`asif_study_protocol`, section 3.3.3): a seeded `query_share` of the word
tokens are queries, the others are both anchors and candidates; a retrieval is right when the
candidate's word is the query's. All layer pairs are scored at one (k, p); the (k, p) table is
swept at the best pair only, which costs one pair's retrievals instead of every pair's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from wordspace.metrics.asif import STUDY_GRID
from wordspace.metrics.asif_protocols import asif_study_protocol, split_queries
from wordspace.pipeline.analyses.common import (
    layer_ticks,
    load_model,
    pair_key,
    save_figure,
    texts,
    valid_words,
)
from wordspace.storage import store
from wordspace.storage.analyses import write_analysis

NAME = "asif"


def _with_layer(x: xr.DataArray) -> xr.DataArray:
    return x if "layer" in x.dims else x.expand_dims("layer")


def _usable_k(k: int, a: xr.DataArray, b: xr.DataArray, query_share: float, seed: int) -> int:
    """`k`, lowered to the number of anchors without NaN when there are fewer."""
    _, anchors = split_queries(a.sizes["word"], query_share, seed)
    return max(1, min(k, int(valid_words(a, b)[anchors].sum())))


def layer_pair_hits(
    a: xr.DataArray,
    b: xr.DataArray,
    text: Any,
    *,
    k: int,
    p: float,
    query_share: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Hits (layer_a, layer_b, query, rank) of the usable queries at (k, p), and their word
    indices. `a`, `b`: (layer, word, dim) or (word, dim) over the same words."""
    a, b = _with_layer(a), _with_layer(b)
    k = _usable_k(k, a, b, query_share, seed)
    grid = asif_study_protocol(
        a, b, texts(text), ks=(k,), ps=(p,), only=None, query_fraction=query_share, seed=seed
    )
    retrieved = texts(grid["retrieved_words"].values)
    usable = (retrieved != "").all(axis=(0, 1, 3))
    hits = retrieved == texts(grid["query_text"].values)[:, None]
    return hits[:, :, usable], grid["query_word"].values[usable]


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
    layer_grid: tuple[xr.DataArray, xr.DataArray] | None = None,
) -> xr.Dataset:
    """Top-1/top-5 accuracy of every layer pair at (k, p), the (k, p) table at the best pair,
    and the words retrieved there at its best cell (for the error analysis).

    `layer_grid`: top-1 and top-5 (layer_a, layer_b) at (k, p) when already computed (by
    `wordspace compare` with the same split), so only the best pair's table is computed here.

    `a`, `b`: (layer, word, dim) over the same words; `text`: each word's text.
    """
    a, b = _with_layer(a), _with_layer(b)
    words = texts(text)
    k = _usable_k(k, a, b, query_share, seed)
    options = {"query_fraction": query_share, "seed": seed}
    if layer_grid is None:
        grid = asif_study_protocol(a, b, words, ks=(k,), ps=(p,), only=None, **options)
        layer_grid = grid["top1"].isel(k=0, p=0), grid["top5"].isel(k=0, p=0)
    top1, top5 = (accuracy.transpose("layer_a", "layer_b").values for accuracy in layer_grid)
    best_a, best_b = np.unravel_index(np.lexsort((top5.ravel(), top1.ravel()))[-1], top1.shape)
    cells = sorted({(int(c_k), float(c_p)) for c_k, c_p in sweep if c_k <= k} | {(k, float(p))})
    ks, ps = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
    table = asif_study_protocol(
        a.isel(layer=[best_a]), b.isel(layer=[best_b]), words, ks=ks, ps=ps, only=cells, **options
    ).isel(layer_a=0, layer_b=0)
    _, anchors = split_queries(a.sizes["word"], query_share, seed)
    return xr.Dataset(
        {
            "top1": (("layer_a", "layer_b"), top1),
            "top5": (("layer_a", "layer_b"), top5),
            "sweep_top1": (("k", "p"), table["top1"].values),
            "sweep_top5": (("k", "p"), table["top5"].values),
            "query_word": (("query",), texts(table["query_text"].values).astype(str)),
            "query_index": (("query",), table["query_word"].values),
            "retrieved_word": (
                ("query", "rank"),
                texts(table["retrieved_words"].values).astype(str),
            ),
            "anchor_word": (("anchor",), words[anchors].astype(str)),
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
            "best_k": int(table["best_k"]),
            "best_p": float(table["best_p"]),
            "query_share": query_share,
            "seed": seed,
            "n_anchors": int(table.attrs["n_anchors"]),
            "n_queries": int(table.attrs["n_queries"]),
            "n_unanswerable": int(table.attrs.get("n_unanswerable", 0)),
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
        emb_a, emb_b, emb_a["text"].values, k=k, p=p, query_share=query_share, seed=seed,
        layer_grid=_compared_grid(url, a, b, k=k, p=p, query_share=query_share, seed=seed),
    )  # fmt: skip
    return write_analysis(url, NAME, pair_key(a, b), results)


def _layer_names(url: str | os.PathLike, model: str) -> list[str]:
    return [str(name) for name in store.open_embedding(url, model)["layer"].values]


def _compared_grid(
    url: str | os.PathLike, a: str, b: str, *, k: int, p: float, query_share: float, seed: int
) -> tuple[xr.DataArray, xr.DataArray] | None:
    """The layer grid at (k, p) from `/comparisons/<a>__<b>`, if it used this very split."""
    stored = store.read_comparison(url, a, b)
    if stored is None or "asif_top1" not in stored:
        return None
    same_split = (
        stored.attrs.get("asif_seed") == seed
        and stored.attrs.get("asif_query_fraction") == query_share
        and stored.attrs.get("asif_protocol") == "study"
        and stored.attrs.get("asif_n_words") == store.open_word_table(url).sizes["word"]
        and k in stored["k"].values
        and p in stored["p"].values
        and _layer_names(url, a) == [str(name) for name in stored["layer_a"].values]
        and _layer_names(url, b) == [str(name) for name in stored["layer_b"].values]
    )
    if not same_split:
        return None
    return tuple(stored[name].sel(k=k, p=p) for name in ("asif_top1", "asif_top5"))


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
