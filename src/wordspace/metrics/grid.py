"""Every requested layer-pair similarity of two models from one pass over their words."""

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.metrics.cca import cca_from_statistics, check_ridge
from wordspace.metrics.cka import cka_from_statistics
from wordspace.metrics.statistics import GramStatistics, gram_statistics

GRID_METRICS = ("cka", "cka_debiased", "cca")


def similarity_grid(
    a: Any, b: Any, metrics: Sequence[str] = GRID_METRICS, ridge: float = 0.0
) -> xr.Dataset:
    """CKA, debiased CKA and/or CCA of every layer of ``a`` with every layer of ``b``.

    ``a`` and ``b`` are ``(layer, word, dim)`` arrays (numpy, cupy, dask, or xarray DataArrays
    such as ``xr.open_zarr(store)["embedding"]``). Returns a Dataset with one ``(layer_a,
    layer_b)`` variable per metric, the inputs' layer labels as coordinates, and attributes
    ``n_words`` (words valid in both inputs) and ``n_excluded`` (words left out for NaN). Passing
    the same object as ``a`` and ``b`` computes only half of the products.
    """
    unknown = sorted(set(metrics) - set(GRID_METRICS))
    if unknown or not metrics:
        raise WordspaceError(
            f"metrics={list(metrics)}: unknown or empty; choose from {', '.join(GRID_METRICS)}"
        )
    check_ridge(ridge)
    summary = partial(_grids_and_counts, metrics=tuple(metrics), ridge=ridge)
    grids, counts = gram_statistics(a, b, debiased="cka_debiased" in metrics, summary=summary)
    layers_a, layers_b = grids[metrics[0]].shape
    return xr.Dataset(
        {name: (("layer_a", "layer_b"), grid) for name, grid in grids.items()},
        coords={"layer_a": _layer_labels(a, layers_a), "layer_b": _layer_labels(b, layers_b)},
        attrs={**counts, "cca_ridge": ridge},
    )


def grids_from_statistics(
    stats: GramStatistics, metrics: Sequence[str], ridge: float = 0.0
) -> dict[str, np.ndarray]:
    """Each metric's ``(La, Lb)`` grid from accumulated statistics (``cka_debiased`` needs
    statistics accumulated with ``debiased=True``)."""
    finish = {
        "cka": lambda: cka_from_statistics(stats),
        "cka_debiased": lambda: cka_from_statistics(stats, debiased=True),
        "cca": lambda: cca_from_statistics(stats, ridge),
    }
    return {name: finish[name]() for name in metrics}


def _grids_and_counts(
    stats: GramStatistics, metrics: Sequence[str], ridge: float
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    grids = grids_from_statistics(stats, metrics, ridge)
    return grids, {"n_words": stats.n_words, "n_excluded": stats.n_excluded}


def _layer_labels(x: Any, n_layers: int) -> np.ndarray:
    if "layer" in getattr(x, "dims", ()) and "layer" in x.coords:
        return np.asarray(x.coords["layer"].values)
    return np.arange(n_layers)
