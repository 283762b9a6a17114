"""The study's analyses (chapter 4): each a module with a pure function returning an xarray
Dataset, `run` (store in, `/analyses/<NAME>/<key>` out), `reading` (one line) and `plot`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.pipeline.analyses import (
    asif_maps,
    heatmaps,
    layer_curves,
    phonetic_semantic,
    retrieval_errors,
    stability,
)
from wordspace.storage import store
from wordspace.storage.analyses import list_analyses, read_analysis

ANALYSES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        layer_curves,
        stability,
        heatmaps,
        asif_maps,
        retrieval_errors,
        phonetic_semantic,
    )
}
TEXT_MODALITIES = ("text", "static")


def _need(options: dict[str, Any], *names: str) -> None:
    missing = [name for name in names if not options.get(name)]
    if missing:
        raise WordspaceError(f"analysis needs --{' --'.join(n.replace('_', '-') for n in missing)}")


def _given(options: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: options[name] for name in names if options.get(name) is not None}


_RUNNERS: dict[str, tuple[tuple[str, ...], Callable[[str, dict[str, Any]], xr.Dataset]]] = {
    layer_curves.NAME: (
        ("a", "b"),
        lambda url, o: layer_curves.run(
            url, o["a"], o["b"], **_given(o, "layer_b", "metrics", "n_boot", "seed")
        ),
    ),
    stability.NAME: (
        ("a", "b"),
        lambda url, o: stability.run(
            url, o["a"], o["b"], **_given(o, "layer_b", "sizes", "n_seeds", "metric", "seed")
        ),
    ),
    heatmaps.NAME: (
        ("a",),
        lambda url, o: heatmaps.run(url, o["a"], o.get("b"), **_given(o, "metrics")),
    ),
    asif_maps.NAME: (
        ("a", "b"),
        lambda url, o: asif_maps.run(
            url, o["a"], o["b"], **_given(o, "k", "p", "query_share", "seed")
        ),
    ),
    retrieval_errors.NAME: (
        ("b",),
        lambda url, o: retrieval_errors.run(url, o["b"], o.get("models")),
    ),
    phonetic_semantic.NAME: (
        ("b", "models"),
        lambda url, o: phonetic_semantic.run(
            url, o["b"], o["models"], **_given(o, "n_pairs", "seed")
        ),
    ),
}


def run_analysis(name: str, url: str | os.PathLike, **options: Any) -> xr.Dataset:
    """Run analysis `name` on the store with the CLI's options (a, b, models, metrics, ...)."""
    if name not in _RUNNERS:
        raise WordspaceError(f"analysis {name!r}: choose from {', '.join(_RUNNERS)}")
    required, runner = _RUNNERS[name]
    _need(options, *required)
    return runner(str(url), options)


def figure_stem(name: str, key: str) -> str:
    return f"{name}__{key}"


def stored_results(url: str | os.PathLike) -> list[tuple[str, str, xr.Dataset]]:
    """(analysis, key, results) of every complete analysis in the store, in registry order."""
    found = list_analyses(url)
    return [
        (name, key, read_analysis(url, name, key))
        for name in ANALYSES
        for key in found.get(name, [])
    ]


def plot_results(
    name: str, key: str, results: xr.Dataset, out_dir: str | os.PathLike
) -> list[Path]:
    """PNG and SVG of one stored result."""
    return ANALYSES[name].plot(results, out_dir, figure_stem(name, key))


def study_jobs(url: str | os.PathLike, *, n_boot: int = 50) -> list[tuple[str, str, dict]]:
    """(analysis, key, options) of every analysis the study runs on the store's models: each
    audio model against each text model (curves against the text model's last layer,
    stability, heatmaps, ASIF), each model within itself, then retrieval errors and phonetic vs
    semantic per text model."""
    url = str(url)
    models = store.list_groups(url, "models")
    modality = {m: store.model_attrs(url, m).get("modality", "audio") for m in models}
    texts = [m for m in models if modality[m] in TEXT_MODALITIES]
    audios = [m for m in models if m not in texts]
    static = [m for m in texts if modality[m] == "static"]
    layered = [m for m in models if store.open_embedding(url, m).sizes["layer"] > 1]
    jobs: list[tuple[str, str, dict[str, Any]]] = [(heatmaps.NAME, m, {"a": m}) for m in layered]
    for audio in audios:
        for text in texts:
            pair = f"{audio}__{text}"
            # A single-layer model's curve is one point: no trend, no stability to measure.
            if audio in layered:
                jobs.append((layer_curves.NAME, pair, {"a": audio, "b": text, "n_boot": n_boot}))
            jobs += [
                (heatmaps.NAME, pair, {"a": audio, "b": text}),
                (asif_maps.NAME, pair, {"a": audio, "b": text}),
            ]
            if text in static and audio in layered:
                jobs.append((stability.NAME, pair, {"a": audio, "b": text}))
    for text in texts if audios else []:
        jobs.append((retrieval_errors.NAME, text, {"b": text, "models": audios}))
    for text in static if audios else []:
        jobs.append((phonetic_semantic.NAME, text, {"b": text, "models": audios}))
    return jobs


def analyses_done(url: str | os.PathLike, *, n_boot: int = 50) -> bool:
    """Whether every analysis of `study_jobs` is stored."""
    have = list_analyses(url)
    return all(key in have.get(name, []) for name, key, _ in study_jobs(url, n_boot=n_boot))


def run_study(
    url: str | os.PathLike,
    *,
    n_boot: int = 50,
    progress: Callable[[str], None] = print,
) -> list[tuple[str, str]]:
    """Every analysis of `study_jobs`; results already stored are kept. Returns the
    (analysis, key) pairs now stored."""
    have = list_analyses(url)
    jobs = study_jobs(url, n_boot=n_boot)
    done = []
    for index, (name, key, options) in enumerate(jobs, start=1):
        label = f"[{index}/{len(jobs)}] {name} {key}"
        if key in have.get(name, []):
            progress(f"{label}: stored already")
        else:
            progress(f"{label}: {ANALYSES[name].reading(run_analysis(name, str(url), **options))}")
        done.append((name, key))
    return done
