"""Layer curves (study figs. 4.2, 4.5, 4.6): every layer of model A against one layer of model B.

CKA, debiased CKA and CCA come from accumulated Gram statistics, ASIF from the study's retrieval
protocol (see `asif_maps`). Confidence bands come from a bootstrap over speakers (utterances when
there are fewer than ten speakers). A resample's statistics are its groups' statistics weighted by
how often each group was drawn, so the groups' statistics are accumulated once and combined for
every resample (`resampled_statistics`); the ASIF accuracy is re-averaged over the resampled
groups' queries the same way.

What the bands mean: the spread of each metric over resamples that repeat whole groups, not an
interval around the curve. A repeated group duplicates its words, and the similarity estimators
read duplicated rows as extra agreement: fewer distinct words per dimension lets CCA fit closer, and
the debiased CKA estimator assumes distinct rows. On the demo corpus (utterance bootstrap) the CCA
bands sit wholly above the full-data curve (their middle 0.04-0.09 above it, for bands about 0.015
wide), the CKA and debiased CKA bands above it by 0.002-0.018, and only the ASIF bands (a mean over
queries) are centred on it. Compare bands between layers, not with the curve.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.metrics.grid import grids_from_statistics
from wordspace.metrics.resample import resampled_statistics
from wordspace.pipeline.analyses.asif_maps import layer_pair_hits
from wordspace.pipeline.analyses.common import (
    METRIC_LABELS,
    group_bootstrap,
    layer_ticks,
    load_model,
    pair_key,
    resampled_means,
    resampling_groups,
    save_figure,
    select_layer,
    valid_words,
)
from wordspace.storage.analyses import write_analysis

NAME = "layer_curves"
CURVE_METRICS = ("cka", "cka_debiased", "cca", "asif")


def layer_curves(
    a: xr.DataArray,
    b: xr.DataArray,
    groups: np.ndarray,
    *,
    metrics: Sequence[str] = CURVE_METRICS,
    n_boot: int = 50,
    confidence: float = 0.9,
    seed: int = 0,
    ridge: float = 1e-3,
    text: np.ndarray | None = None,
    asif_k: int = 250,
    asif_p: float = 4,
    query_share: float = 0.15,
) -> xr.Dataset:
    """`value`, `low`, `high` (metric, layer): each layer of `a` (layer, word, dim) against `b`
    (word, dim), with bootstrap bands over `groups` (one label per word). ASIF needs `text`."""
    unknown = sorted(set(metrics) - set(CURVE_METRICS))
    if unknown or not metrics:
        raise WordspaceError(f"metrics {unknown or '[]'}: choose from {', '.join(CURVE_METRICS)}")
    if n_boot < 0 or not 0 < confidence < 1:
        raise WordspaceError("n_boot must be >= 0 and confidence strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    grid_metrics = [m for m in metrics if m != "asif"]
    keep = valid_words(a, b)
    a_values, b_values = np.asarray(a)[:, keep], np.asarray(b)[keep][None]
    kept_groups = np.asarray(groups)[keep]
    # Row 0 of every `samples` array is the full data (each group once), the rest resamples.
    samples: dict[str, np.ndarray] = {}
    if grid_metrics:
        weights = group_bootstrap(kept_groups, n_boot, rng)
        statistics = resampled_statistics(
            a_values,
            b_values,
            kept_groups,
            np.vstack([np.ones(weights.shape[1]), weights]),
            debiased="cka_debiased" in grid_metrics,
        )
        grids = [grids_from_statistics(s, grid_metrics, ridge) for s in statistics]
        for metric in grid_metrics:
            samples[metric] = np.stack([grid[metric][:, 0] for grid in grids])
    if "asif" in metrics:
        if text is None:
            raise WordspaceError("metrics asif: pass the words' text so hits can be scored")
        hits, queries = layer_pair_hits(
            a, b, text, k=asif_k, p=asif_p, query_share=query_share, seed=seed
        )
        top1 = hits[:, 0, :, 0].astype(float)
        query_groups = np.asarray(groups)[queries]
        weights = group_bootstrap(query_groups, n_boot, rng)
        samples["asif"] = np.vstack(
            [top1.mean(axis=1), resampled_means(top1, query_groups, weights)]
        )
    tail = (1 - confidence) / 2
    value = np.stack([samples[m][0] for m in metrics])
    if n_boot:
        low = np.stack([np.quantile(samples[m][1:], tail, axis=0) for m in metrics])
        high = np.stack([np.quantile(samples[m][1:], 1 - tail, axis=0) for m in metrics])
    else:
        low = high = value
    dims = ("metric", "layer")
    return xr.Dataset(
        {"value": (dims, value), "low": (dims, low), "high": (dims, high)},
        coords={"metric": list(metrics), "layer": [str(v) for v in a["layer"].values]},
        attrs={
            "model_a": str(a.name),
            "model_b": str(b.name),
            "layer_b": str(b["layer"].values) if "layer" in b.coords else "",
            "n_words": int(keep.sum()),
            "n_boot": n_boot,
            "confidence": confidence,
            "n_groups": len(np.unique(kept_groups)),
        },
    )


def run(
    url: str | os.PathLike,
    a: str,
    b: str,
    *,
    layer_b: str | int | None = None,
    metrics: Sequence[str] = CURVE_METRICS,
    n_boot: int = 50,
    seed: int = 0,
) -> xr.Dataset:
    """Layer curves of model `a` against one layer of model `b` (default its last), stored."""
    emb_a = load_model(url, a)
    emb_b = select_layer(load_model(url, b), layer_b)
    groups, kind = resampling_groups(emb_a)
    results = layer_curves(
        emb_a,
        emb_b,
        groups,
        metrics=metrics,
        n_boot=n_boot,
        seed=seed,
        text=emb_a["text"].values,
    )
    results.attrs["groups"] = kind
    return write_analysis(url, NAME, pair_key(a, b), results)


def reading(results: xr.Dataset) -> str:
    metric = str(results["metric"].values[0])
    curve = results["value"].sel(metric=metric)
    best = int(np.argmax(curve.values))
    return (
        f"layer {curve['layer'].values[best]} of {results.attrs['model_a']} is closest to "
        f"{results.attrs['model_b']} ({METRIC_LABELS[metric]} {float(curve[best]):.2f}; "
        f"{results.attrs['n_words']} words, {results.attrs.get('groups', 'group')} bootstrap)"
    )


def plot(results: xr.Dataset, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Every metric min-max scaled over the layers so their trends share one axis, with bands."""
    figure, axis = plt.subplots(figsize=(8, 4.2), layout="constrained")
    x = np.arange(results.sizes["layer"])
    colors = plt.get_cmap("tab10")
    for index, metric in enumerate(results["metric"].values):
        value, low, high = (results[v].sel(metric=metric).values for v in ("value", "low", "high"))
        lo, hi = np.nanmin(value), np.nanmax(value)
        span = hi - lo if hi > lo else 1.0
        label = f"{METRIC_LABELS[str(metric)]} ({lo:.2f}–{hi:.2f})"
        axis.plot(x, (value - lo) / span, marker="o", color=colors(index), label=label)
        axis.fill_between(x, (low - lo) / span, (high - lo) / span, color=colors(index), alpha=0.18)
    layer_ticks(axis, results["layer"].values, "x")
    axis.set_xlabel(f"{results.attrs['model_a']} layer")
    axis.set_ylabel("scaled similarity (0 = min, 1 = max)")
    axis.set_title(
        f"{results.attrs['model_a']} vs {results.attrs['model_b']} {results.attrs['layer_b']}"
        f" — {results.attrs['confidence']:.0%} bands, {results.attrs['n_boot']} resamples"
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return save_figure(figure, out_dir, stem)
