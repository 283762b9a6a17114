"""Retrieval errors (study section 4.4.3, table 4.1): what ASIF gets wrong at each model's best
layer pair, against one text model.

A query is missed when its word is not among the top 5 retrieved. Reported: each model's share of
missed queries; the words missed by every model (each of their queries missed, in every model);
which of those never occur among the anchors; and, for each such word, what each model retrieved
and how often (`rhythm → room ×5`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.pipeline.analyses import asif_maps
from wordspace.pipeline.analyses.common import pair_key, save_figure, texts
from wordspace.storage.analyses import read_analysis, write_analysis

NAME = "retrieval_errors"


def summarise_retrieved(words: Sequence[str]) -> str:
    """`room ×5` style: each distinct retrieved word with its count, most frequent first."""
    counts = Counter(words)
    return ", ".join(
        word if count == 1 else f"{word} ×{count}"
        for word, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )


def retrieval_errors(asif_results: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Errors of each model's ASIF result (`query_word`, `retrieved_word`, `anchor_word`)."""
    if not asif_results:
        raise WordspaceError("retrieval errors: no ASIF results given; run `analyze asif` first")
    models = list(asif_results)
    missed_types: dict[str, set[str]] = {}
    retrieved_by_word: dict[str, dict[str, list[str]]] = {}
    share, n_queries = [], []
    anchors: set[str] = set()
    query_types: set[str] = set()
    for model in models:
        results = asif_results[model]
        queries = texts(results["query_word"].values)
        retrieved = texts(results["retrieved_word"].values)
        missed = ~(retrieved == queries[:, None]).any(axis=1)
        share.append(float(missed.mean()))
        n_queries.append(len(queries))
        found = set(queries[~missed])
        missed_types[model] = set(queries[missed]) - found
        retrieved_by_word[model] = {}
        for word, row in zip(queries[missed], retrieved[missed], strict=True):
            retrieved_by_word[model].setdefault(word, []).extend(row)
        anchors |= set(texts(results["anchor_word"].values))
        query_types |= set(queries)
    by_all = sorted(set.intersection(*missed_types.values()))
    table = [[summarise_retrieved(retrieved_by_word[m][word]) for m in models] for word in by_all]
    return xr.Dataset(
        {
            "miss_share": (("model",), np.asarray(share)),
            "n_queries": (("model",), np.asarray(n_queries)),
            "n_missed_types": (("model",), np.asarray([len(missed_types[m]) for m in models])),
            "never_anchor": (
                ("missed_word",),
                np.asarray([w not in anchors for w in by_all], bool),
            ),
            "retrieved": (
                ("missed_word", "model"),
                np.asarray(table, dtype=str).reshape(len(by_all), len(models)),
            ),
        },
        coords={"model": models, "missed_word": np.asarray(by_all, dtype=str)},
        attrs={"n_query_types": len(query_types)},
    )


def run(
    url: str | os.PathLike, text_model: str, audio_models: Sequence[str] | None = None
) -> xr.Dataset:
    """Errors of each audio model's stored ASIF result against `text_model`, stored."""
    from wordspace.storage.analyses import list_analyses

    keys = list_analyses(url).get(asif_maps.NAME, [])
    if audio_models is None:
        suffix = f"__{text_model}"
        audio_models = [key.removesuffix(suffix) for key in keys if key.endswith(suffix)]
        audio_models = [model for model in audio_models if model != text_model]
    found = {
        model: read_analysis(url, asif_maps.NAME, pair_key(model, text_model))
        for model in audio_models
    }
    missing = [model for model, result in found.items() if result is None]
    if missing or not found:
        raise WordspaceError(
            f"retrieval errors vs {text_model}: no ASIF result for "
            f"{', '.join(missing) or 'any model'}"
            f"; run `wordspace analyze asif STORE --a MODEL --b {text_model}` first"
        )
    results = retrieval_errors(found)
    results.attrs["text_model"] = text_model
    return write_analysis(url, NAME, text_model, results)


def reading(results: xr.Dataset) -> str:
    shares = ", ".join(
        f"{model} {share:.0%}"
        for model, share in zip(results["model"].values, results["miss_share"].values, strict=True)
    )
    n_all = results.sizes["missed_word"]
    return (
        f"share of queries whose word is not in the top 5 (vs {results.attrs.get('text_model')}): "
        f"{shares}; {n_all} words missed by every model, {int(results['never_anchor'].sum())} "
        "of them never among the anchors"
    )


def table_rows(results: xr.Dataset, limit: int = 20) -> list[list[str]]:
    """The first `limit` words missed by every model: word, then each model's retrievals."""
    rows = []
    for index, word in enumerate(results["missed_word"].values[:limit]):
        mark = " †" if bool(results["never_anchor"].values[index]) else ""
        rows.append([f"{word}{mark}", *map(str, results["retrieved"].values[index])])
    return rows


def plot(results: xr.Dataset, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Share of missed queries per model."""
    models = [str(m) for m in results["model"].values]
    figure, axis = plt.subplots(figsize=(max(5, 1.4 * len(models) + 2), 3.6), layout="constrained")
    bars = axis.bar(models, results["miss_share"].values * 100, color="tab:orange")
    axis.bar_label(bars, fmt="%.0f%%")
    axis.set_ylabel("queries not in the top 5 (%)")
    axis.set_ylim(0, 105)
    axis.set_title(
        f"ASIF misses at each model's best layer pair (vs "
        f"{results.attrs.get('text_model', 'text')})"
    )
    axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, out_dir, stem)
