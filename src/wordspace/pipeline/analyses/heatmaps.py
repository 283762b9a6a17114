"""Layer × layer heatmaps within a model (study figs. 4.7–4.9, with fig. 4.8's per-row profile)
and across two models (figs. 4.10–4.14), for any grid metric, with the maximum marked.

A stored comparison (`wordspace compare`) that already holds the metric is reused; otherwise the
grid is computed from the embeddings.
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
    pair_key,
    save_figure,
)
from wordspace.storage import store
from wordspace.storage.analyses import write_analysis

NAME = "heatmaps"
GRID_METRICS = ("cka", "cka_debiased", "cca")


def layer_heatmap(
    a: xr.DataArray,
    b: xr.DataArray | None = None,
    *,
    metrics: Sequence[str] = ("cka",),
    ridge: float = 1e-3,
) -> xr.Dataset:
    """One (layer_a, layer_b) variable per metric: `a` against itself, or against `b`."""
    within = b is None
    grid = similarity_grid(a, a if within else b, metrics=metrics, ridge=ridge)
    return _labelled(grid, str(a.name), str(a.name if within else b.name), list(metrics))


def _labelled(grid: xr.Dataset, model_a: str, model_b: str, metrics: list[str]) -> xr.Dataset:
    grid = grid[metrics].assign_coords(
        layer_a=[str(v) for v in grid["layer_a"].values],
        layer_b=[str(v) for v in grid["layer_b"].values],
    )
    grid.attrs = {
        "model_a": model_a,
        "model_b": model_b,
        "within": model_a == model_b,
        "n_words": int(grid.attrs.get("n_words", 0)),
    }
    return grid


def best_pair(values: xr.DataArray, within: bool) -> tuple[int, int]:
    """Position of the maximum; within a model, above the diagonal (the diagonal is 1 and the
    matrix symmetric up to rounding, so the lower layer comes first whichever way it rounds)."""
    matrix = values.values.astype(float).copy()
    if within:
        matrix[np.tril_indices_from(matrix)] = -np.inf
    flat = np.nanargmax(np.where(np.isnan(matrix), -np.inf, matrix))
    return tuple(int(i) for i in np.unravel_index(flat, matrix.shape))


def run(
    url: str | os.PathLike,
    a: str,
    b: str | None = None,
    *,
    metrics: Sequence[str] = ("cka",),
) -> xr.Dataset:
    """Heatmaps of `a` against itself (no `b`) or against `b`, stored under `a` or `a__b`."""
    unknown = sorted(set(metrics) - set(GRID_METRICS))
    if unknown or not metrics:
        raise WordspaceError(f"metrics {unknown or '[]'}: choose from {', '.join(GRID_METRICS)}")
    b = b or a
    stored = store.read_comparison(url, a, b)
    if stored is not None and all(metric in stored for metric in metrics):
        results = _labelled(stored, a, b, list(metrics))
    else:
        emb_a = store.open_embedding(url, a)
        results = layer_heatmap(
            emb_a, None if b == a else store.open_embedding(url, b), metrics=metrics
        )
    return write_analysis(url, NAME, a if a == b else pair_key(a, b), results)


def reading(results: xr.Dataset) -> str:
    metric = str(next(iter(results.data_vars)))
    values = results[metric]
    i, j = best_pair(values, results.attrs["within"])
    a, b = results.attrs["model_a"], results.attrs["model_b"]
    label = METRIC_LABELS[metric]
    layer_a, layer_b = results["layer_a"].values[i], results["layer_b"].values[j]
    if results.attrs["within"]:
        dips = _row_minima(values.values)
        counts = np.bincount(dips, minlength=len(dips))
        return (
            f"within {a}, the most alike distinct layers are {layer_a} and {layer_b} ({label} "
            f"{float(values[i, j]):.2f}); layer {results['layer_b'].values[counts.argmax()]} is "
            f"the least similar layer for {counts.max()} of {len(dips)} layers"
        )
    return f"{label} peaks at {a} layer {layer_a} × {b} layer {layer_b} ({float(values[i, j]):.2f})"


def _row_minima(matrix: np.ndarray) -> np.ndarray:
    return np.nanargmin(np.where(np.isnan(matrix), np.inf, matrix), axis=1)


def plot(results: xr.Dataset, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """One heatmap per metric with the maximum starred; within a model also each row's profile
    (self marked black, the row's minimum red)."""
    metrics = [str(m) for m in results.data_vars]
    within = bool(results.attrs["within"])
    n_cols = len(metrics) + (1 if within else 0)
    figure, axes = plt.subplots(
        1, n_cols, figsize=(5.2 * n_cols, 4.6), layout="constrained", squeeze=False
    )
    a, b = results.attrs["model_a"], results.attrs["model_b"]
    for axis, metric in zip(axes[0], metrics, strict=False):
        values = results[metric]
        image = axis.imshow(values.values.T, origin="lower", aspect="auto", cmap="viridis")
        i, j = best_pair(values, within)
        axis.plot(i, j, marker="*", color="red", markersize=14, markeredgecolor="white")
        layer_ticks(axis, results["layer_a"].values, "x")
        layer_ticks(axis, results["layer_b"].values, "y")
        axis.set_xlabel(f"{a} layer")
        axis.set_ylabel(f"{b} layer")
        axis.set_title(
            f"{METRIC_LABELS[metric]}: max {float(values[i, j]):.2f} at "
            f"{results['layer_a'].values[i]} × {results['layer_b'].values[j]}",
            fontsize=10,
        )
        figure.colorbar(image, ax=axis, shrink=0.85)
    if within:
        axis = axes[0][-1]
        matrix = results[metrics[0]].values
        x = np.arange(matrix.shape[1])
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, matrix.shape[0]))
        for row, (values, color) in enumerate(zip(matrix, colors, strict=True)):
            axis.plot(x, values, color=color, linewidth=1)
            axis.plot(row, values[row], "s", color="black", markersize=4)
            low = int(_row_minima(matrix[row : row + 1])[0])
            axis.plot(low, values[low], "o", color="red", markersize=5)
        layer_ticks(axis, results["layer_b"].values, "x")
        axis.set_xlabel(f"{a} layer")
        axis.set_ylabel(METRIC_LABELS[metrics[0]])
        axis.set_title("each layer's profile (■ itself, ● least similar)", fontsize=10)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{a} layers vs {b} layers" if not within else f"{a}: layer × layer")
    return save_figure(figure, out_dir, stem)
