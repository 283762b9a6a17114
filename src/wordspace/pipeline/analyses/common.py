"""What the analyses share: reading layers from the store, resampling groups, saving figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
# Text as text in SVGs: smaller files, drawn faster than glyph outlines.
matplotlib.rcParams["svg.fonttype"] = "none"
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from wordspace.errors import WordspaceError  # noqa: E402
from wordspace.storage import store  # noqa: E402

MIN_SPEAKERS_FOR_BOOTSTRAP = 10
METRIC_LABELS = {
    "cka": "linear CKA",
    "cka_debiased": "debiased CKA",
    "cca": "mean CCA",
    "asif": "ASIF top-1",
    "asif_top1": "ASIF top-1",
    "asif_top5": "ASIF top-5",
}


def pair_key(model_a: str, model_b: str) -> str:
    return f"{model_a}__{model_b}"


def load_model(url: str | os.PathLike, model: str) -> xr.DataArray:
    """The model's (layer, word, dim) embedding, read into memory, with the word coordinates."""
    return store.open_embedding(url, model).load()


def select_layer(embedding: xr.DataArray, layer: str | int | None) -> xr.DataArray:
    """One layer (by name, or position as an int or digits; default the last) as (word, dim)."""
    names = [str(name) for name in embedding["layer"].values]
    if layer is None:
        return embedding.isel(layer=-1)
    if str(layer) in names:
        return embedding.isel(layer=names.index(str(layer)))
    if isinstance(layer, int) or str(layer).lstrip("-").isdigit():
        position = int(layer)
        if -len(names) <= position < len(names):
            return embedding.isel(layer=position)
    raise WordspaceError(
        f"layer {layer!r}: not a layer of {embedding.name} (layers: {', '.join(names)})"
    )


def valid_words(*arrays: Any) -> np.ndarray:
    """Mask of the words without NaN in every array, each (word, dim) or (layer, word, dim)."""
    mask = None
    for array in arrays:
        values = np.asarray(array)
        bad = np.isnan(values).any(axis=-1)
        if bad.ndim == 2:
            bad = bad.any(axis=0)
        mask = ~bad if mask is None else mask & ~bad
    return mask


def resampling_groups(words: xr.Dataset | xr.DataArray) -> tuple[np.ndarray, str]:
    """Per-word group labels for the bootstrap: speakers when there are enough, else utterances."""
    speakers = texts(words["speaker"].values)
    if len(np.unique(speakers)) >= MIN_SPEAKERS_FOR_BOOTSTRAP:
        return speakers, "speaker"
    return texts(words["utterance"].values), "utterance"


def group_bootstrap(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`(n_boot, groups)` multiplicities of `n_boot` resamples that each draw as many groups as
    there are, with replacement; columns in the order of `np.unique(groups)`."""
    n_groups = len(np.unique(groups))
    draws = [rng.integers(0, n_groups, size=n_groups) for _ in range(n_boot)]
    return np.array([np.bincount(draw, minlength=n_groups) for draw in draws]).reshape(
        n_boot, n_groups
    )


def resampled_means(values: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`(resamples, rows)`: the mean over the columns (one per item) of `values`, with each
    item counted as often as its group's weight (`weights` from `group_bootstrap`)."""
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.zeros((weights.shape[1], values.shape[0]))
    np.add.at(sums, inverse, values.T)
    return (weights @ sums) / (weights @ np.bincount(inverse, minlength=weights.shape[1]))[:, None]


def save_figure(figure: plt.Figure, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write the figure as PNG and SVG into `out_dir`; returns both paths.

    The figures lay themselves out (`layout="constrained"`), so no tight bounding box (an extra
    draw) is needed, and the layout found for the PNG is kept for the SVG instead of redone."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    figure.savefig(paths[0], dpi=130)
    figure.set_layout_engine("none")
    figure.savefig(paths[1])
    plt.close(figure)
    return paths


def layer_ticks(axis: Any, labels: Any, which: str = "x") -> None:
    """Label an axis with layer names, thinned so that at most about 16 show."""
    labels = [str(label) for label in labels]
    step = max(1, -(-len(labels) // 16))
    positions = list(range(0, len(labels), step))
    setter = axis.set_xticks if which == "x" else axis.set_yticks
    setter(positions, [labels[i] for i in positions], rotation=45 if which == "x" else 0)


def texts(values: Any) -> np.ndarray:
    """An array of Python strings (zarr may hand back its own string dtype)."""
    return np.asarray([str(value) for value in np.asarray(values).ravel()], dtype=object).reshape(
        np.shape(values)
    )
