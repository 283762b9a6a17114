"""The compare stage: two models of a store, every layer pair, results into the store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from wordspace.cluster import on_backend
from wordspace.errors import WordspaceError, errors_prefixed
from wordspace.metrics import similarity_grid
from wordspace.metrics.cca import check_ridge
from wordspace.pipeline.retrieval import asif_comparison
from wordspace.pipeline.selection import sample_words, select_layers
from wordspace.storage import store

GLOBAL_METRICS = ("cka", "cka_debiased", "cca")
ALL_METRICS = (*GLOBAL_METRICS, "asif")


def parse_metrics(text: str) -> list[str]:
    """`cka,cca,asif` -> the list, checked."""
    metrics = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [metric for metric in metrics if metric not in ALL_METRICS]
    if unknown or not metrics:
        raise WordspaceError(
            f"--metrics {text!r}: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {','.join(ALL_METRICS)}"
        )
    return metrics


def global_similarities(
    store_url: str,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = GLOBAL_METRICS,
    *,
    layers_a: str | None = None,
    layers_b: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    ridge: float = 0.0,
    gpu: bool = False,
) -> xr.Dataset:
    """CKA / debiased CKA / CCA grids of two stored models from one pass over their words.

    With `gpu`, every block is moved to cupy on the workers before the products.
    """
    check_ridge(ridge, "--ridge")
    a = select_layers(store.open_embedding(store_url, model_a), layers_a, "--layers-a")
    same = model_a == model_b and layers_a == layers_b
    b = (
        a
        if same
        else select_layers(store.open_embedding(store_url, model_b), layers_b, "--layers-b")
    )
    chosen = sample_words(a.sizes["word"], sample, seed)
    if chosen is not None:
        a = a.isel(word=chosen)
        b = a if same else b.isel(word=chosen)
    data_a = on_backend(a.data, gpu)
    data_b = data_a if same else on_backend(b.data, gpu)
    with errors_prefixed(f"--a {model_a} (A) and --b {model_b} (B): "):
        grid = similarity_grid(data_a, data_b, metrics=list(metrics), ridge=ridge)
    grid = grid.assign_coords(
        layer_a=[str(name) for name in a["layer"].values],
        layer_b=[str(name) for name in b["layer"].values],
    )
    return grid.assign_attrs(model_a=model_a, model_b=model_b, sample=sample or 0, seed=seed)


def compare_models(
    store_url: str,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = GLOBAL_METRICS,
    **options,
) -> xr.Dataset:
    """Compute the requested metrics and merge them into `/comparisons/<a>__<b>`."""
    results = []
    global_metrics = [metric for metric in metrics if metric in GLOBAL_METRICS]
    asif_only = ("ks", "ps", "protocol", "query_share")
    asif_options = {key: options.pop(key) for key in asif_only if key in options}
    ridge = options.pop("ridge", 0.0)
    if global_metrics:
        results.append(
            global_similarities(store_url, model_a, model_b, global_metrics, ridge=ridge, **options)
        )
    if "asif" in metrics:
        results.append(asif_comparison(store_url, model_a, model_b, **options, **asif_options))
    merged = xr.merge(results, compat="override", combine_attrs="drop_conflicts")
    return store.write_comparison(store_url, model_a, model_b, merged)


def format_grid(grid: xr.DataArray, title: str) -> list[str]:
    """A printable table of a (layer_a, layer_b) grid, best cell marked with *."""
    values = grid.values
    best = np.unravel_index(np.nanargmax(values), values.shape)
    names_b = [str(name)[:8] for name in grid["layer_b"].values]
    lines = [title, " " * 12 + " ".join(f"{name:>8}" for name in names_b)]
    for row, name_a in enumerate(grid["layer_a"].values):
        cells = [
            f"{values[row, column]:>7.3f}" + ("*" if (row, column) == best else " ")
            for column in range(values.shape[1])
        ]
        lines.append(f"{str(name_a)[:11]:<12}" + " ".join(cells))
    return lines
