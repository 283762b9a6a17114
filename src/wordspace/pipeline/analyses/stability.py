"""Stability with data size (study figs. 4.3, 4.4): layer curves from random subsamples.

For each size, several seeds each draw a random subsample of the words (not a prefix), compute
the layer curve, and correlate it (Pearson) with the curve of all the words.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.metrics import similarity_grid
from wordspace.pipeline.analyses.common import (
    METRIC_LABELS,
    layer_ticks,
    load_model,
    pair_key,
    save_figure,
    select_layer,
    valid_words,
)
from wordspace.storage.analyses import write_analysis

NAME = "stability"
GRID_METRICS = ("cka", "cka_debiased", "cca")


def default_sizes(n_words: int) -> list[int]:
    """About 8 sizes from 50 words up to (but not including) all of them, spaced by factors."""
    sizes = np.unique(np.geomspace(50, max(51, n_words - 1), 8).astype(int))
    return [int(size) for size in sizes if size < n_words]


def stability(
    a: xr.DataArray,
    b: xr.DataArray,
    *,
    sizes: Sequence[int] | None = None,
    n_seeds: int = 5,
    metric: str = "cka",
    seed: int = 0,
    ridge: float = 1e-3,
) -> xr.Dataset:
    """`curve` (size, seed, layer), `full` (layer) and `pearson` (size, seed) of `a`'s layers
    (layer, word, dim) against `b` (word, dim)."""
    if metric not in GRID_METRICS:
        raise WordspaceError(f"metric {metric!r}: choose from {', '.join(GRID_METRICS)}")
    if n_seeds < 1:
        raise WordspaceError(f"seeds: need at least 1, got {n_seeds}")
    keep = valid_words(a, b)
    a_values, b_values = np.asarray(a)[:, keep], np.asarray(b)[keep][None]
    n_words = a_values.shape[1]
    sizes = default_sizes(n_words) if sizes is None else sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 3 or sizes[-1] > n_words:
        raise WordspaceError(
            f"sizes {list(sizes)}: each must lie in [3, {n_words}] (the words valid in both)"
        )

    def curve(index: np.ndarray | slice) -> np.ndarray:
        grid = similarity_grid(
            a_values[:, index], b_values[:, index], metrics=[metric], ridge=ridge
        )
        return grid[metric].values[:, 0]

    full = curve(slice(None))
    rng = np.random.default_rng(seed)
    curves = np.array(
        [
            [curve(np.sort(rng.choice(n_words, size, replace=False))) for _ in range(n_seeds)]
            for size in sizes
        ]
    )
    pearson = np.array([[_pearson(c, full) for c in row] for row in curves])
    return xr.Dataset(
        {
            "curve": (("size", "seed", "layer"), curves),
            "full": (("layer",), full),
            "pearson": (("size", "seed"), pearson),
        },
        coords={
            "size": sizes,
            "seed": np.arange(n_seeds),
            "layer": [str(v) for v in a["layer"].values],
        },
        attrs={
            "model_a": str(a.name),
            "model_b": str(b.name),
            "layer_b": str(b["layer"].values) if "layer" in b.coords else "",
            "metric": metric,
            "n_words": n_words,
        },
    )


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def run(
    url: str | os.PathLike,
    a: str,
    b: str,
    *,
    layer_b: str | int | None = None,
    sizes: Sequence[int] | None = None,
    n_seeds: int = 5,
    metric: str = "cka",
    seed: int = 0,
) -> xr.Dataset:
    """Stability of model `a`'s layer curve against one layer of `b`, stored."""
    emb_a = load_model(url, a)
    emb_b = select_layer(load_model(url, b), layer_b)
    results = stability(emb_a, emb_b, sizes=sizes, n_seeds=n_seeds, metric=metric, seed=seed)
    return write_analysis(url, NAME, pair_key(a, b), results)


def stable_size(results: xr.Dataset, threshold: float = 0.99) -> int | None:
    """The smallest size from which every larger size's mean Pearson r reaches `threshold`."""
    mean = results["pearson"].mean("seed").values
    sizes = results["size"].values
    for index in range(len(sizes)):
        if np.all(np.nan_to_num(mean[index:], nan=-1) >= threshold):
            return int(sizes[index])
    return None


def reading(results: xr.Dataset) -> str:
    metric = METRIC_LABELS[results.attrs["metric"]]
    size = stable_size(results)
    worst = float(np.nanmin(results["pearson"].mean("seed")))
    if size is None:
        best = float(np.nanmax(results["pearson"].mean("seed")))
        return (
            f"the {metric} curve of {results.attrs['model_a']} is not stable yet: mean Pearson r "
            f"with the full-data curve reaches only {best:.3f}"
        )
    return (
        f"the {metric} curve of {results.attrs['model_a']} vs {results.attrs['model_b']} is "
        f"stable from {size} words (mean Pearson r ≥ 0.99 with all {results.attrs['n_words']} "
        f"words; lowest {worst:.3f})"
    )


def plot(results: xr.Dataset, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Each size's curves (one colour per size, every seed) over the full-data curve, and the
    Pearson r of each with it by size."""
    sizes = results["size"].values
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.5, 1]}, layout="constrained"
    )
    x = np.arange(results.sizes["layer"])
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(sizes)))
    for size, color in zip(sizes, colors, strict=True):
        for index, curve in enumerate(results["curve"].sel(size=size).values):
            left.plot(x, curve, color=color, alpha=0.55, linewidth=1,
                      label=f"{size} words" if index == 0 else None)  # fmt: skip
    left.plot(x, results["full"].values, color="black", linestyle="--", linewidth=1.6,
              label=f"all {results.attrs['n_words']} words")  # fmt: skip
    layer_ticks(left, results["layer"].values, "x")
    left.set_xlabel(f"{results.attrs['model_a']} layer")
    left.set_ylabel(METRIC_LABELS[results.attrs["metric"]])
    left.set_title(f"vs {results.attrs['model_b']} {results.attrs['layer_b']}: "
                   f"{results.sizes['seed']} random subsamples per size")  # fmt: skip
    left.legend(fontsize=7, ncol=2)
    left.grid(alpha=0.3)
    for seed in results["seed"].values:
        right.plot(
            sizes, results["pearson"].sel(seed=seed).values, "o", color="tab:blue", alpha=0.4
        )
    right.plot(sizes, results["pearson"].mean("seed").values, color="tab:red", label="mean")
    right.set_xscale("log")
    right.set_xlabel("words in the subsample")
    right.set_ylabel("Pearson r with the full-data curve")
    right.set_title("agreement with the full-data curve")
    right.grid(alpha=0.3)
    right.legend()
    return save_figure(figure, out_dir, stem)
